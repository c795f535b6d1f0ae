"""The decode loop: prefill once, then lax.while_loop over step() = propose -> verify -> accept -> commit."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from pallas_kernels.tree_attention import AttnImpl
from spectax.cache import KVCache, commit_path, write_block
from spectax.models import Model
from spectax.sampling import Sampler, SamplingParams, sample, split_rows
from spectax.drafters.base import TargetOut, target_layers
from spectax.tree import DraftTree
from spectax.verify import verify_greedy, verify_lossy, verify_multi_draft, verify_speculative


@struct.dataclass
class DecodeStats:
    """Counters carried through the loop (no host sync). tau = new tokens / target calls, bonus counted."""

    target_calls: jax.Array   # int32 [] loop steps (prefill excluded)
    row_calls: jax.Array      # int32 [B] steps in which the row was still decoding
    new_tokens: jax.Array     # int32 [B] tokens the steps committed (the prefill's first token excluded)
    speculated: jax.Array     # int32 [B] steps in which the row speculated (not gated off; the histograms count these)
    accepted_hist: jax.Array  # int32 [B, D + 1] speculating steps by number of accepted draft tokens
    rank_hist: jax.Array      # int32 [D, R + 1] steps reaching depth d + 1 by the sibling rank accepted there (R: none)

    @property
    def tau(self) -> float:
        """Mean new tokens per target call over all rows (1.0 for plain decoding)."""
        calls = int(jnp.sum(self.row_calls))
        return float(jnp.sum(self.new_tokens)) / calls if calls else float("nan")

    @property
    def acceptance_per_depth(self) -> np.ndarray:
        """float [D]: the fraction of steps that reached depth d - 1 and accepted a node at depth d (all rows)."""
        at_least = np.cumsum(np.asarray(self.accepted_hist).sum(0)[::-1])[::-1]   # [D + 1] steps with >= d accepted
        return at_least[1:] / np.maximum(at_least[:-1], 1)

    @property
    def rank_acceptance(self) -> np.ndarray:
        """float [D, R]: per depth, the fraction of steps reaching it that accepted the child of each sibling rank:
        the measured positional acceptance `DraftTree.optimal` takes."""
        hist = np.asarray(self.rank_hist, np.float64)
        return hist[:, :-1] / np.maximum(hist.sum(1, keepdims=True), 1)


@struct.dataclass
class DecodeState:
    tokens: jax.Array      # int32 [B, S_out] output buffer (pad past n_out)
    n_out: jax.Array       # int32 [B] tokens written
    root: jax.Array        # int32 [B] newest committed token; its K/V are not in the cache yet
    done: jax.Array        # bool [B]
    cache: KVCache
    drafter_state: Any
    rng: jax.Array         # key [B] one key per row: a row's draws never depend on the others
    stats: DecodeStats


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """The static half of a decode: everything that shapes the compiled program."""

    sampler: Sampler
    out_size: int          # output buffer length (a bucket >= max_new_tokens)
    vocab_size: int        # the target's vocabulary (drafters map theirs onto it)
    attn_impl: AttnImpl = AttnImpl()
    prefill_chunk: int = 256  # prompt tokens per prefill forward (bounds the [chunk, chunk] attention block)
    lossy: Any = None         # None (lossless) or a lossy acceptance rule from spectax.verify.lossy
    layout: Any = None        # None (one device) or a spectax.sharding.Layout the state is pinned to

    @property
    def vocab_shards(self) -> int:
        """The blocks the vocabulary is split in over the mesh (1 without a layout); see sampling.top_k."""
        return 1 if self.layout is None else self.layout.axis_size("vocab")

    def constrain(self, tree):
        """The decode state (or a part of it) pinned to the layout's shardings; as is without a layout."""
        return tree if self.layout is None else self.layout.constrain(tree)


def _verify(spec: LoopSpec, tree: DraftTree, logits_BTV, draft, keys_B, sp: SamplingParams):
    """The verifier for this step: a lossy rule if asked for, else exact greedy or lossless sampling."""
    if spec.lossy is not None:
        return verify_lossy(logits_BTV, draft, tree, keys_B, spec.sampler, sp, spec.lossy)
    if spec.sampler.greedy:
        return verify_greedy(logits_BTV, draft, tree)
    if tree.num_nodes == 0 or tree.is_chain:
        return verify_speculative(logits_BTV, draft, tree, keys_B, spec.sampler, sp)
    return verify_multi_draft(logits_BTV, draft, tree, keys_B, spec.sampler, sp)


