"""Fork decoding inside one jitted loop: each request's streams are rows of the ordinary decode loop.

Layout: a request of the batch owns `max_streams` consecutive rows (slots) of the loop, B x S rows in all; the main
stream starts in slot 0, the other slots start free. Every step runs the loop's own step (propose -> verify ->
accept -> commit) over all rows, so a drafter drafts each stream as a row. After the step, per row:
- a [Fork] committed before the step's last token cuts the step there (the tokens after it are dropped and drawn
  again next step, from the right context: at most one fork per row per step, exactly as without a drafter);
- a row whose newest token is a [Fork] opens a child in a free slot of its request: the slot gets a copy of the
  parent's row (its K/V cache, history and drafter state: the prompt and the parent up to the fork, nothing later;
  this design copies the prefix once per fork instead of masking a shared row, so the attention kernels stay as
  they are, at the price of S cache rows per request: see `cache_bytes`), and the child's first token is forced to
  [Child];
- every committed token is appended to its request's arena with the stream that wrote it, so a finished stream
  frees its slot at once and the answer is reassembled at the end, each child's text after its fork.
APAR's rules are applied to the target's logits (`Rules`): [Child] is never sampled; [Fork] is banned after a
[Fork] or a [Child] and for a row that has no free slot to fork into (the first rows of a request, in slot order, get
its free slots); a new child's first token is [Child].
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from spectax.api import Decoder, DecodeResult, begin, bucket, prepare_prompt
from spectax.checks import is_int
from spectax.drafters import NoDraft
from spectax.loop import DecodeState, Loop
from spectax.models import Target
from spectax.sampling import Sampling
from spectax.sharding import logical_axes


@struct.dataclass
class Rules:
    """A Target whose logits follow APAR's rules (module docstring); everything else is the wrapped model's.

    fresh_B: bool [B] rows whose newest token is the fork they were opened at (their next token is [Child]);
    fork_ok_B: bool [B] rows that may fork (a free slot waits for them)."""

    model: Any
    fresh_B: jax.Array
    fork_ok_B: jax.Array
    fork_id: int = struct.field(pytree_node=False)
    child_id: int = struct.field(pytree_node=False)

    @property
    def config(self):
        return self.model.config

    def _apply(self, logits_BTV, tokens_BT, root_only_T):
        v = jnp.arange(logits_BTV.shape[-1])
        control_BT = (tokens_BT == self.fork_id) | (tokens_BT == self.child_id)
        no_fork_BT = control_BT | ~self.fork_ok_B[:, None]
        banned = (v == self.child_id) | (no_fork_BT[..., None] & (v == self.fork_id))
        logits = jnp.where(banned, -jnp.inf, logits_BTV)
        forced_BT = self.fresh_B[:, None] & root_only_T[None, :]
        return jnp.where(forced_BT[..., None], jnp.where(v == self.child_id, 0.0, -jnp.inf), logits)

    def forward(self, tokens_BT, positions_BT, kv, lengths_B, mask_TT, attn_impl=None, logits_at_BI=None,
                write_cache: bool = True, features_at: tuple[int, ...] = ()):
        out = self.model.forward(tokens_BT, positions_BT, kv, lengths_B, mask_TT, attn_impl, logits_at_BI,
                                 write_cache, features_at)
        at_BI = (jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape) if logits_at_BI is None
                 else logits_at_BI)
        tokens = jnp.take_along_axis(tokens_BT, at_BI, axis=1)
        return out.replace(logits_BTV=self._apply(out.logits_BTV, tokens, at_BI[0] == 0))

    def prefill(self, prompt_BP, prompt_len_B, kv, chunk: int, attn_impl=None, features_at: tuple[int, ...] = ()):
        out = self.model.prefill(prompt_BP, prompt_len_B, kv, chunk, attn_impl, features_at)
        no_fork = self.replace(fork_ok_B=jnp.zeros_like(self.fork_ok_B))    # a stream starts with text, not a fork
        last_B1 = jnp.take_along_axis(prompt_BP, (prompt_len_B - 1)[:, None], axis=1)
        return out.replace(logits_BTV=no_fork._apply(out.logits_BTV, last_B1, jnp.ones((1,), bool)))

    def create_cache(self, batch: int, size: int, fill: float = 0.0):
        return self.model.create_cache(batch, size, fill)

    def logits(self, tokens_BT):
        return self.model.logits(tokens_BT)

    def logical_axes(self):
        return dataclasses.replace(self, model=self.model.logical_axes(), fresh_B=None, fork_ok_B=None)


@struct.dataclass
class AparState:
    s: DecodeState               # the loop's state over R = B x S rows
    stream_R: jax.Array          # int32 [R] the stream each slot runs (its index in its request)
    own_R: jax.Array             # int32 [R] tokens the slot's stream has written
    fresh_R: jax.Array           # bool [R] opened at this step's fork: next token [Child]
    arena_BA: jax.Array          # int32 [B, A] each request's tokens in commit order
    writer_BA: jax.Array         # int32 [B, A] the stream that wrote each
    used_B: jax.Array            # int32 [B] arena cells used
    parent_BA: jax.Array         # int32 [B, A] each stream's parent stream (-1: the main stream)
    fork_at_BA: jax.Array        # int32 [B, A] the index, among its parent's tokens, of the fork a stream starts at
    opened_B: jax.Array          # int32 [B] streams opened (the main one included)
    steps: jax.Array             # int32 [] loop steps (target calls)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The static half of an APAR decode (a jit static argument)."""

    dec: Decoder
    streams: int           # S slots per request
    arena: int             # A arena cells per request
    fork_id: int
    child_id: int


