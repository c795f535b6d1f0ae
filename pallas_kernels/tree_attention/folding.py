"""The grouped-query fold every implementation shares: the n_rep query heads of a kv head and the T new tokens become
the Q = n_rep * T rows of one matrix (row m = g * T + t), so one kv head's K/V serve all its query heads in one
product."""

from __future__ import annotations

import jax.numpy as jnp


def fold_queries(q_BTHhd, num_kv_heads: int):
    """[B, T, H, hd] -> [B, G, Q, hd] with Q = (H / G) * T, row m = g * T + t; ValueError unless G divides H."""
    B, T, H, hd = q_BTHhd.shape
    if H % num_kv_heads:
        raise ValueError(f"query heads {H} not a multiple of kv heads {num_kv_heads}")
    n_rep = H // num_kv_heads
    q_BGrThd = q_BTHhd.reshape(B, T, num_kv_heads, n_rep, hd).transpose(0, 2, 3, 1, 4)
    return q_BGrThd.reshape(B, num_kv_heads, n_rep * T, hd)


def fold_mask(mask_TT, batch: int, group: int):
    """bool [T, T] or [B, T, T] -> [B, Q, T]: row m = g * T + t is query token t's row."""
    mask = jnp.asarray(mask_TT, bool)
    mask_BTT = jnp.broadcast_to(mask, (batch,) + mask.shape[-2:]) if mask.ndim == 2 else mask
    return jnp.tile(mask_BTT, (1, group, 1))


def padded_kernel_inputs(q_BTHhd, k_new_BTGhd, v_new_BTGhd, mask_TT, rows: int, new: int):
    """The kernels' operands: q folded to [B, G, rows, hd], new K/V head-major [B, G, new, hd] and the mask folded to
    int32 [B, rows, new], zero-padded from Q = n_rep * T rows and T new tokens. Padded rows see new token 0 only (a
    finite, discarded result); padded new tokens are seen by no row."""
    B, T, H, _ = q_BTHhd.shape
    G = k_new_BTGhd.shape[2]
    Q = (H // G) * T
    q_BGQhd = jnp.pad(fold_queries(q_BTHhd, G), ((0, 0), (0, 0), (0, rows - Q), (0, 0)))
    mask_BQT = jnp.pad(fold_mask(mask_TT, B, H // G), ((0, 0), (0, rows - Q), (0, new - T)))
    mask_BQT = mask_BQT.at[:, Q:, 0].set(True).astype(jnp.int32)
    pad_new = ((0, 0), (0, 0), (0, new - T), (0, 0))
    k_new_BGThd = jnp.pad(k_new_BTGhd.transpose(0, 2, 1, 3), pad_new)
    v_new_BGThd = jnp.pad(v_new_BTGhd.transpose(0, 2, 1, 3), pad_new)
    return q_BGQhd, k_new_BGThd, v_new_BGThd, mask_BQT


def unfold_out(out_BGQhd, num_new: int):
    """[B, G, Q, hd] -> [B, T, H, hd], the inverse of `fold_queries`."""
    B, G, Q, hd = out_BGQhd.shape
    n_rep = Q // num_new
    return out_BGQhd.reshape(B, G, n_rep, num_new, hd).transpose(0, 3, 1, 2, 4).reshape(B, num_new, G * n_rep, hd)
