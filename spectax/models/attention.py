"""The attention step every architecture shares: attend over cache prefix + new tokens, then write the new K/V."""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.tree_attention import tree_attention
from spectax.cache import write_block


def cached_attention(q_BTHD, k_BTKD, v_BTKD, layer_kv, lengths_B, mask_TT, impl):
    """Returns (out [B, T, H, D], updated (k, v) layer cache or None).

    layer_kv: None (no cache: attend over the new tokens only) or (k_BSKD, v_BSKD); the new K/V are written at each
    row's slots lengths[b] .. lengths[b] + T - 1, uncommitted until the caller advances the lengths.
    """
    if layer_kv is None:
        zeros = jnp.zeros((q_BTHD.shape[0],), jnp.int32)
        return tree_attention(q_BTHD, k_BTKD, v_BTKD, None, None, zeros, mask_TT, impl=impl), None
    k_BSKD, v_BSKD = layer_kv
    out = tree_attention(q_BTHD, k_BTKD, v_BTKD, k_BSKD, v_BSKD, lengths_B, mask_TT, impl=impl)
    return out, (write_block(k_BSKD, k_BTKD, lengths_B), write_block(v_BSKD, v_BTKD, lengths_B))
