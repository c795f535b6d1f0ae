"""The attention step every architecture shares: write the new K/V, then attend over cache prefix + new tokens."""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.tree_attention import tree_attention
from spectax.cache import write_block


def cached_attention(q_BTHD, k_BTKD, v_BTKD, layer_kv, lengths_B, mask_TT, impl, write: bool = True):
    """Returns (out [B, T, H, D], updated (k, v) layer cache or None).

    write=False reads the cache without writing it and returns the new tokens' (k [B, T, K, D], v) instead, for the
    caller to write (loop.step does, after a lax.switch: a branch that only reads the cache does not copy it).

    layer_kv: None (no cache: attend over the new tokens only) or (k_BKSD, v_BKSD); the new K/V are written at each
    row's slots lengths[b] .. lengths[b] + T - 1, uncommitted until the caller advances the lengths. The write comes
    first so that the attention only ever reads the buffer XLA then hands on: no copy of the cache per step.
    """
    if layer_kv is None:
        zeros = jnp.zeros((q_BTHD.shape[0],), jnp.int32)
        return tree_attention(q_BTHD, k_BTKD, v_BTKD, None, None, zeros, mask_TT, impl=impl), None
    if not write:
        out = tree_attention(q_BTHD, k_BTKD, v_BTKD, layer_kv[0], layer_kv[1], lengths_B, mask_TT, impl=impl)
        return out, (k_BTKD, v_BTKD)
    k_BKSD = write_block(layer_kv[0], k_BTKD, lengths_B)
    v_BKSD = write_block(layer_kv[1], v_BTKD, lengths_B)
    out = tree_attention(q_BTHD, k_BTKD, v_BTKD, k_BKSD, v_BKSD, lengths_B, mask_TT, impl=impl)
    return out, (k_BKSD, v_BKSD)
