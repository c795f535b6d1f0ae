"""The decode loop: prefill once, then lax.while_loop over step() = propose -> verify -> accept -> commit."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

from spectax.cache import KVCache, commit_path
from spectax.models import Model
from spectax.sampling import Sampler, SamplingParams, sample
from spectax.verify import verify_greedy, verify_sample_root


@struct.dataclass
class DecodeStats:
    """Counters carried through the loop (no host sync). tau = new tokens / target calls, bonus counted."""

    target_calls: jax.Array   # int32 [] loop steps (prefill excluded)
    row_calls: jax.Array      # int32 [B] steps in which the row was still decoding
    new_tokens: jax.Array     # int32 [B] tokens the steps committed (the prefill's first token excluded)
    accepted_hist: jax.Array  # int32 [B, D + 1] steps by number of accepted draft tokens

    @property
    def tau(self) -> float:
        """Mean new tokens per target call over all rows (1.0 for plain decoding)."""
        calls = int(jnp.sum(self.row_calls))
        return float(jnp.sum(self.new_tokens)) / calls if calls else float("nan")


@struct.dataclass
class DecodeState:
    tokens: jax.Array      # int32 [B, S_out] output buffer (pad past n_out)
    n_out: jax.Array       # int32 [B] tokens written
    root: jax.Array        # int32 [B] newest committed token; its K/V are not in the cache yet
    done: jax.Array        # bool [B]
    cache: KVCache
    drafter_state: Any
    rng: jax.Array
    stats: DecodeStats


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """The static half of a decode: everything that shapes the compiled program."""

    sampler: Sampler
    out_size: int          # output buffer length (a bucket >= max_new_tokens)
    attn_impl: str = "xla"
    prefill_chunk: int = 256  # prompt tokens per prefill forward (bounds the [chunk, chunk] attention block)


def _verify(spec: LoopSpec, drafter, logits_BTV, draft, rng, sp: SamplingParams):
    if spec.sampler.greedy:
        return verify_greedy(logits_BTV, draft.tokens_BN, drafter.tree)
    return verify_sample_root(logits_BTV, draft.tokens_BN, drafter.tree, rng, spec.sampler, sp)


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
            sp: SamplingParams, rng, cache: KVCache) -> DecodeState:
    """The target over the (right-padded) prompts, chunk by chunk; samples each row's first new token.

    Chunk c covers prompt slots [c * C, (c + 1) * C) of every row and attends to the cache slots before it, so the
    attention never materialises more than a [C, C] block. A row's padding lands in dead slots (its length is set
    to its prompt length at the end); its last-token logits come from the chunk holding that token.
    """
    B, P = prompt_BP.shape
    C = min(spec.prefill_chunk, P)
    if P % C:
        raise ValueError(f"prompt bucket {P} is not a multiple of the prefill chunk {C}")
    causal = jnp.tril(jnp.ones((C, C), bool))
    last_B = prompt_len_B - 1

    def chunk(c, carry):
        kv, logits_BV = carry
        start = c * C
        tokens = lax.dynamic_slice_in_dim(prompt_BP, start, C, axis=1)
        positions = jnp.broadcast_to(start + jnp.arange(C, dtype=jnp.int32), (B, C))
        at = jnp.clip(last_B - start, 0, C - 1)[:, None]
        logits, _, kv = model.forward(tokens, positions, kv, jnp.full((B,), start, jnp.int32), causal,
                                      spec.attn_impl, logits_at_BK=at)
        mine = (last_B >= start) & (last_B < start + C)
        return kv, jnp.where(mine[:, None], logits[:, 0], logits_BV)

    init = (cache.layers, jnp.zeros((B, model.config.vocab_size), jnp.float32))
    kv, last_logits = lax.fori_loop(0, P // C, chunk, init)
    cache = cache.with_layers(kv).replace(lengths=prompt_len_B.astype(jnp.int32))
    rng, key = jax.random.split(rng)
    first = sample(last_logits, key, spec.sampler, sp)
    D = drafter.tree.max_depth
    state = DecodeState(
        tokens=jnp.full((B, spec.out_size), pad_id, jnp.int32), n_out=jnp.zeros((B,), jnp.int32), root=first,
        done=jnp.zeros((B,), bool), cache=cache,
        drafter_state=drafter.init(prompt_BP, prompt_len_B, cache.size), rng=rng,
        stats=DecodeStats(target_calls=jnp.int32(0), row_calls=jnp.zeros((B,), jnp.int32),
                          new_tokens=jnp.zeros((B,), jnp.int32), accepted_hist=jnp.zeros((B, D + 1), jnp.int32)))
    tokens, n_out, done, _ = _append(state, first[:, None], jnp.ones((B,), jnp.int32), eos_id, max_new)
    return state.replace(tokens=tokens, n_out=n_out, done=done)


def step(model: Model, drafter, spec: LoopSpec, state: DecodeState, max_new, eos_id, sp: SamplingParams) -> DecodeState:
    """propose -> verify (the one target call) -> accept -> commit."""
    tree = drafter.tree
    rng, k_draft, k_verify = jax.random.split(state.rng, 3)
    draft = drafter.propose(state.drafter_state, state.root, k_draft)
    step_tokens = jnp.concatenate([state.root[:, None], draft.tokens_BN], axis=1)          # [B, 1 + N]
    positions = state.cache.lengths[:, None] + jnp.asarray(tree.step_depth)[None, :]
    logits, hidden, kv = model.forward(step_tokens, positions, state.cache.layers, state.cache.lengths,
                                       jnp.asarray(tree.step_mask), spec.attn_impl)
    verdict = _verify(spec, drafter, logits, draft, k_verify, sp)
    active = ~state.done
    new_BC = verdict.new_tokens(draft.tokens_BN)
    tokens, n_out, done, count = _append(state, new_BC, verdict.n_accepted + 1, eos_id, max_new)
    cache = commit_path(state.cache.with_layers(kv), verdict.path_BD, verdict.n_accepted, active)
    hist = state.stats.accepted_hist + (jax.nn.one_hot(verdict.n_accepted, tree.max_depth + 1, dtype=jnp.int32)
                                        * active[:, None])
    stats = DecodeStats(target_calls=state.stats.target_calls + 1,
                        row_calls=state.stats.row_calls + active, new_tokens=state.stats.new_tokens + count,
                        accepted_hist=hist)
    return DecodeState(tokens=tokens, n_out=n_out, root=jnp.where(active, verdict.next_root, state.root),
                       done=done, cache=cache,
                       drafter_state=drafter.update(state.drafter_state, verdict, new_BC, hidden),
                       rng=rng, stats=stats)


def run(model: Model, drafter, spec: LoopSpec, state: DecodeState, max_new, eos_id, sp: SamplingParams) -> DecodeState:
    """lax.while_loop until every row is done (each active row gains >= 1 token per step)."""
    cond = lambda s: ~jnp.all(s.done) & (s.stats.target_calls < spec.out_size)
    body = lambda s: step(model, drafter, spec, s, max_new, eos_id, sp)
    return jax.lax.while_loop(cond, body, state)
