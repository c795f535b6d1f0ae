"""The attention step every architecture shares: attend over cache prefix + new tokens, then write the new K/V."""

from __future__ import annotations

import functools

import jax.numpy as jnp

from pallas_kernels.tree_attention import AttnImpl, tree_attention_threaded
from spectax.cache import write_block


def cached_attention(q_BTHhd, k_BTGhd, v_BTGhd, layer_kv, lengths_B, mask_TT, impl: AttnImpl, write: bool = True):
    """Returns (out [B, T, H, D], updated (k, v) layer cache or None).

    impl: which tree-attention implementation (kernel, interpret mode, block sizes) reads the cache.
    layer_kv: None (no cache: attend over the new tokens only) or (k_BGShd, v_BGShd). The attention reads each row's
    committed prefix (slots < lengths[b]) and the new tokens' K/V directly; the new K/V are then written at slots
    lengths[b] .. lengths[b] + T - 1, uncommitted until the caller advances the lengths. The write goes into the
    caches as the attention's loops hand them back, which keeps the cache in place (no copy per step).

    write=False (loop.step's lax.switch branches: a branch that wrote the cache would make XLA copy it) returns,
    instead of the written cache, (k_BGShd, v_BGShd, k_new [B, T, K, D], v_new) for the caller to write.
    """
    attend = functools.partial(tree_attention_threaded, impl=impl.impl, interpret=impl.interpret,
                               block_sizes=impl.block_sizes)
    if layer_kv is None:
        zeros = jnp.zeros((q_BTHhd.shape[0],), jnp.int32)
        return attend(q_BTHhd, k_BTGhd, v_BTGhd, None, None, zeros, mask_TT)[0], None
    if impl.boundary is not None and impl.impl != "xla":   # a kernel call XLA cannot partition: shard it by hand
        attend = functools.partial(impl.boundary, attend)
    out, k_BGShd, v_BGShd = attend(q_BTHhd, k_BTGhd, v_BTGhd, layer_kv[0], layer_kv[1], lengths_B, mask_TT)
    if not write:
        return out, (k_BGShd, v_BGShd, k_BTGhd, v_BTGhd)
    return out, (write_block(k_BGShd, k_BTGhd, lengths_B), write_block(v_BGShd, v_BTGhd, lengths_B))
