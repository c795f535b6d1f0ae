"""The public decoding API: `Decoder`, a static, hashable decode validated once on the host and called as a pure
function of arrays and pytrees (it composes with jit, vmap, lax.scan and shard_map), and `decode()`, the notebook
call: validate, bucket the shapes, build a Decoder, call it."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pallas_kernels.tree_attention import AttnImpl
from spectax import programs
from spectax.checks import is_int
from spectax.drafters import NoDraft
from spectax.loop import DecodeStats, Loop, output_tokens
from spectax.models import Model, Target
from spectax.sampling import Sampling
from spectax.sharding import Layout, ShardingRules
from spectax.step_types import Drafter, LoopSpec
from spectax.tree import DraftTree
from spectax.verify.lossy import LOSSY_RULES, TopKMatch

MIN_BUCKET = 16
INT32_MIN, INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)


@struct.dataclass
class DecodeResult:
    tokens: jax.Array    # int32 [B, max_new_tokens], pad_id after each row's end (the end token included when hit)
    lengths: jax.Array   # int32 [B] new tokens per row
    stats: DecodeStats   # arrays only; its tau / acceptance properties sync with the host


def bucket(n: int) -> int:
    """The shape bucket for a length n: the next power of two, at least MIN_BUCKET."""
    return max(MIN_BUCKET, 1 << max(0, math.ceil(math.log2(max(n, 1)))))



def _int_vector(values, batch: int, name: str) -> np.ndarray:
    """int [batch]: `values` as an integer vector of one entry per row (bools are not ints); ValueError otherwise."""
    has_bool = isinstance(values, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in values)
    try:
        arr = np.asarray(values)
    except ValueError:   # ragged nesting
        arr = np.asarray(None)
    if has_bool or arr.shape != (batch,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be int [B={batch}], got {values!r}")
    return arr


def prepare_prompt(prompt, prompt_lengths, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Validates a prompt batch and returns (int32 [B, P] right-padded tokens, int32 [B] lengths)."""
    if isinstance(prompt, (list, tuple)):
        if prompt_lengths is not None:
            raise ValueError("prompt_lengths goes with an array prompt, not a list of token lists")
        rows = [np.asarray(r) for r in prompt]
        if not rows:
            raise ValueError("the prompt batch is empty")
        for i, r in enumerate(rows):
            if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
                raise ValueError(f"prompt row {i} is not a flat list of int token ids")
        lengths = np.array([r.size for r in rows], np.int32)
        tokens = np.zeros((len(rows), max(lengths.max(), 1)), np.int64)
        for i, r in enumerate(rows):
            tokens[i, :r.size] = r
    else:
        tokens = np.asarray(prompt)
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"an array prompt must be integer [B, P], got {tokens.dtype} {tokens.shape}")
        if tokens.shape[0] == 0:
            raise ValueError("the prompt batch is empty")
        lengths = (np.full((tokens.shape[0],), tokens.shape[1], np.int32) if prompt_lengths is None
                   else _int_vector(prompt_lengths, tokens.shape[0], "prompt_lengths"))
        if (lengths > tokens.shape[1]).any():
            raise ValueError(f"prompt_lengths {lengths.tolist()} exceed the prompt width {tokens.shape[1]}")
    if (lengths < 1).any():
        raise ValueError(f"empty prompt in rows {np.flatnonzero(lengths < 1).tolist()}: every row needs >= 1 token")
    live = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    bad = live & ((tokens < 0) | (tokens >= vocab_size))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"token id {int(tokens[r, c])} at row {r}, position {c} is outside the vocabulary "
                         f"[0, {vocab_size})")
    return np.where(live, tokens, 0).astype(np.int32), lengths.astype(np.int32)


def _seed_key(seed: int) -> jax.Array:
    """The key of a 64-bit seed: jax.random.key(seed) for seeds below 2**32, distinct keys above (no truncation)."""
    return jax.random.wrap_key_data(np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32))


