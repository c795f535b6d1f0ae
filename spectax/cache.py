"""KVCache: a preallocated per-row key/value cache, written in place inside the decode loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from spectax.sharding import CACHE_AXES, axes


@struct.dataclass
class KVCache:
    """Keys and values of every committed token but the newest (the root), one array pair per layer.

    k, v: tuples of L arrays [B, G, S, hd] (G = kv heads; head-major so attention reads contiguous slot ranges).
    lengths: int32 [B] committed slots per row; slots at or
    beyond a row's length are dead (never read, free to hold anything). Layers are separate leaves so a layer's
    update never copies the others and XLA updates each buffer in place inside the loop.
    """

    k: tuple[jax.Array, ...] = axes(*CACHE_AXES)
    v: tuple[jax.Array, ...] = axes(*CACHE_AXES)
    lengths: jax.Array = axes("batch")

    @classmethod
    def create(cls, config, batch: int, size: int, dtype, fill: float = 0.0) -> "KVCache":
        """An empty cache of `size` slots per row for a model of `config` (a ModelConfig: num_layers, num_kv_heads,
        head_dim); `fill` (e.g. NaN in tests) is what dead slots hold."""
        shape = (batch, config.num_kv_heads, size, config.head_dim)
        layer = lambda: jnp.full(shape, fill, dtype)
        return cls(k=tuple(layer() for _ in range(config.num_layers)),
                   v=tuple(layer() for _ in range(config.num_layers)),
                   lengths=jnp.zeros((batch,), jnp.int32))

    @property
    def size(self) -> int:
        return self.k[0].shape[2]

    @property
    def layers(self) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """Per-layer (k, v) pairs, the form `Model.forward` takes and returns."""
        return tuple(zip(self.k, self.v))

    def with_layers(self, layers) -> "KVCache":
        return self.replace(k=tuple(k for k, _ in layers), v=tuple(v for _, v in layers))

    def advance(self, n_B: jax.Array) -> "KVCache":
        """Commits the first n_B[b] written-but-uncommitted slots of each row."""
        return self.replace(lengths=self.lengths + n_B.astype(jnp.int32))


def write_block(cache_BGShd: jax.Array, new_BTGhd: jax.Array, lengths_B: jax.Array) -> jax.Array:
    """Writes T new entries per row at slots lengths[b] .. lengths[b] + T - 1 (uncommitted until `advance`).

    One scatter for the whole batch, in place inside the loop; slots past the end are dropped (callers keep
    lengths + T <= S for live rows).
    """
    B, T = new_BTGhd.shape[:2]
    rows_BT = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
    slots_BT = lengths_B[:, None] + jnp.arange(T)[None, :]
    return cache_BGShd.at[rows_BT, :, slots_BT].set(new_BTGhd.astype(cache_BGShd.dtype), mode="drop")


def commit_path(cache: KVCache, path_BD: jax.Array, n_accepted_B: jax.Array, active_B: jax.Array,
                in_place: bool = False) -> KVCache:
    """Commits one step: the root (step slot 0) plus the accepted path, compacted into contiguous slots.

    Step token j was written at slot lengths + j. path_BD holds the accepted nodes' step indices by depth (-1 past
    n_accepted); node d moves to slot lengths + 1 + d. Inactive rows (finished) commit nothing. in_place (static):
    the tree is a chain, so every accepted path is already where it belongs and nothing moves.
    """
    B, D = path_BD.shape
    k, v = cache.k, cache.v
    if D and not in_place:
        rows_BD = jnp.broadcast_to(jnp.arange(B)[:, None], (B, D))
        dst_BD = cache.lengths[:, None] + 1 + jnp.arange(D)[None, :]
        src_BD = jnp.where(path_BD >= 0, cache.lengths[:, None] + path_BD, dst_BD)
        move = lambda a: a.at[rows_BD, :, dst_BD].set(a[rows_BD, :, src_BD], mode="drop")  # [B, D, K, hd] moves
        k, v = tuple(move(a) for a in k), tuple(move(a) for a in v)
    n = jnp.where(active_B, 1 + n_accepted_B, 0)
    return cache.replace(k=k, v=v).advance(n)