def _append(state: DecodeState, new_BC, count_B, eos_id, max_new):
    """Writes the first count_B[b] of new_BC per row, cut after EOS and at max_new.

    Returns (tokens, n_out, done, count written per row)."""
    B, C = new_BC.shape
    j = jnp.arange(C)[None, :]
    eos_BC = (new_BC == eos_id) & (j < count_B[:, None])
    count = jnp.where(eos_BC.any(-1), jnp.argmax(eos_BC, axis=-1) + 1, count_B)
    count = jnp.minimum(count, max_new - state.n_out)
    count = jnp.where(state.done, 0, count)
    keep = j < count[:, None]
    cols = jnp.where(keep, state.n_out[:, None] + j, state.tokens.shape[1])  # out of range: dropped
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, C))
    tokens = state.tokens.at[rows, cols].set(new_BC, mode="drop")
    n_out = state.n_out + count
    done = state.done | (eos_BC & keep).any(-1) | (n_out >= max_new)
    return tokens, n_out, done, count


def prefill(model: Model, drafter, spec: LoopSpec, prompt_BP, prompt_len_B, max_new, eos_id, pad_id,
            sp: SamplingParams, keys_B, cache: KVCache) -> DecodeState:
    """The target (and the drafter) over the right-padded prompts; samples each row's first new token.

    keys_B: key [B], each row's own key (see api.row_keys)."""
    B = prompt_BP.shape[0]
    kv, last_logits, last_hidden, *features = model.prefill(prompt_BP, prompt_len_B, cache.layers, spec.prefill_chunk,
                                                            spec.attn_impl, features_at=target_layers(drafter))
    cache = cache.with_layers(kv).replace(lengths=prompt_len_B.astype(jnp.int32))
    keys_B2 = split_rows(keys_B, 2)
    first = sample(last_logits, keys_B2[:, 1], spec.sampler, sp)
    tree = drafter.tree
    D = tree.max_depth
    state = DecodeState(
        tokens=jnp.full((B, spec.out_size), pad_id, jnp.int32), n_out=jnp.zeros((B,), jnp.int32), root=first,
        done=jnp.zeros((B,), bool), cache=cache,
        drafter_state=drafter.init(model, prompt_BP, prompt_len_B,
                                   TargetOut(last_logits[:, None], last_hidden[:, None], *features), cache.size, spec),
        rng=keys_B2[:, 0],
        stats=DecodeStats(target_calls=jnp.int32(0), row_calls=jnp.zeros((B,), jnp.int32),
                          new_tokens=jnp.zeros((B,), jnp.int32), speculated=jnp.zeros((B,), jnp.int32),
                          accepted_hist=jnp.zeros((B, D + 1), jnp.int32),
                          rank_hist=jnp.zeros((D, tree.max_children + 1), jnp.int32)))
    tokens, n_out, done, _ = _append(state, first[:, None], jnp.ones((B,), jnp.int32), eos_id, max_new)
    return state.replace(tokens=tokens, n_out=n_out, done=done)


def _rank_counts(tree: DraftTree, verdict, active_B) -> jax.Array:
    """int32 [D, R + 1]: this step's rows reaching each depth, by the sibling rank accepted there (R: none)."""
    D, R = tree.max_depth, tree.max_children
    rank_T = jnp.asarray(np.concatenate([[R], tree.child_rank]).astype(np.int32))   # step index -> its rank
    rank_BD = jnp.where(verdict.path_BD >= 0, rank_T[jnp.maximum(verdict.path_BD, 0)], R)
    reached_BD = active_B[:, None] & (jnp.arange(D)[None, :] <= verdict.n_accepted[:, None])
    return jnp.sum(jax.nn.one_hot(rank_BD, R + 1, dtype=jnp.int32) * reached_BD[..., None], axis=0)