def row_keys(rng, batch: int) -> jax.Array:
    """key [batch]: one key per row, each row's randomness drawn from its own key only.

    rng: an int seed (row b gets fold_in(key(seed), b)), a typed jax key (row b gets fold_in(key, b)), a typed key
    array [batch], or an int sequence / array [batch] of per-row seeds (row b gets key(seed[b]): its output then
    depends only on its prompt and its seed, at any batch position and batch size). Seeds are ints in [0, 2**64).
    Raw uint32 keys (jax.random.PRNGKey) are int arrays, read as seeds; use jax.random.key for a key. Traced
    (inside jit / vmap / scan): a key, a key array [batch], or 32-bit int seeds [batch] (row b gets key(seed[b]),
    as on the host). ValueError on anything else.
    """
    if is_int(rng):
        if not 0 <= rng < 2 ** 64:
            raise ValueError(f"an rng seed must be an int in [0, 2**64), got {rng}")
        rng = _seed_key(int(rng))
    if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if rng.shape == ():
            return jax.vmap(lambda b: jax.random.fold_in(rng, b))(jnp.arange(batch, dtype=jnp.uint32))
        if rng.shape != (batch,):
            raise ValueError(f"a key array rng must have shape [B={batch}] (one key per row), got {rng.shape}")
        return rng
    if isinstance(rng, (bool, np.bool_, float, str, bytes)) or rng is None:
        raise ValueError(f"rng must be an int seed, a jax key, or int [B] per-row seeds, got {rng!r}")
    if isinstance(rng, jax.core.Tracer):                    # traced seeds (inside jit / vmap / scan): 32-bit ints
        if rng.shape != (batch,) or not jnp.issubdtype(rng.dtype, jnp.integer):
            raise ValueError(f"per-row seeds must be an int array of shape [B={batch}], got {rng.dtype} {rng.shape}")
        seeds = rng.astype(jnp.uint32)
        return jax.random.wrap_key_data(jnp.stack([jnp.zeros_like(seeds), seeds], axis=-1))
    try:
        seeds = np.asarray(rng)
    except (TypeError, ValueError):
        raise ValueError(f"rng must be an int seed, a jax key, or int [B] per-row seeds, got {rng!r}") from None
    if seeds.shape != (batch,) or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(f"per-row seeds must be an int array of shape [B={batch}], got {seeds.dtype} {seeds.shape}")
    if (seeds < 0).any():
        raise ValueError(f"per-row seeds must be >= 0, got {seeds.tolist()}")
    seeds = seeds.astype(np.uint64)
    data = np.stack([seeds >> np.uint64(32), seeds & np.uint64(0xFFFFFFFF)], axis=-1).astype(np.uint32)
    return jax.random.wrap_key_data(data)


def _check_drafter(drafter, target, batch: int | None) -> None:
    """ValueError unless `drafter` follows the drafter contract (spectax.step_types.Drafter) with a DraftTree and
    its own check() passes for this target and batch."""
    for method in ("check", "init", "propose", "update"):
        if not callable(getattr(drafter, method, None)):
            raise ValueError(f"drafter must be None or a spectax drafter (spectax.drafters), got "
                             f"{type(drafter).__name__} without a {method}() method")
    if not isinstance(drafter, Drafter):
        raise ValueError(f"drafter {type(drafter).__name__} lacks the drafter attributes tree, target_layers and "
                         f"follows_any_path (see spectax.step_types.Drafter)")
    if not isinstance(drafter.tree, DraftTree):
        raise ValueError(f"drafter {type(drafter).__name__} has no DraftTree `tree`")
    drafter.check(target, batch=batch)


def _attn_impl(attn_impl) -> AttnImpl:
    """`attn_impl` (a name or an AttnImpl) resolved for JAX's backend; ValueError for an unknown name or a kernel
    the backend cannot run."""
    if isinstance(attn_impl, str):       # a name picks the attention; the products stay XLA's (the CPU kernel is
        attn_impl = AttnImpl(attn_impl)  # slower than XLA's GEMV at one row: AttnImpl(products="auto") opts in)
    if not isinstance(attn_impl, AttnImpl):
        raise ValueError(f"attn_impl must be a name ('auto', 'xla', 'pallas_tpu', 'pallas_gpu') or an AttnImpl, "
                         f"got {attn_impl!r}")
    try:
        return attn_impl.resolved()
    except ValueError as e:
        raise ValueError(f"attn_impl: {e}") from None


