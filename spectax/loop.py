"""The decode loop: prefill once, then lax.while_loop over `Loop.step` = propose -> verify -> accept -> commit."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from spectax.cache import KVCache, commit_path, write_block
from spectax.sampling import SamplingParams, sample, split_rows
from spectax.sharding import axes
from spectax.step_types import Draft, History, LoopSpec
from spectax.tree import DraftTree
from spectax.verify import Verdict, verify_greedy, verify_lossy, verify_multi_draft, verify_speculative


@struct.dataclass
class DecodeStats:
    """Counters carried through the loop, arrays only (usable under jit). tau = new tokens / target calls, bonus
    counted. The properties below are host conveniences: each one syncs with the device (not for use under jit)."""

    target_calls: jax.Array = axes()                  # int32 [] loop steps (prefill excluded)
    row_calls: jax.Array = axes("batch")              # int32 [B] steps in which the row was still decoding
    new_tokens: jax.Array = axes("batch")             # int32 [B] tokens the steps committed (prefill's excluded)
    speculated: jax.Array = axes("batch")             # int32 [B] steps in which the row speculated (not gated off)
    accepted_hist: jax.Array = axes("batch", None)    # int32 [B, D + 1] speculating steps by accepted draft tokens
    rank_hist: jax.Array = axes(None, None)           # int32 [D, R + 1] steps reaching depth d + 1 by the sibling
                                                      # rank accepted there (R: none)

    @classmethod
    def zeros(cls, batch: int, tree: DraftTree) -> DecodeStats:
        D, R = tree.max_depth, tree.max_children
        zero_B = jnp.zeros((batch,), jnp.int32)
        return cls(target_calls=jnp.int32(0), row_calls=zero_B, new_tokens=zero_B, speculated=zero_B,
                   accepted_hist=jnp.zeros((batch, D + 1), jnp.int32), rank_hist=jnp.zeros((D, R + 1), jnp.int32))

    def count(self, tree: DraftTree, verdict: Verdict, written_B, active_B, speculated_B) -> DecodeStats:
        """The counters after one step: `written_B` tokens committed per row, `speculated_B` the active rows that
        offered a draft (the histograms count those)."""
        D = tree.max_depth
        return DecodeStats(
            target_calls=self.target_calls + 1, row_calls=self.row_calls + active_B,
            new_tokens=self.new_tokens + written_B, speculated=self.speculated + speculated_B,
            accepted_hist=self.accepted_hist + (jax.nn.one_hot(verdict.n_accepted, D + 1, dtype=jnp.int32)
                                                * speculated_B[:, None]),
            rank_hist=self.rank_hist + _rank_counts(tree, verdict, speculated_B))

    @property
    def tau(self) -> float:
        """Mean new tokens per target call over all rows (1.0 for plain decoding). Host sync."""
        calls = int(jnp.sum(self.row_calls))
        return float(jnp.sum(self.new_tokens)) / calls if calls else float("nan")

    @property
    def acceptance_per_depth(self) -> np.ndarray:
        """float [D]: the fraction of steps that reached depth d - 1 and accepted a node at depth d (all rows).
        Host sync."""
        return acceptance_per_depth(np.asarray(self.accepted_hist).sum(0))

    @property
    def rank_acceptance(self) -> np.ndarray:
        """float [D, R]: per depth, the fraction of steps reaching it that accepted the child of each sibling rank:
        the measured positional acceptance `DraftTree.optimal` takes. Host sync."""
        hist = np.asarray(self.rank_hist, np.float64)
        return hist[:, :-1] / np.maximum(hist.sum(1, keepdims=True), 1)


def acceptance_per_depth(hist_D1) -> np.ndarray:
    """float [D] from counts of speculating steps by accepted draft tokens [D + 1] (DecodeStats.accepted_hist summed
    over rows, or over several decodes): per depth d, the fraction of steps that reached depth d - 1 and accepted a
    node at depth d."""
    at_least = np.cumsum(np.asarray(hist_D1)[::-1])[::-1]   # [D + 1] steps with >= d accepted
    return at_least[1:] / np.maximum(at_least[:-1], 1)


def _rank_counts(tree: DraftTree, verdict: Verdict, active_B) -> jax.Array:
    """int32 [D, R + 1]: this step's rows reaching each depth, by the sibling rank accepted there (R: none)."""
    D, R = tree.max_depth, tree.max_children
    rank_T = jnp.asarray(np.concatenate([[R], tree.child_rank]).astype(np.int32))   # step index -> its rank
    rank_BD = jnp.where(verdict.path_BD >= 0, rank_T[jnp.maximum(verdict.path_BD, 0)], R)
    reached_BD = active_B[:, None] & (jnp.arange(D)[None, :] <= verdict.n_accepted[:, None])
    return jnp.sum(jax.nn.one_hot(rank_BD, R + 1, dtype=jnp.int32) * reached_BD[..., None], axis=0)


