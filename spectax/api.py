"""spectax.decode(): validate on the host (clear ValueError before tracing), bucket shapes, run one jitted program."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pallas_kernels.tree_attention import AttnImpl
from spectax.drafters import NoDraft
from spectax.ensemble import Ensemble
from spectax.loop import DecodeStats, LoopSpec, prefill, run
from spectax.models import Model
from spectax.sampling import SamplingParams, make_sampling
from spectax.sharding import Layout, ShardingRules
from spectax.tree import DraftTree
from spectax.verify.lossy import LOSSY_RULES, TopKMatch

MIN_BUCKET = 16
INT32_MIN, INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)


@struct.dataclass
class DecodeResult:
    tokens: jax.Array    # int32 [B, max_new_tokens], pad_id after each row's end (EOS included when hit)
    lengths: jax.Array   # int32 [B] new tokens per row
    stats: DecodeStats


def bucket(n: int) -> int:
    """The shape bucket for a length n: the next power of two, at least MIN_BUCKET."""
    return max(MIN_BUCKET, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


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
    Raw uint32 keys (jax.random.PRNGKey) are int arrays, read as seeds; use jax.random.key for a key.
    ValueError on anything else.
    """
    if _is_int(rng):
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


def decode(model: Model, prompt, max_new_tokens: int = 128, *, prompt_lengths=None, drafter=None,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=0, eos_id: int | None = None,
           pad_id: int = 0, attn_impl: str | AttnImpl = "auto", cache_size: int | None = None, lossy=None, mesh=None,
           rules=None) -> DecodeResult:
    """Decodes up to `max_new_tokens` new tokens per row in one jitted program (prefill + lax.while_loop).

    prompt: a list of token-id lists (ragged), or int [B, P] right-padded with `prompt_lengths` int [B].
    drafter: None (plain decoding) or a spectax drafter (e.g. `spectax.drafters.DraftModel(small, tree=...)`);
    its draft is verified losslessly: greedy output equals plain greedy output, sampled output is distributed as
    plain sampling. `lossy` (a `spectax.verify.Typical` or `TopKMatch` rule) trades that for acceptance.
    temperature 0 is greedy; otherwise temperature / top_k (0 = off) / top_p (1 = off) warp the target (and the
    draft) distribution. `rng` makes sampling deterministic, per row: an int seed or a jax key (row b uses
    fold_in(key, b)), or int [B] per-row seeds (a row's output then depends only on its prompt and its seed, at any
    batch position or batch size, for the same drafter and tree). A row stops after emitting
    `eos_id` (kept in the output). `attn_impl` picks the verification attention: "auto" (the Pallas kernel on TPU
    and GPU, XLA on CPU), "xla", "pallas_tpu", "pallas_gpu", or a `pallas_kernels.tree_attention.AttnImpl` (block
    sizes, or interpret=True to run a kernel on CPU). Prompt and output lengths are bucketed to powers of two, so a
    new prompt length in the same bucket does not recompile. `cache_size` overrides the KV cache slots per row
    (default: prompt bucket + output bucket + draft nodes + 1).
    mesh (spectax.sharding.make_mesh(data=, model=)): run the same program sharded over it by `rules` (default
    spectax.sharding.ShardingRules()): batch rows over "data" (B must divide it), heads, MLP and vocabulary over
    "model"; the model and drafter are placed there first unless already so (load(path, mesh=mesh) does it as it
    loads). Random draws do not depend on the mesh. With a mesh XLA partitions its own attention; a Pallas kernel
    runs per (batch, kv-head) shard inside one shard_map (`spectax.sharding.Layout.shard_attention`).
    Returns DecodeResult(tokens [B, max_new_tokens], lengths [B], stats).
    """
    return _decode(model, prompt, max_new_tokens, prompt_lengths=prompt_lengths, drafter=drafter,
                   temperature=temperature, top_k=top_k, top_p=top_p, rng=rng, eos_id=eos_id, pad_id=pad_id,
                   attn_impl=attn_impl, cache_size=cache_size, lossy=lossy, mesh=mesh, rules=rules,
                   poison_cache=False)


def _check_drafter(drafter, config, batch: int) -> None:
    """ValueError unless `drafter` has the drafter methods and a DraftTree and its own check() passes for this
    target and batch."""
    for method in ("check", "init", "propose", "update"):
        if not callable(getattr(drafter, method, None)):
            raise ValueError(f"drafter must be None or a spectax drafter (spectax.drafters), got "
                             f"{type(drafter).__name__} without a {method}() method")
    if not isinstance(getattr(drafter, "tree", None), DraftTree):
        raise ValueError(f"drafter {type(drafter).__name__} has no DraftTree `tree`")
    drafter.check(config, batch=batch)