def step(model: Model, drafter, spec: LoopSpec, state: DecodeState, max_new, eos_id, sp: SamplingParams) -> DecodeState:
    """propose -> verify (the one target call) -> accept -> commit.

    A drafter that limits its rows' depths (Draft.depth_B) gets the smallest depth truncation of its tree, among
    Draft.cuts and the full depth, that covers every active row: lax.switch between static shapes, so a step where
    no active row speculates runs as a plain step (no tree in the forward)."""
    keys_B3 = split_rows(state.rng, 3)
    draft, drafter_state = drafter.propose(state.drafter_state, state.root, keys_B3[:, 1], spec, sp)
    state = state.replace(drafter_state=drafter_state, rng=keys_B3[:, 0])

    D = drafter.tree.max_depth
    if draft.depth_B is None:
        return _verify_commit(model, drafter, drafter.tree, spec, state, draft, keys_B3[:, 2], max_new, eos_id, sp)

    def at_depth(depth: int):
        tree = drafter.tree.truncated(depth)
        return lambda s: _verify_commit(model, drafter, tree, spec, s, draft.truncated(tree), keys_B3[:, 2], max_new,
                                        eos_id, sp, width=1 + drafter.tree.num_nodes)

    levels = sorted({d for d in draft.cuts if 0 <= d < D} | {D})
    need = jnp.max(jnp.where(state.done, 0, draft.depth_B))
    branch = jnp.sum(need > jnp.asarray(levels[:-1], jnp.int32))                   # the first level >= need
    # the branches only read the cache and return it with the step's new K/V (padded to the full tree): written here,
    # once, into the returned caches, outside lax.switch, so the switch never copies the cache
    new, verdict, active, blocks = lax.switch(branch, [at_depth(d) for d in levels], state)
    layers = tuple((write_block(k, bk, state.cache.lengths), write_block(v, bv, state.cache.lengths))
                   for k, v, bk, bv in blocks)
    cache = commit_path(state.cache.with_layers(layers), verdict.path_BD, verdict.n_accepted, active,
                        drafter.tree.is_chain)
    return new.replace(cache=cache)


def _verify_commit(model: Model, drafter, tree: DraftTree, spec: LoopSpec, state: DecodeState, draft, keys_B, max_new,
                   eos_id, sp: SamplingParams, width: int | None = None):
    """One target forward over the root + `tree`'s nodes, then accept and commit. `tree` is the drafter's or a depth
    truncation of it; the verdict is padded to the drafter's depth so every truncation gives the same state types.

    width None: returns the new DecodeState. width W (a lax.switch branch): the cache is only read; returns (the new
    state without its cache (None), the verdict, active rows [B], per layer (k cache, v cache, the step's new k
    [B, W, K, D], v), the new K/V zero-padded) for the caller to write, into those caches, and commit."""
    step_tokens = jnp.concatenate([state.root[:, None], draft.tokens_BN], axis=1)          # [B, 1 + N]
    positions = state.cache.lengths[:, None] + jnp.asarray(tree.step_depth)[None, :]
    logits, hidden, kv, *features = model.forward(step_tokens, positions, state.cache.layers, state.cache.lengths,
                                                  jnp.asarray(tree.step_mask), spec.attn_impl,
                                                  write_cache=width is None, features_at=target_layers(drafter))
    verdict = _verify(spec, tree, logits, draft, keys_B, sp)
    D = drafter.tree.max_depth
    verdict = verdict.replace(path_BD=jnp.pad(verdict.path_BD, ((0, 0), (0, D - tree.max_depth)), constant_values=-1))
    active = ~state.done
    new_BC = verdict.new_tokens(draft.tokens_BN)
    tokens, n_out, done, count = _append(state, new_BC, verdict.n_accepted + 1, eos_id, max_new)
    spec_B = active & draft.offers()                                        # rows that speculated this step
    st = state.stats
    stats = DecodeStats(target_calls=st.target_calls + 1, row_calls=st.row_calls + active,
                        new_tokens=st.new_tokens + count, speculated=st.speculated + spec_B,
                        accepted_hist=st.accepted_hist + (jax.nn.one_hot(verdict.n_accepted, D + 1, dtype=jnp.int32)
                                                          * spec_B[:, None]),
                        rank_hist=st.rank_hist + _rank_counts(drafter.tree, verdict, spec_B))
    new = DecodeState(tokens=tokens, n_out=n_out, root=jnp.where(active, verdict.next_root, state.root), done=done,
                      cache=None,
                      drafter_state=drafter.update(state.drafter_state, verdict, new_BC,
                                                   TargetOut(logits, hidden, *features), active),
                      rng=state.rng, stats=stats)
    if width is None:
        return new.replace(cache=commit_path(state.cache.with_layers(kv), verdict.path_BD[:, :tree.max_depth],
                                             verdict.n_accepted, active, tree.is_chain))
    pad = lambda a: jnp.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0), (0, 0)))     # noqa: E731
    return new, verdict, active, tuple((kc, vc, pad(k), pad(v)) for kc, vc, k, v in kv)


def run(model: Model, drafter, spec: LoopSpec, state: DecodeState, max_new, eos_id, sp: SamplingParams) -> DecodeState:
    """lax.while_loop until every row is done (each active row gains >= 1 token per step)."""
    cond = lambda s: ~jnp.all(s.done) & (s.stats.target_calls < spec.out_size)
    body = lambda s: spec.constrain(step(model, drafter, spec, s, max_new, eos_id, sp))
    return jax.lax.while_loop(cond, body, state)