def _batch_leaves(state: DecodeState):
    """A pytree of bools matching `state`: True for each array whose first axis is the loop's rows."""
    return jax.tree_util.tree_map(lambda a: bool(a.names) and a.names[0] == "batch", logical_axes(state),
                                  is_leaf=lambda x: hasattr(x, "names"))


def _rows(state: DecodeState, fn):
    """`fn` applied to each per-row array of the loop's state (the rest as is)."""
    return jax.tree_util.tree_map(lambda x, rows: fn(x) if rows else x, state, _batch_leaves(state))


def _copy_rows(state: DecodeState, src_R, target_R):
    """Row r := row src_R[r] for each r with target_R[r], one row at a time in place (the cache is large)."""
    def one(r, s):
        copy = lambda s: _rows(s, lambda x: lax.dynamic_update_index_in_dim(                     # noqa: E731
            x, lax.dynamic_index_in_dim(x, src_R[r], 0), r, 0))
        return lax.cond(target_R[r], copy, lambda s: s, s)
    return lax.cond(jnp.any(target_R), lambda s: lax.fori_loop(0, target_R.shape[0], one, s), lambda s: s, state)


def _step(plan: Plan, model, drafter, sampling, max_new, end_ids, a: AparState) -> AparState:
    dec, S, A = plan.dec, plan.streams, plan.arena
    s = a.s
    R = s.done.shape[0]
    B = R // S
    req_R = jnp.arange(R) // S
    free_R = s.done
    free_B = jnp.sum(free_R.reshape(B, S), axis=1)
    active_R = ~s.done
    rank_R = (jnp.cumsum(active_R.reshape(B, S), axis=1) - 1).reshape(R)
    fork_ok_R = active_R & (rank_R < free_B[req_R])
    rules = Rules(model=model, fresh_B=a.fresh_R, fork_ok_B=fork_ok_R, fork_id=plan.fork_id,
                  child_id=plan.child_id)
    loop = Loop(model=rules, drafter=drafter, spec=dec.spec, sampling=sampling, max_new=max_new, eos_ids=end_ids)
    before = s.history.length_B
    s = loop.step(s)
    # a fork before the step's last committed token ends the step there
    H = s.history.tokens_BW.shape[1]
    j_H = jnp.arange(H)[None, :]
    new_RH = (j_H >= before[:, None]) & (j_H < s.history.length_B[:, None])
    fork_RH = new_RH & (s.history.tokens_BW == plan.fork_id)
    cut_R = jnp.where(fork_RH.any(1), jnp.argmax(fork_RH, axis=1) + 1, s.history.length_B)
    dropped_R = s.history.length_B - cut_R
    history = s.history.replace(tokens_BW=jnp.where(j_H < cut_R[:, None], s.history.tokens_BW, -1), length_B=cut_R)
    n_out = s.n_out - dropped_R
    done = jnp.where(dropped_R > 0, n_out >= max_new, s.done)
    s = s.replace(history=history, n_out=n_out, done=done,
                  cache=s.cache.replace(lengths=jnp.where(dropped_R > 0, cut_R - 1, s.cache.lengths)))
    # the step's tokens into each request's arena, rows in slot order
    count_R = cut_R - before
    offset_R = a.used_B[req_R] + (jnp.cumsum(count_R.reshape(B, S), axis=1) - count_R.reshape(B, S)).reshape(R)
    C = dec.drafter.tree.max_depth + 1
    k_C = jnp.arange(C)[None, :]
    tokens_RC = jnp.take_along_axis(s.history.tokens_BW, jnp.minimum(before[:, None] + k_C, H - 1), axis=1)
    cols_RC = jnp.where(k_C < count_R[:, None], offset_R[:, None] + k_C, A)                     # A: dropped
    rows_RC = jnp.broadcast_to(req_R[:, None], cols_RC.shape)
    arena = a.arena_BA.at[rows_RC, cols_RC].set(tokens_RC, mode="drop")
    writer = a.writer_BA.at[rows_RC, cols_RC].set(jnp.broadcast_to(a.stream_R[:, None], cols_RC.shape), mode="drop")
    used = a.used_B + jnp.sum(count_R.reshape(B, S), axis=1)
    own = a.own_R + count_R
    # forks: the k-th forking row of a request takes its k-th free slot
    forks_R = (count_R > 0) & (s.history.root_B == plan.fork_id)
    fork_rank_R = (jnp.cumsum(forks_R.reshape(B, S), axis=1) - 1).reshape(R)
    free_rank_R = (jnp.cumsum(free_R.reshape(B, S), axis=1) - 1).reshape(R)
    # target slot t of request b receives the forking row whose fork rank equals t's free rank
    match_RR = (forks_R[:, None] & free_R[None, :] & (req_R[:, None] == req_R[None, :])
                & (fork_rank_R[:, None] == free_rank_R[None, :]))                           # [parent, child]
    target_R = match_RR.any(0)
    src_R = jnp.argmax(match_RR, axis=0)
    s_copied = _copy_rows(s, src_R, target_R)                # each slot keeps its own random key
    s = s_copied.replace(rng=s.rng, prompt_len_B=jnp.where(target_R, s_copied.history.length_B, s_copied.prompt_len_B),
                         n_out=jnp.where(target_R, 0, s_copied.n_out), done=jnp.where(target_R, False, s_copied.done))
    new_id_R = a.opened_B[req_R] + (jnp.cumsum(target_R.reshape(B, S), axis=1) - 1).reshape(R)
    ids_R = jnp.where(target_R, new_id_R, A)                                                   # A: dropped
    parent = a.parent_BA.at[req_R, ids_R].set(a.stream_R[src_R], mode="drop")
    fork_at = a.fork_at_BA.at[req_R, ids_R].set(own[src_R] - 1, mode="drop")
    opened = a.opened_B + jnp.sum(target_R.reshape(B, S), axis=1)
    # a request that has written max_new tokens in all its streams ends them all
    over_R = (used >= max_new)[req_R]
    s = s.replace(done=s.done | over_R)
    return AparState(s=s, stream_R=jnp.where(target_R, new_id_R, a.stream_R), own_R=jnp.where(target_R, 0, own),
                     fresh_R=target_R, arena_BA=arena, writer_BA=writer, used_B=used, parent_BA=parent,
                     fork_at_BA=fork_at, opened_B=opened, steps=a.steps + 1)