def _attn_impl(attn_impl) -> AttnImpl:
    """`attn_impl` (a name or an AttnImpl) resolved for JAX's backend; ValueError for an unknown name or a kernel
    the backend cannot run."""
    if isinstance(attn_impl, str):
        attn_impl = AttnImpl(attn_impl)
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


def _decode(model, prompt, max_new_tokens, *, prompt_lengths, drafter, temperature, top_k, top_p, rng, eos_id,
            pad_id, attn_impl, cache_size, lossy, mesh=None, rules=None, poison_cache) -> DecodeResult:
    """decode() with a test knob: `poison_cache` fills every unwritten cache slot with NaN."""
    if not isinstance(model, (Model, Ensemble)):
        raise ValueError(f"model must be a spectax Model (spectax.load(...)) or Ensemble, got {type(model).__name__}")
    config = model.config
    tokens, lengths = prepare_prompt(prompt, prompt_lengths, config.vocab_size)
    drafter = NoDraft() if drafter is None else drafter
    _check_drafter(drafter, config, batch=tokens.shape[0])
    _check_lossy(lossy, config.vocab_size)
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    sampler, sp = make_sampling(temperature, top_k, top_p)
    if eos_id is not None and (not _is_int(eos_id) or not 0 <= eos_id < config.vocab_size):
        raise ValueError(f"eos_id must be None or a token id in [0, {config.vocab_size}), got {eos_id!r}")
    if not _is_int(pad_id) or not INT32_MIN <= pad_id <= INT32_MAX:
        raise ValueError(f"pad_id must be an int in the int32 range [{INT32_MIN}, {INT32_MAX}], got {pad_id!r}")
    impl = _attn_impl(attn_impl)
    longest = int(lengths.max())
    if longest + max_new_tokens > config.max_position:
        raise ValueError(f"prompt length {longest} + max_new_tokens {max_new_tokens} exceeds the model's context "
                         f"of {config.max_position} positions")
    p_bucket, out_bucket = bucket(longest), bucket(max_new_tokens)
    needed = p_bucket + out_bucket + drafter.tree.num_nodes + 1
    if cache_size is None:
        cache_size = needed
    elif not _is_int(cache_size) or cache_size < needed:
        raise ValueError(f"cache_size must be an int >= {needed} for this prompt bucket ({p_bucket}), output "
                         f"bucket ({out_bucket}) and draft tree ({drafter.tree.num_nodes} nodes + root), "
                         f"got {cache_size!r}")
    prompt_BP = np.zeros((tokens.shape[0], p_bucket), np.int32)
    width = min(tokens.shape[1], p_bucket)
    prompt_BP[:, :width] = tokens[:, :width]
    keys_B = row_keys(rng, tokens.shape[0])
    layout = None
    if mesh is not None or rules is not None:
        if mesh is None:
            raise ValueError("rules shard over a mesh: pass mesh= too")
        layout = Layout(mesh, ShardingRules() if rules is None else rules)
        layout.check_batch(tokens.shape[0])
        model, drafter = layout.place(model), layout.place(drafter)
        prompt_BP, lengths, keys_B = layout.rows(prompt_BP), layout.rows(lengths), layout.rows(keys_B)
        if impl.impl != "xla":
            impl = dataclasses.replace(impl, layout=layout)
    spec = LoopSpec(sampler=sampler, out_size=out_bucket, vocab_size=config.vocab_size, attn_impl=impl, lossy=lossy,
                    layout=layout)
    out, n_out, stats = _decode_program(model, drafter, prompt_BP, lengths, np.int32(max_new_tokens),
                                        np.int32(-1 if eos_id is None else eos_id), np.int32(pad_id), sp, keys_B,
                                        spec=spec, cache_size=int(cache_size), poison_cache=poison_cache)
    return DecodeResult(tokens=out[:, :max_new_tokens], lengths=n_out, stats=stats)


@functools.partial(jax.jit, static_argnames=("spec", "cache_size", "poison_cache"))
def _decode_program(model, drafter, prompt_BP, prompt_len_B, max_new, eos_id, pad_id, sp: SamplingParams, keys_B, *,
                    spec: LoopSpec, cache_size: int, poison_cache: bool):
    B = prompt_BP.shape[0]
    cache = spec.constrain(model.create_cache(B, cache_size, jnp.nan if poison_cache else 0.0))
    state = spec.constrain(prefill(model, drafter, spec, prompt_BP, prompt_len_B, max_new, eos_id, pad_id, sp, keys_B,
                                   cache))
    state = run(model, drafter, spec, state, max_new, eos_id, sp)
    return state.tokens, state.n_out, state.stats
