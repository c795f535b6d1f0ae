"""The dense attention oracle every tree-attention implementation is tested against."""

import numpy as np


def dense_attention(q, k_new, v_new, k_cache, v_cache, lengths, mask):
    """Naive oracle: concatenate each row's live prefix with the new tokens, one masked softmax.

    Cache in [B, S, K, D] (slot-major) here: an independent layout from the kernel's [B, K, S, D]."""
    B, T, H, D = q.shape
    K = k_new.shape[2]
    out = np.zeros((B, T, H, D), np.float64)
    for b in range(B):
        L = int(lengths[b])
        keys = np.concatenate([k_cache[b, :L], k_new[b]], 0).astype(np.float64)   # [L + T, K, D]
        vals = np.concatenate([v_cache[b, :L], v_new[b]], 0).astype(np.float64)
        m = mask if mask.ndim == 2 else mask[b]
        visible = np.concatenate([np.ones((T, L), bool), m], 1)                   # [T, L + T]
        for h in range(H):
            kh = h // (H // K)
            s = q[b, :, h].astype(np.float64) @ keys[:, kh].T / np.sqrt(D)
            s = np.where(visible, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[b, :, h] = p @ vals[:, kh]
    return out


def random_tree_mask(rng, T):
    parents = [-1] + [int(rng.integers(0, i)) for i in range(1, T)]
    m = np.eye(T, dtype=bool)
    for i in range(1, T):
        m[i] |= m[parents[i]]
    return m