def _check_lossy(lossy, vocab_size: int) -> None:
    """ValueError unless `lossy` is None or a lossy rule that fits this vocabulary (TopKMatch k <= vocab_size)."""
    if lossy is not None and not isinstance(lossy, LOSSY_RULES):
        raise ValueError(f"lossy must be None or a rule from spectax.verify (Typical, TopKMatch), got {lossy!r}")
    if isinstance(lossy, TopKMatch) and lossy.k > vocab_size:
        raise ValueError(f"TopKMatch.k must be <= the target's vocabulary ({vocab_size} tokens), got {lossy.k}")


def eos_ids(eos_id, vocab_size: int) -> tuple[int, ...]:
    """`eos_id` (None, a token id, or a sequence of them) as a tuple of distinct ids; ValueError outside the
    vocabulary."""
    ids = () if eos_id is None else (eos_id,) if is_int(eos_id) else eos_id
    if not isinstance(ids, (tuple, list)) or not all(is_int(i) and 0 <= i < vocab_size for i in ids):
        raise ValueError(f"eos_id must be None, a token id or a sequence of token ids in [0, {vocab_size}), got "
                         f"{eos_id!r}")
    return tuple(dict.fromkeys(int(i) for i in ids))


def _prefill_width(max_prompt_len: int, chunk: int) -> int:
    """The prompt slots the program prefills: max_prompt_len, rounded up to whole chunks when it exceeds one."""
    return max_prompt_len if max_prompt_len <= chunk else -(-max_prompt_len // chunk) * chunk


class Decoder:
    """A decode, validated once on the host and called as a pure function (gemma-sampler style).

    `Decoder(model, drafter, *, max_new_tokens, max_prompt_len, sampling=Sampling(), eos_id=None, pad_id=0,
    cache_size=None, attn_impl="auto", lossy=None, mesh=None, rules=None)` checks everything that can be checked
    before tracing (the drafter's own check included); `model` and `drafter` give only their static structure (the
    params are arguments of each call), and the object is hashable: two Decoders of the same structure and
    settings are equal and share their compiled programs.

    `decoder(model, prompt_BP, prompt_len_B, rng, drafter=None, sampling=None) -> DecodeResult` decodes up to
    max_new_tokens per row. prompt_BP: int32 [B, max_prompt_len], each row right-padded after its prompt_len_B[b]
    tokens (left-padded input must be shifted first). rng: a key (row b uses fold_in(key, b)), a key array [B], or
    int [B] seeds. drafter: one with the structure the Decoder was built with (a training loop passes updated
    params), None for the one given at construction. sampling: another `Sampling` with the same greedy-ness and
    top_k: its temperature / top_p values (traced is fine) replace the Decoder's. Every argument may be traced: the
    call composes with jax.jit, jax.vmap (say over seeds or temperatures), lax.scan and shard_map (with
    check_vma=False: the loop's state is created replicated inside the call and varies per shard as it runs; or let
    the Decoder shard itself with mesh=). A row stops after
    any of the `eos_id` tokens (an int or a sequence; kept in the output). The other settings are `decode()`'s.
    """

    def __init__(self, model, drafter=None, *, max_new_tokens: int, max_prompt_len: int,
                 sampling: Sampling = Sampling(), eos_id=None, pad_id: int = 0, cache_size: int | None = None,
                 attn_impl: str | AttnImpl = "auto", lossy=None, mesh=None, rules=None, _cache_fill: float = 0.0,
                 _positions_checked: bool = False):
        if not isinstance(model, Target):
            raise ValueError(f"model must be a spectax Model (spectax.load(...)) or Ensemble (a Target), got "
                             f"{type(model).__name__}")
        config = model.config
        drafter = NoDraft() if drafter is None else drafter
        _check_drafter(drafter, model, batch=None)
        _check_lossy(lossy, config.vocab_size)
        for name, value in (("max_new_tokens", max_new_tokens), ("max_prompt_len", max_prompt_len)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not _positions_checked and max_prompt_len + max_new_tokens > config.max_position:
            raise ValueError(f"max_prompt_len {max_prompt_len} + max_new_tokens {max_new_tokens} exceeds the model's "
                             f"context of {config.max_position} positions")
        if not isinstance(sampling, Sampling):
            raise ValueError(f"sampling must be a spectax.Sampling, got {sampling!r}")
        sampler = sampling.sampler()       # ValueError for a traced temperature: greedy or not is static
        if not is_int(pad_id) or not INT32_MIN <= pad_id <= INT32_MAX:
            raise ValueError(f"pad_id must be an int in the int32 range [{INT32_MIN}, {INT32_MAX}], got {pad_id!r}")
        impl = _attn_impl(attn_impl)
        layout = None
        if mesh is not None or rules is not None:
            if mesh is None:
                raise ValueError("rules shard over a mesh: pass mesh= too")
            layout = Layout(mesh, ShardingRules() if rules is None else rules)
            impl = dataclasses.replace(impl, products="xla")    # XLA partitions its own products, not a kernel call
            if impl.impl != "xla":       # a kernel call XLA cannot partition runs inside the layout's shard_map
                impl = dataclasses.replace(impl, boundary=layout.shard_attention)
        spec = LoopSpec(sampler=sampler, out_size=int(max_new_tokens), vocab_size=config.vocab_size, attn_impl=impl,
                        lossy=lossy, layout=layout)
        width = _prefill_width(int(max_prompt_len), spec.prefill_chunk)
        needed = width + int(max_new_tokens) + drafter.tree.num_nodes + 1
        if cache_size is None:
            cache_size = needed
        elif not is_int(cache_size) or cache_size < needed:
            raise ValueError(f"cache_size must be an int >= {needed} for {width} prompt slots, {max_new_tokens} new "
                             f"tokens and the draft tree ({drafter.tree.num_nodes} nodes + root), got {cache_size!r}")
        self.max_new_tokens, self.max_prompt_len = int(max_new_tokens), int(max_prompt_len)
        self.sampling, self.eos_ids, self.pad_id = sampling, eos_ids(eos_id, config.vocab_size), int(pad_id)
        self.cache_size, self.spec, self.drafter = int(cache_size), spec, drafter
        self.cache_fill = float(_cache_fill)   # what unwritten cache slots hold (NaN in tests)
        self._model_def = jax.tree_util.tree_structure(model)
        self._drafter_def = jax.tree_util.tree_structure(drafter)
        self._key = (self._model_def, self._drafter_def, spec, self.max_prompt_len, self.cache_size, float(_cache_fill))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, Decoder) and self._key == other._key

    def __repr__(self) -> str:
        return (f"Decoder(drafter={type(self.drafter).__name__}, tree={self.drafter.tree!r}, max_new_tokens="
                f"{self.max_new_tokens}, max_prompt_len={self.max_prompt_len}, sampling={self.sampling}, "
                f"eos_id={self.eos_ids})")

    def __call__(self, model, prompt_BP, prompt_len_B, rng, drafter=None, sampling=None) -> DecodeResult:
        return self._call(model, prompt_BP, prompt_len_B, rng, drafter, sampling, self.max_new_tokens, self.eos_ids)

    def _call(self, model, prompt_BP, prompt_len_B, rng, drafter, sampling, max_new, eos) -> DecodeResult:
        """The call, with the output limit and end tokens as data (decode() buckets its output length)."""
        args = self.program_args(model, prompt_BP, prompt_len_B, rng, drafter, sampling, max_new, eos)
        return programs.call(decode_program, self, *args, jnp.int32(self.pad_id), static_key=self._key)

    def _stream(self, model, prompt_BP, prompt_len_B, rng, drafter, sampling, max_new, eos, steps: int):
        """The call in chunks: yields the DecodeResult so far after the prefill and after every `steps` target calls
        (one host sync per chunk); the last one is the whole decode, token for token the one `_call` gives."""
        args = self.program_args(model, prompt_BP, prompt_len_B, rng, drafter, sampling, max_new, eos)
        model, drafter, _, _, _, params, max_new, end_ids = args
        state, calls = programs.call(start_program, self, *args, static_key=self._key), 0
        while True:
            yield programs.call(result_program, self, state, jnp.int32(self.pad_id), static_key=self._key)
            calls += steps
            if bool(jnp.all(state.done)) or calls > self.spec.out_size:
                return
            state = programs.call(advance_program, self, model, drafter, state, params, max_new, end_ids,
                                  jnp.int32(calls), static_key=self._key)

    def program_args(self, model, prompt_BP, prompt_len_B, rng, drafter, sampling, max_new, eos) -> tuple:
        """Checks a call's arguments; returns the programs' (model, drafter, prompt_BP, prompt_len_B, keys_B,
        sampling params, max_new, end_ids)."""
        if jax.tree_util.tree_structure(model) != self._model_def:
            raise ValueError("model does not have the structure this Decoder was built for (architecture, config, "
                             "params tree)")
        drafter = self.drafter if drafter is None else drafter
        if jax.tree_util.tree_structure(drafter) != self._drafter_def:
            raise ValueError(f"drafter does not have the structure this Decoder was built for "
                             f"({type(self.drafter).__name__} with its tree and settings)")
        prompt_BP, prompt_len_B = jnp.asarray(prompt_BP), jnp.asarray(prompt_len_B)
        B = prompt_BP.shape[0] if prompt_BP.ndim == 2 else 0
        if prompt_BP.shape != (B, self.max_prompt_len) or B < 1 or not jnp.issubdtype(prompt_BP.dtype, jnp.integer):
            raise ValueError(f"prompt_BP must be int [B, max_prompt_len={self.max_prompt_len}], got {prompt_BP.dtype} "
                             f"{prompt_BP.shape}")
        if prompt_len_B.shape != (B,) or not jnp.issubdtype(prompt_len_B.dtype, jnp.integer):
            raise ValueError(f"prompt_len_B must be int [B={B}], got {prompt_len_B.dtype} {prompt_len_B.shape}")
        if self.spec.layout is not None:
            self.spec.layout.check_batch(B)
        keys_B = row_keys(rng, B)
        sampling = self.sampling if sampling is None else sampling
        if not isinstance(sampling, Sampling) or sampling.top_k != self.sampling.top_k:
            raise ValueError(f"sampling must be a spectax.Sampling with this Decoder's top_k ({self.sampling.top_k}), "
                             f"got {sampling!r}")
        try:
            same_mode = sampling.sampler() == self.spec.sampler
        except ValueError:                          # a traced temperature: fine for a sampling Decoder
            same_mode = not self.spec.sampler.greedy and (self.spec.sampler.filtered or sampling.top_p == 1.0)
        if not same_mode:
            raise ValueError(f"sampling {sampling} would switch this Decoder's mode ({self.spec.sampler}): greedy or "
                             f"not, and top-k / top-p filtering on or off, are fixed when the Decoder is built")
        end_ids = jnp.asarray(eos if eos else (-1,), jnp.int32)
        return (model, drafter, prompt_BP.astype(jnp.int32), prompt_len_B.astype(jnp.int32), keys_B,
                sampling.params(), jnp.asarray(max_new, jnp.int32), end_ids)


def begin(dec: Decoder, model, drafter, prompt_BP, prompt_len_B, keys_B, sampling, max_new, end_ids):
    """Inside a trace: the Loop and its state after the prefill (the first token sampled)."""
    spec = dec.spec
    B, P = prompt_BP.shape
    width = _prefill_width(P, spec.prefill_chunk)
    prompt_BP = jnp.pad(prompt_BP, ((0, 0), (0, width - P)))
    loop = _loop(dec, model, drafter, sampling, max_new, end_ids)
    cache = spec.constrain(loop.model.create_cache(B, dec.cache_size, dec.cache_fill))
    return loop, spec.constrain(loop.prefill(prompt_BP, prompt_len_B, keys_B, cache))


def _loop(dec: Decoder, model, drafter, sampling, max_new, end_ids) -> Loop:
    spec = dec.spec
    if spec.layout is not None:
        model, drafter = spec.constrain(model), spec.constrain(drafter)
    return Loop(model=model, drafter=drafter, spec=spec, sampling=sampling, max_new=max_new, eos_ids=end_ids)


@functools.partial(jax.jit, static_argnums=0)
def decode_program(dec: Decoder, model, drafter, prompt_BP, prompt_len_B, keys_B, sampling, max_new, end_ids, pad_id):
    """The compiled decode: prefill, then the while_loop; one program per Decoder (its static key) and shapes."""
    loop, state = begin(dec, model, drafter, prompt_BP, prompt_len_B, keys_B, sampling, max_new, end_ids)
    state = run(loop, state)
    return DecodeResult(tokens=output_tokens(state, dec.spec.out_size, pad_id), lengths=state.n_out,
                        stats=state.stats)


@functools.partial(jax.jit, static_argnums=0)
def start_program(dec: Decoder, model, drafter, prompt_BP, prompt_len_B, keys_B, sampling, max_new, end_ids):
    """A streamed decode's first program: the prefill; returns the loop's state."""
    return begin(dec, model, drafter, prompt_BP, prompt_len_B, keys_B, sampling, max_new, end_ids)[1]


@functools.partial(jax.jit, static_argnums=0)
def advance_program(dec: Decoder, model, drafter, state, sampling, max_new, end_ids, until):
    """A streamed decode's chunk: the loop from `state` until `until` target calls in all (or every row done). The
    state is not donated (the caller may still hold the result of the chunk before): one cache copy per chunk."""
    return _loop(dec, model, drafter, sampling, max_new, end_ids).run(state, until)


@functools.partial(jax.jit, static_argnums=0)
def result_program(dec: Decoder, state, pad_id) -> DecodeResult:
    """The DecodeResult of a (streamed) decode's state so far: tokens [B, out_size], pad_id after each row's end."""
    return DecodeResult(tokens=output_tokens(state, dec.spec.out_size, pad_id), lengths=state.n_out,
                        stats=state.stats)


def run(loop: Loop, state):
    """The decode loop (a module-level name, so tests can count how often a program is traced)."""
    return loop.run(state)


def decode(model: Model, prompt, max_new_tokens: int = 128, *, prompt_lengths=None, drafter=None,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=0, eos_id=None,
           pad_id: int = 0, attn_impl: str | AttnImpl = "auto", cache_size: int | None = None, lossy=None, mesh=None,
           rules=None) -> DecodeResult:
    """Decodes up to `max_new_tokens` new tokens per row in one jitted program (prefill + lax.while_loop).

    prompt: a list of token-id lists (ragged), or int [B, P] **right-padded** with `prompt_lengths` int [B]; an array
    without prompt_lengths is taken as B full rows of P tokens (left-padded input, as Hugging Face tokenizers give
    it, would be decoded with its pads as tokens: strip or shift the pads and pass the lengths).
    drafter: None (plain decoding) or a spectax drafter (e.g. `spectax.drafters.DraftModel(small, tree=...)`);
    its draft is verified losslessly: greedy output equals plain greedy output, sampled output is distributed as
    plain sampling. `lossy` (a `spectax.verify.Typical` or `TopKMatch` rule) trades that for acceptance.
    temperature 0 is greedy; otherwise temperature / top_k (0 = off) / top_p (1 = off) warp the target (and the
    draft) distribution. `rng` makes sampling deterministic, per row: an int seed or a jax key (row b uses
    fold_in(key, b)), or int [B] per-row seeds (a row's output then depends only on its prompt and its seed, at any
    batch position or batch size, for the same drafter and tree). A row stops after emitting one of `eos_id` (an
    int or a sequence of ints; kept in the output). `attn_impl` picks the verification attention: "auto" (the
    Pallas kernel on TPU and GPU, XLA on CPU), "xla", "pallas_tpu", "pallas_gpu", or a
    `pallas_kernels.tree_attention.AttnImpl` (block sizes, or interpret=True to run a kernel on CPU). Prompt and
    output lengths are bucketed to powers of two, so a new prompt length in the same bucket does not recompile.
    `cache_size` overrides the KV cache slots per row (default: prompt bucket + output bucket + draft nodes + 1).
    mesh (spectax.sharding.make_mesh(data=, model=)): run the same program sharded over it by `rules` (default
    spectax.sharding.ShardingRules()): batch rows over "data" (B must divide it), heads, MLP and vocabulary over
    "model"; the model and drafter are placed there first unless already so (load(path, mesh=mesh) does it as it
    loads). Random draws do not depend on the mesh. With a mesh XLA partitions its own attention; a Pallas kernel
    runs per (batch, kv-head) shard inside one shard_map (`spectax.sharding.Layout.shard_attention`).

    This is a validated wrapper of `Decoder` (one per shape bucket; compiled programs are shared by equal
    Decoders). Returns DecodeResult(tokens [B, max_new_tokens], lengths [B], stats).
    """
    return decode_with_poison(model, prompt, max_new_tokens, prompt_lengths=prompt_lengths, drafter=drafter,
                   temperature=temperature, top_k=top_k, top_p=top_p, rng=rng, eos_id=eos_id, pad_id=pad_id,
                   attn_impl=attn_impl, cache_size=cache_size, lossy=lossy, mesh=mesh, rules=rules,
                   poison_cache=False)


def decode_with_poison(model, prompt, max_new_tokens, *, prompt_lengths, drafter, temperature, top_k, top_p, rng,
                       eos_id, pad_id, attn_impl, cache_size, lossy, mesh=None, rules=None,
                       poison_cache, stream_steps: int | None = None):
    """decode() with a test knob (public for the tests): `poison_cache` fills every unwritten cache slot with NaN, so a
    read of a dead slot shows in the output. With `stream_steps`, decode_stream()'s generator."""
    if not isinstance(model, Target):
        raise ValueError(f"model must be a spectax Model (spectax.load(...)) or Ensemble (a Target), got "
                         f"{type(model).__name__}")
    config = model.config
    tokens, lengths = prepare_prompt(prompt, prompt_lengths, config.vocab_size)
    drafter = NoDraft() if drafter is None else drafter
    _check_drafter(drafter, model, batch=tokens.shape[0])
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    longest = int(lengths.max())
    if longest + max_new_tokens > config.max_position:
        raise ValueError(f"prompt length {longest} + max_new_tokens {max_new_tokens} exceeds the model's context "
                         f"of {config.max_position} positions")
    p_bucket, out_bucket = bucket(longest), bucket(max_new_tokens)
    needed = p_bucket + out_bucket + drafter.tree.num_nodes + 1
    if cache_size is not None and (not is_int(cache_size) or cache_size < needed):
        raise ValueError(f"cache_size must be an int >= {needed} for this prompt bucket ({p_bucket}), output "
                         f"bucket ({out_bucket}) and draft tree ({drafter.tree.num_nodes} nodes + root), "
                         f"got {cache_size!r}")
    dec = Decoder(model, drafter, max_new_tokens=out_bucket, max_prompt_len=p_bucket, sampling=sampling,
                  eos_id=eos_id, pad_id=pad_id, cache_size=needed if cache_size is None else cache_size,
                  attn_impl=attn_impl, lossy=lossy, mesh=mesh, rules=rules,
                  _cache_fill=float("nan") if poison_cache else 0.0, _positions_checked=True)
    prompt_BP = np.zeros((tokens.shape[0], p_bucket), np.int32)
    width = min(tokens.shape[1], p_bucket)
    prompt_BP[:, :width] = tokens[:, :width]
    keys_B = row_keys(rng, tokens.shape[0])
    if dec.spec.layout is not None:
        layout = dec.spec.layout
        layout.check_batch(tokens.shape[0])
        model, drafter = layout.place(model), layout.place(drafter)
        prompt_BP, lengths, keys_B = layout.rows(prompt_BP), layout.rows(lengths), layout.rows(keys_B)
    call = (model, prompt_BP, lengths, keys_B, drafter, None, int(max_new_tokens), dec.eos_ids)
    if stream_steps is None:
        return _cut(dec._call(*call), max_new_tokens)
    return (_cut(out, max_new_tokens) for out in dec._stream(*call, stream_steps))


def _cut(out: DecodeResult, max_new_tokens: int) -> DecodeResult:
    return DecodeResult(tokens=out.tokens[:, :max_new_tokens], lengths=out.lengths, stats=out.stats)


def decode_stream(model: Model, prompt, max_new_tokens: int = 128, *, steps: int = 8, prompt_lengths=None,
                  drafter=None, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=0, eos_id=None,
                  pad_id: int = 0, attn_impl: str | AttnImpl = "auto", cache_size: int | None = None, lossy=None,
                  mesh=None, rules=None):
    """decode() in chunks, for streaming text: a generator of DecodeResults, the first after the prefill (one token
    per row), then one after every `steps` target calls, each holding every token so far (tokens [B,
    max_new_tokens], pad_id after each row's end; lengths; stats). The last one is decode()'s result, token for
    token: each chunk continues the loop's state (caches, drafter state, random keys) exactly where the last one
    stopped. Three programs (prefill, a chunk of the loop, the result), each compiled once per shape bucket; the
    host syncs once per chunk, never per token. Arguments as for decode()."""
    if not is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return decode_with_poison(model, prompt, max_new_tokens, prompt_lengths=prompt_lengths, drafter=drafter,
                              temperature=temperature, top_k=top_k, top_p=top_p, rng=rng, eos_id=eos_id,
                              pad_id=pad_id, attn_impl=attn_impl, cache_size=cache_size, lossy=lossy, mesh=mesh,
                              rules=rules, poison_cache=False, stream_steps=int(steps))