@struct.dataclass
class DecodeState:
    history: History                          # prompt + committed output per row, the root (newest) last
    prompt_len_B: jax.Array = axes("batch")   # int32 [B] where each row's output starts in the history
    n_out: jax.Array = axes("batch")          # int32 [B] output tokens committed (the root included)
    done: jax.Array = axes("batch")           # bool [B]
    cache: KVCache                            # K/V of every committed token but the root
    drafter_state: Any                        # declared by the drafter's state types
    rng: jax.Array = axes("batch")            # key [B] one key per row: a row's draws never depend on the others
    stats: DecodeStats


def output_tokens(s: DecodeState, out_size: int, pad_id) -> jax.Array:
    """int32 [B, out_size]: each row's output tokens so far, pad_id after its end."""
    j_BO = jnp.arange(out_size)[None, :]
    tokens = jnp.take_along_axis(s.history.tokens_BW, s.prompt_len_B[:, None] + j_BO, axis=1)
    return jnp.where(j_BO < s.n_out[:, None], tokens, pad_id)


@dataclasses.dataclass(frozen=True)
class Loop:
    """One decode, as the traced program sees it: the target and drafter (pytrees), the static spec, and the data
    that does not change shapes (sampling values, the output limit, the end tokens). Built inside the trace."""

    model: Any                 # the target: a Model or an Ensemble
    drafter: Any               # a spectax.step_types.Drafter
    spec: LoopSpec
    sampling: SamplingParams
    max_new: jax.Array         # int32 [] output tokens per row at most (<= spec.out_size)
    eos_ids: jax.Array           # int32 [E] end tokens (-1: none)

    @property
    def tree(self) -> DraftTree:
        return self.drafter.tree

    def prefill(self, prompt_BP, prompt_len_B, keys_B, cache: KVCache) -> DecodeState:
        """The target (and the drafter) over the right-padded prompts; samples each row's first new token.
        keys_B: key [B], each row's own key."""
        B, P = prompt_BP.shape
        out = self.model.prefill(prompt_BP, prompt_len_B, cache.layers, self.spec.prefill_chunk, self.spec.attn_impl,
                                 features_at=self.drafter.target_layers)
        cache = cache.with_layers(out.kv).replace(lengths=prompt_len_B.astype(jnp.int32))
        keys_B2 = split_rows(keys_B, 2)
        first_B = sample(out.logits_BTV[:, 0], keys_B2[:, 1], self.spec.sampler, self.sampling)
        live_BP = jnp.arange(P)[None, :] < prompt_len_B[:, None]
        history = jnp.full((B, P + self.spec.out_size), -1, jnp.int32).at[:, :P].set(jnp.where(live_BP, prompt_BP, -1))
        state = DecodeState(
            history=History(tokens_BW=history, length_B=prompt_len_B.astype(jnp.int32)),
            prompt_len_B=prompt_len_B.astype(jnp.int32), n_out=jnp.zeros((B,), jnp.int32),
            done=jnp.zeros((B,), bool), cache=cache,
            drafter_state=self.drafter.init(self.model, prompt_BP, prompt_len_B, out.target_out(), cache.size,
                                            self.spec),
            rng=keys_B2[:, 0], stats=DecodeStats.zeros(B, self.tree))
        history, n_out, done, _ = self._append(state, first_B[:, None], jnp.ones((B,), jnp.int32))
        return state.replace(history=history, n_out=n_out, done=done)

    def step(self, s: DecodeState) -> DecodeState:
        """propose -> verify (the one target call) -> accept -> commit."""
        keys_B3 = split_rows(s.rng, 3)
        active_B = ~s.done
        # propose: the drafter fills the tree's nodes after each row's root
        draft, drafter_state = self.drafter.propose(s.drafter_state, s.history, keys_B3[:, 1], self.spec,
                                                    self.sampling)
        # verify: one target forward over root + nodes (truncated to the depth the active rows offer)
        out = self._forward(s, draft)
        # accept: the verifier picks each row's path and its bonus / correction token
        verdict = self._verify(out.logits_BTV, draft, keys_B3[:, 2])
        # commit: output tokens, the path's K/V, the drafter's state, the counters
        new_BC = verdict.new_tokens(draft.tokens_BN)
        history, n_out, done, written_B = self._append(s, new_BC, verdict.n_accepted + 1)
        cache = commit_path(s.cache.with_layers(out.kv), verdict.path_BD, verdict.n_accepted, active_B,
                            self.tree.is_chain)
        drafter_state = self.drafter.update(drafter_state, verdict, new_BC, out.target_out(), active_B)
        stats = s.stats.count(self.tree, verdict, written_B, active_B, active_B & draft.offers())
        return s.replace(history=history, n_out=n_out, done=done, cache=cache, drafter_state=drafter_state,
                         rng=keys_B3[:, 0], stats=stats)

    def run(self, s: DecodeState, until=None) -> DecodeState:
        """lax.while_loop until every row is done (each active row gains >= 1 token per step), or, with `until`
        (int32 [], data), until the target has been called that many times in all (a chunk of a streamed decode:
        the next chunk continues from the state exactly as one run would)."""
        def cond(s):
            going = ~jnp.all(s.done) & (s.stats.target_calls < self.spec.out_size)
            return going if until is None else going & (s.stats.target_calls < until)
        return lax.while_loop(cond, lambda s: self.spec.constrain(self.step(s)), s)

    # ---------------------------------------------------------------------------------------------------- parts

    def _forward(self, s: DecodeState, draft: Draft):
        """The step's one target call over the root and the tree's nodes; returns the ForwardOut with the step's
        K/V written into the cache and every output over the whole tree (T = 1 + N).

        A draft that limits its rows' depths (Draft.depth_B) runs the smallest depth truncation of the tree, among
        Draft.cuts and the full depth, that covers every active row: lax.switch between static shapes, so a step
        where no active row speculates runs as a plain step. The outputs of the nodes it skips are zeros: no active
        row offers them, so no verifier accepts them, and verification always sees the whole tree (a row's random
        draws never depend on which truncation ran)."""
        D = self.tree.max_depth
        if draft.depth_B is None:
            return self._forward_over(self.tree, s, draft, write=True)
        levels = sorted({d for d in draft.cuts if 0 <= d < D} | {D})
        need = jnp.max(jnp.where(s.done, 0, draft.depth_B))
        branch = jnp.sum(need > jnp.asarray(levels[:-1], jnp.int32))                  # the first level >= need
        # the branches only read the cache: the step's K/V are written here, once, into the caches they hand back,
        # outside lax.switch, so the switch never copies the cache
        branches = [functools.partial(self._forward_over, self.tree.truncated(d), write=False) for d in levels]
        out = lax.switch(branch, branches, s, draft)
        kv = tuple((write_block(k, k_new, s.cache.lengths), write_block(v, v_new, s.cache.lengths))
                   for (k, v), (k_new, v_new) in zip(out.kv, out.new_kv))
        return out.replace(kv=kv, new_kv=None)

    def _forward_over(self, tree: DraftTree, s: DecodeState, draft: Draft, write: bool):
        """The target forward over the root and `tree`'s nodes (the drafter's tree or a depth truncation of it,
        its first nodes); the outputs are zero-padded to the drafter's whole tree."""
        step_tokens = jnp.concatenate([s.history.root_B[:, None], draft.tokens_BN[:, :tree.num_nodes]], axis=1)
        positions = s.cache.lengths[:, None] + jnp.asarray(tree.step_depth)[None, :]
        out = self.model.forward(step_tokens, positions, s.cache.layers, s.cache.lengths, jnp.asarray(tree.step_mask),
                                 self.spec.attn_impl, write_cache=write, features_at=self.drafter.target_layers)
        width = 1 + self.tree.num_nodes - step_tokens.shape[1]
        if width == 0:
            return out
        pad = lambda a: None if a is None else jnp.pad(a, [(0, 0), (0, width)] + [(0, 0)] * (a.ndim - 2))  # noqa
        return out.replace(logits_BTV=pad(out.logits_BTV), hidden_BTE=pad(out.hidden_BTE),
                           features_BTLpE=pad(out.features_BTLpE),
                           new_kv=jax.tree_util.tree_map(pad, out.new_kv))

    def _verify(self, logits_BTV, draft: Draft, keys_B) -> Verdict:
        """The verifier for this step: a lossy rule if asked for, else exact greedy or lossless sampling."""
        spec, tree = self.spec, self.tree
        if spec.lossy is not None:
            return verify_lossy(logits_BTV, draft, tree, keys_B, spec.sampler, self.sampling, spec.lossy)
        if spec.sampler.greedy:
            return verify_greedy(logits_BTV, draft, tree)
        if tree.num_nodes == 0 or tree.is_chain:
            return verify_speculative(logits_BTV, draft, tree, keys_B, spec.sampler, self.sampling)
        return verify_multi_draft(logits_BTV, draft, tree, keys_B, spec.sampler, self.sampling)

    def _append(self, s: DecodeState, new_BC, count_B):
        """Writes the first count_B[b] of new_BC per row into the history, cut after an end token and at max_new.
        Returns (history, n_out, done, the count written per row)."""
        B, C = new_BC.shape
        j = jnp.arange(C)[None, :]
        eos_BC = (new_BC[..., None] == self.eos_ids).any(-1) & (j < count_B[:, None])
        count = jnp.where(eos_BC.any(-1), jnp.argmax(eos_BC, axis=-1) + 1, count_B)
        count = jnp.minimum(count, self.max_new - s.n_out)
        count = jnp.where(s.done, 0, count)
        keep = j < count[:, None]
        H = s.history.tokens_BW.shape[1]
        cols = jnp.where(keep, s.history.length_B[:, None] + j, H)                      # out of range: dropped
        rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, C))
        history = History(tokens_BW=s.history.tokens_BW.at[rows, cols].set(new_BC, mode="drop"),
                          length_B=s.history.length_B + count)
        n_out = s.n_out + count
        done = s.done | (eos_BC & keep).any(-1) | (n_out >= self.max_new)
        return history, n_out, done, count
