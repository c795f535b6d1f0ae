"""Logit warping (temperature, top-k, top-p), per-row random keys and token sampling, identical for draft and target.

`SamplingParams` carries the values as data (changing them does not recompile); `Sampler` is the static part.
Randomness is per batch row: every draw takes a key array [B] (one key per row) and draws each row's numbers from
that row's key alone, so a row's output depends on its prompt and its seed, not on its batch position or batch size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Static sampling mode: greedy (argmax) or random; `filtered` turns the top-k / top-p masks on."""

    greedy: bool
    filtered: bool


@struct.dataclass
class SamplingParams:
    temperature: jax.Array  # f32 []
    top_k: jax.Array        # i32 [] (0 = off)
    top_p: jax.Array        # f32 [] (1 = off)


def _concrete(x) -> bool:
    """Whether x is a value known on the host (not a tracer inside jit / vmap / scan)."""
    return not isinstance(x, jax.core.Tracer)


@struct.dataclass
class Sampling:
    """How each token is chosen: greedy (temperature 0) or drawn from the temperature-scaled logits, filtered to the
    top_k tokens (0 = off) and to the smallest set holding top_p of the mass (1 = off); the same warping applies to
    target and draft, so speculative sampling stays lossless.

    temperature and top_p are data: inside jit / vmap / scan they may be traced (a sweep can vmap over them); top_k
    is static (it shapes nothing, but switches the sort). Greedy or not is static too: it is decided by a concrete
    temperature (0.0: greedy) where a `spectax.Decoder` is built. Bad concrete values raise ValueError here."""

    temperature: Any = 0.0
    top_k: int = struct.field(pytree_node=False, default=0)
    top_p: Any = 1.0

    def __post_init__(self):
        real = (int, float, np.integer, np.floating)
        t, k, p = self.temperature, self.top_k, self.top_p
        if _concrete(t):
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, real + (jax.Array,)) or np.ndim(t) \
                    or not math.isfinite(float(t)) or float(t) < 0:
                raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
            object.__setattr__(self, "temperature", float(t))
        if not isinstance(k, (int, np.integer)) or isinstance(k, (bool, np.bool_)) or k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {k!r}")
        object.__setattr__(self, "top_k", int(k))
        if _concrete(p):
            if isinstance(p, (bool, np.bool_)) or not isinstance(p, real + (jax.Array,)) or np.ndim(p) \
                    or not 0.0 < float(p) <= 1.0:
                raise ValueError(f"top_p must be in (0, 1], got {p!r}")
            object.__setattr__(self, "top_p", float(p))

    @property
    def greedy(self) -> bool:
        """Argmax decoding (a concrete temperature of 0); ValueError for a traced temperature."""
        if not _concrete(self.temperature):
            raise ValueError("whether decoding is greedy is static: build the Decoder with a concrete temperature")
        return self.temperature == 0

    @property
    def filtered(self) -> bool:
        """Whether the top-k / top-p masks run (static: top_k > 0 or a concrete top_p < 1, or a traced top_p)."""
        return not self.greedy and (self.top_k > 0 or not _concrete(self.top_p) or self.top_p < 1.0)

    def sampler(self) -> Sampler:
        """The static sampling mode."""
        return Sampler(greedy=self.greedy, filtered=self.filtered)

    def params(self) -> SamplingParams:
        """The values as data (temperature floored at 1e-6, so greedy programs divide by something)."""
        return SamplingParams(temperature=jnp.maximum(jnp.asarray(self.temperature, jnp.float32), 1e-6),
                              top_k=jnp.int32(self.top_k), top_p=jnp.asarray(self.top_p, jnp.float32))


def make_sampling(temperature: float, top_k: int, top_p: float) -> tuple[Sampler, SamplingParams]:
    """Validates the user's values (ValueError on bad input) and splits them into static and data parts."""
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    return sampling.sampler(), sampling.params()


def split_rows(keys_B: jax.Array, n: int) -> jax.Array:
    """key [B, n]: n independent keys per row, each derived from that row's key alone."""
    return jax.vmap(lambda k: jax.random.split(k, n))(keys_B)


def fold_rows(keys_B: jax.Array, data) -> jax.Array:
    """key [B]: each row's key folded with the same `data` (an int or int32 scalar)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys_B)


def uniform_rows(keys_B: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 [B, *shape] uniform in [0, 1), row b from keys_B[b]."""
    return jax.vmap(lambda k: jax.random.uniform(k, shape))(keys_B)


def gumbel_rows(keys_B: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 [B, *shape] standard Gumbel noise, row b from keys_B[b]."""
    return jax.vmap(lambda k: jax.random.gumbel(k, shape))(keys_B)


def categorical_rows(keys_B: jax.Array, logits_BxV: jax.Array) -> jax.Array:
    """int32 [B, ...]: one draw per leading index from softmax(logits) over the last axis, row b from keys_B[b]."""
    return jax.vmap(lambda k, l: jax.random.categorical(k, l, axis=-1))(keys_B, logits_BxV).astype(jnp.int32)


def top_k(x_xV: jax.Array, k: int, shards: int = 1) -> tuple[jax.Array, jax.Array]:
    """lax.top_k over the last axis (values, int32 indices; equal values: the lower index first), in two stages when
    the axis is split in `shards` equal blocks (a vocabulary sharded over the mesh's model axis): each block's top k,
    then the top k of those candidates, so the sharded axis is never gathered. Same result for any `shards`."""
    V = x_xV.shape[-1]
    if shards == 1 or V % shards or k > V // shards:
        return lax.top_k(x_xV, k)
    lead = x_xV.shape[:-1]
    vals_xSk, idx_xSk = lax.top_k(x_xV.reshape(*lead, shards, V // shards), k)      # per block
    idx_xSk = idx_xSk + (V // shards) * jnp.arange(shards, dtype=idx_xSk.dtype)[:, None]
    vals_xk, at_xk = lax.top_k(vals_xSk.reshape(*lead, shards * k), k)             # candidates in index order
    return vals_xk, jnp.take_along_axis(idx_xSk.reshape(*lead, shards * k), at_xk, axis=-1)


def warp(logits_xV: jax.Array, sampler: Sampler, params: SamplingParams) -> jax.Array:
    """Temperature-scaled float32 logits with tokens outside top-k / top-p set to -inf (ties at the cut kept)."""
    logits = logits_xV.astype(jnp.float32) / params.temperature
    if not sampler.filtered:
        return logits
    V = logits.shape[-1]
    sorted_desc = -jnp.sort(-logits, axis=-1)  # [..., V]
    k = jnp.where(params.top_k > 0, jnp.minimum(params.top_k, V), V)
    kth = jnp.take_along_axis(sorted_desc, jnp.broadcast_to(k - 1, logits.shape[:-1])[..., None], axis=-1)
    probs = jax.nn.softmax(jnp.where(sorted_desc >= kth, sorted_desc, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # keep the smallest prefix of the sorted tokens whose mass reaches top_p (the first token always stays)
    keep_sorted = (mass_before < params.top_p) & (sorted_desc >= kth)
    cut = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= cut, logits, -jnp.inf)


def sample(logits_BxV: jax.Array, keys_B: jax.Array, sampler: Sampler, params: SamplingParams) -> jax.Array:
    """One token id per leading index, int32 [B, ...]: argmax when greedy, else a draw from the warped logits with
    row b's key."""
    if sampler.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return categorical_rows(keys_B, warp(logits_BxV, sampler, params))