@functools.partial(jax.jit, static_argnums=0)
def apar_program(plan: Plan, model, drafter, prompt_BP, prompt_len_B, keys_B, sampling, max_new, end_ids):
    """Prefill of the B prompts, their rows copied to S slots each, then the fork-decoding while_loop."""
    dec, S, A = plan.dec, plan.streams, plan.arena
    B = prompt_BP.shape[0]
    R = B * S
    rules = Rules(model=model, fresh_B=jnp.zeros((B,), bool), fork_ok_B=jnp.zeros((B,), bool),
                  fork_id=plan.fork_id, child_id=plan.child_id)
    _, s = begin(dec, rules, drafter, prompt_BP, prompt_len_B, keys_B, sampling, max_new, end_ids)
    s = _rows(s, lambda x: jnp.repeat(x, S, axis=0))
    slot_R = jnp.arange(R) % S
    s = s.replace(done=s.done | (slot_R > 0), rng=jax.vmap(jax.random.fold_in)(s.rng, slot_R))
    first_B = s.history.root_B[::S]
    a = AparState(s=s, stream_R=jnp.where(slot_R == 0, 0, -1), own_R=(slot_R == 0).astype(jnp.int32),
                  fresh_R=jnp.zeros((R,), bool),
                  arena_BA=jnp.full((B, A), -1, jnp.int32).at[:, 0].set(first_B),
                  writer_BA=jnp.full((B, A), -1, jnp.int32).at[:, 0].set(0), used_B=jnp.ones((B,), jnp.int32),
                  parent_BA=jnp.full((B, A), -1, jnp.int32), fork_at_BA=jnp.full((B, A), -1, jnp.int32),
                  opened_B=jnp.ones((B,), jnp.int32), steps=jnp.int32(0))
    a = a.replace(s=a.s.replace(done=a.s.done | (a.used_B >= max_new)[jnp.arange(R) // S]))

    def cond(a):
        return ~jnp.all(a.s.done) & (a.steps < dec.spec.out_size)

    return lax.while_loop(cond, functools.partial(_step, plan, model, drafter, sampling, max_new, end_ids), a)


@dataclasses.dataclass
class AparStats:
    """target_calls: decoding steps (one target call each, as for spectax.decode); tokens: every token written over
    all rows and streams (control tokens included); steps_per_token = target_calls / the longest row's tokens."""

    target_calls: int
    tokens: int
    steps_per_token: float


@dataclasses.dataclass(frozen=True)
class Stream:
    """One stream of a row: its parent stream (-1 for the main one), the index among the parent's tokens of the
    fork it starts at (-1 for the main one), and its own tokens ([Child] first for a child)."""

    parent: int
    fork_at: int
    tokens: tuple[int, ...]


@dataclasses.dataclass
class AparResult:
    """sequences: per row, the reassembled token ids (ints; control tokens removed, no padding); streams: int [B]
    streams opened per row (the main one included); stats: AparStats; forks: per row, its streams (`Stream`) in the
    order they opened."""

    sequences: list[list[int]]
    streams: np.ndarray
    stats: AparStats
    forks: list[list[Stream]]


def row_streams(arena, writer, parent, fork_at, used: int, opened: int) -> list[Stream]:
    """One request's streams from its arena (tokens in commit order, each with the stream that wrote it)."""
    own: list[list[int]] = [[] for _ in range(opened)]
    for tok, who in zip(arena[:used], writer[:used]):
        own[int(who)].append(int(tok))
    return [Stream(int(parent[i]), int(fork_at[i]), tuple(own[i])) for i in range(opened)]


def reassemble_ids(streams: list[Stream], control: tuple[int, ...], ends: tuple[int, ...]) -> list[int]:
    """A row's answer in document order: each child's tokens right after its fork (children's end tokens and every
    control token removed; the main stream's end token kept)."""
    children: dict[tuple[int, int], list[int]] = {}
    for i, stream in enumerate(streams[1:], start=1):
        children.setdefault((stream.parent, stream.fork_at), []).append(i)

    def text(i: int) -> list[int]:
        out = []
        for k, tok in enumerate(streams[i].tokens):
            if tok not in control and not (i > 0 and tok in ends):
                out.append(tok)
            for child in children.get((i, k), []):
                out.extend(text(child))
        return out

    return text(0)


def decode(model, prompt, max_new_tokens: int = 128, *, drafter=None, max_streams: int = 4, eos_id=None,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=0, prompt_lengths=None,
           attn_impl="auto") -> AparResult:
    """APAR decoding of `model` (a model fine-tuned to fork: `config.apar_ids` set) over `prompt` (as for
    spectax.decode: token-id lists or a right-padded array with prompt_lengths).

    Each row's answer may fork into up to `max_streams` streams decoded side by side (module docstring);
    `max_new_tokens` bounds each row's total over all its streams; a row ends when all its streams have ended (each
    at one of `eos_id`, default the model's end tokens). drafter: None, or one that keeps no state between steps
    (n-gram: it reads each stream's own history); each stream is drafted and verified losslessly, so a greedy
    decode gives the same tokens with or without it while the stream cap does not bind (with the cap reached, which
    streams may fork depends on when slots free up, and a drafter changes when). max_streams=1 turns forking off:
    the model decodes as spectax.decode decodes it, rules and all control tokens aside.
    """
    if not isinstance(model, Target):
        raise ValueError(f"model must be a spectax Model, got {type(model).__name__}")
    if model.config.apar_ids is None:
        raise ValueError("this model has no APAR control tokens (config.apar_ids is None): load an APAR model, "
                         "e.g. spectax.load('checkpoints/smollm2-135m-instruct/apar')")
    if not is_int(max_streams) or max_streams < 1:
        raise ValueError(f"max_streams must be an int >= 1, got {max_streams!r}")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    drafter = NoDraft() if drafter is None else drafter
    tokens, lengths = prepare_prompt(prompt, prompt_lengths, model.config.vocab_size)
    B = tokens.shape[0]
    eos = model.config.eos_ids if eos_id is None else eos_id
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    if max_streams == 1:
        from spectax.api import decode as plain_decode

        out: DecodeResult = plain_decode(model, prompt, max_new_tokens, prompt_lengths=prompt_lengths,
                                         drafter=None if isinstance(drafter, NoDraft) else drafter,
                                         temperature=temperature, top_k=top_k, top_p=top_p, rng=rng, eos_id=eos,
                                         attn_impl=attn_impl)
        seqs = [[int(t) for t in np.asarray(out.tokens[b, :int(out.lengths[b])])] for b in range(B)]
        lengths = np.asarray(out.lengths)
        return AparResult(sequences=seqs, streams=np.ones((B,), np.int32),
                          stats=AparStats(int(out.stats.target_calls), int(lengths.sum()),
                                          int(out.stats.target_calls) / max(1, int(lengths.max()))),
                          forks=[[Stream(-1, -1, tuple(seq))] for seq in seqs])
    try:
        state = jax.eval_shape(lambda: drafter.init(model, jnp.zeros((1, 2), jnp.int32), jnp.ones((1,), jnp.int32),
                                                    None, 8, None))
    except Exception:        # noqa: BLE001 -- a drafter whose init needs the target's outputs keeps state
        state = (object(),)
    if jax.tree_util.tree_leaves(state):
        raise ValueError(f"APAR takes a drafter that keeps no state between steps (n-gram), not "
                         f"{type(drafter).__name__}: streams fork and steps are cut at a fork")
    S, N = int(max_streams), drafter.tree.num_nodes
    arena = int(max_new_tokens) + S * (N + 1)
    longest = int(lengths.max())
    p_bucket, out_size = bucket(longest), bucket(arena)
    if p_bucket + out_size > model.config.max_position:
        raise ValueError(f"prompt length {longest} + max_new_tokens {max_new_tokens} (+ {arena - max_new_tokens} "
                         f"for the streams' last steps) exceeds the model's context of {model.config.max_position}")
    dec = Decoder(model, drafter, max_new_tokens=out_size, max_prompt_len=p_bucket, sampling=sampling, eos_id=eos,
                  attn_impl=attn_impl, _positions_checked=True)
    plan = Plan(dec=dec, streams=S, arena=arena, fork_id=model.config.apar_ids[0], child_id=model.config.apar_ids[1])
    prompt_BP = np.zeros((B, p_bucket), np.int32)
    prompt_BP[:, :min(tokens.shape[1], p_bucket)] = tokens[:, :p_bucket]
    args = dec.program_args(model, prompt_BP, lengths, rng, drafter, None, int(max_new_tokens), dec.eos_ids)
    model, drafter, prompt_BP, prompt_len_B, keys_B, params, max_new, end_ids = args
    a = jax.device_get(apar_program(plan, model, drafter, prompt_BP, prompt_len_B, keys_B, params, max_new, end_ids))
    ends = tuple(int(e) for e in dec.eos_ids)
    forks = [row_streams(a.arena_BA[b], a.writer_BA[b], a.parent_BA[b], a.fork_at_BA[b], int(a.used_B[b]),
                         int(a.opened_B[b])) for b in range(B)]
    seqs = [reassemble_ids(f, model.config.apar_ids, ends)[:max_new_tokens] for f in forks]
    return AparResult(sequences=seqs, streams=np.asarray(a.opened_B, np.int32),
                      stats=AparStats(int(a.steps), int(np.sum(a.used_B)),
                                      int(a.steps) / max(1, int(np.max(np.minimum(a.used_B, max_new_tokens))))),
                      forks=forks)


def cache_bytes(model, batch: int, max_streams: int, cache_size: int) -> int:
    """Bytes of the K/V cache an APAR decode holds: batch x max_streams rows (plain decoding holds `batch`)."""
    c = model.config
    return 2 * c.num_layers * batch * max_streams * c.num_kv_heads * cache_size * c.head_dim * 4

