"""Pure-jnp tree attention: the oracle for the Pallas kernels and the XLA path on every backend.

Query token t of row b sees
  * every cache slot s < lengths[b] (the row's committed prefix), and
  * new token j iff mask[t, j] (causal for prefill, the ancestor mask for a draft tree).
Cache slots at or beyond lengths[b] are never read into the result, whatever they hold (NaN included).

The caches are threaded through the block loops and handed back (`tree_attention_threaded`): a while loop that only
closes over an array XLA later updates in place makes XLA copy the whole array first, every step. Writing the step's
new K/V into the arrays the loops hand back keeps the cache in place (0 copies of the cache per step, where closing
over it cost 2 full copies per layer per step).

The prefix is read in blocks of `block_sizes.block_kv` slots by an online-softmax loop whose trip count is
about max(lengths) / block_size: the cost follows the used length, not the allocated cache size. Slots live for
every row go unmasked (big blocks, then `edge_block_kv` ones); only the blocks past the shortest row's end pay
for masking.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from pallas_kernels.tree_attention.block_sizes import BlockSizes
from pallas_kernels.tree_attention.folding import fold_mask, fold_queries, unfold_out

NEG = -1e30  # finite "minus infinity": a fully masked block leaves the running max unchanged


def scores(q_BGQhd, k_BGShd, scale):
    """Scaled scores [B, G, Q, S] in float32 (Q = query heads per kv head x query tokens) of folded queries against
    a block of keys. The keys are the dot's left operand, contracted on their minor dim: XLA:CPU streams the block
    as stored."""
    s_BGSQ = lax.dot_general(k_BGShd, q_BGQhd, (((3,), (3,)), ((0, 1), (0, 1))), preferred_element_type=jnp.float32)
    return jnp.swapaxes(s_BGSQ, 2, 3) * scale


def online_update(carry, s_BGQS, v_BGShd, valid=None):
    """Folds one block of scores into the running (max, denominator, accumulator); `valid` masks slots."""
    m_BGQ, l_BGQ, acc_BGQhd = carry
    s = s_BGQS if valid is None else jnp.where(valid, s_BGQS, NEG)
    m_new = jnp.maximum(m_BGQ, s.max(axis=-1))
    p = jnp.exp(s - m_new[..., None])
    if valid is not None:
        p = jnp.where(valid, p, 0.0)
    alpha = jnp.exp(m_BGQ - m_new)
    l_new = alpha * l_BGQ + p.sum(axis=-1)
    pv = jnp.einsum("bkms,bksd->bkmd", p.astype(v_BGShd.dtype), v_BGShd, preferred_element_type=jnp.float32)
    return m_new, l_new, alpha[..., None] * acc_BGQhd + pv


def tree_attention_reference(q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask_TT, *,
                             block_sizes: BlockSizes | None = None, interpret=False):
    """Attention of T new tokens over each row's cache prefix plus the new tokens: `tree_attention_threaded`'s
    output without the caches. The kernels' signature; `interpret` is accepted for that and must be False."""
    if interpret:
        raise ValueError("the jnp reference has nothing to interpret: interpret must be False")
    return tree_attention_threaded(q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask_TT,
                                   block_sizes=block_sizes)[0]


def tree_attention_threaded(q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask_TT, *,
                            block_sizes: BlockSizes | None = None):
    """Attention of T new tokens over each row's cache prefix plus the new tokens; returns (out, k_cache, v_cache).

    q_BTHhd: [B, T, H, hd] queries (RoPE applied). k_new_BTGhd / v_new_BTGhd: [B, T, G, hd] the new tokens' keys and
    values (G = kv heads, H % G == 0: grouped-query attention). k_cache_BGShd / v_cache_BGShd: [B, G, S, hd]
    (head-major:
    each head's slots are contiguous, so the score and value products need no transposes) or None (no prefix, e.g. a
    cache-free full forward). lengths_B: int32 [B] committed prefix length per row.
    mask_TT: bool [T, T] or [B, T, T], mask[t, j] = query t sees new token j (must include j == t).
    block_sizes: block_kv / edge_block_kv are used here (None: `BlockSizes.default("cpu", ...)`).
    Returns (out [B, T, H, hd] in q's dtype, softmax in float32; k_cache, v_cache: the caches' values as the block
    loops carried them, unchanged, to be written next instead of the arguments).
    """
    B, T, H, hd = q_BTHhd.shape
    G = k_new_BTGhd.shape[2]
    n_rep = H // G
    Q = n_rep * T
    scale = hd ** -0.5
    block_sizes = block_sizes or BlockSizes.default("cpu", T, hd)
    q_BGQhd = fold_queries(q_BTHhd, G)  # [B, G, Q, hd], m = g * T + t

    carry = (jnp.full((B, G, Q), NEG, jnp.float32), jnp.zeros((B, G, Q), jnp.float32),
             jnp.zeros((B, G, Q, hd), jnp.float32))

    if k_cache_BGShd is not None:
        S = k_cache_BGShd.shape[2]
        bs, es = min(block_sizes.block_kv, S), min(block_sizes.edge_block_kv, S)
        shortest, longest = jnp.min(lengths_B), jnp.max(lengths_B)

        def blocks(carry, first, count, size, masked):
            """Folds `count` blocks of `size` slots starting at slot `first`; `masked` for blocks past a row's end.
            carry: (softmax state, k_cache, v_cache)."""
            def body(i, carry):
                state, k_cache, v_cache = carry
                start = first + i * size
                start_c = jnp.minimum(start, S - size)  # dynamic_slice would clamp silently: mask the overlap
                kb = lax.dynamic_slice_in_dim(k_cache, start_c, size, axis=2)  # [B, G, size, hd]
                vb = lax.dynamic_slice_in_dim(v_cache, start_c, size, axis=2)
                if not masked:
                    state = online_update(state, scores(q_BGQhd, kb, scale), vb)
                else:
                    slots = start_c + jnp.arange(size)
                    valid_BS = (slots[None, :] >= start) & (slots[None, :] < lengths_B[:, None])
                    vb = jnp.where(valid_BS[:, None, :, None], vb, 0)  # 0 * NaN would poison the sum
                    state = online_update(state, scores(q_BGQhd, kb, scale), vb, valid_BS[:, None, None, :])
                # the barrier keeps the caches real loop carries (JAX would hoist an unchanged carry into a
                # closed-over constant, and XLA copies those before the in-place write that follows)
                return lax.optimization_barrier((state, k_cache, v_cache))
            return lax.fori_loop(0, count, body, carry)

        # live for every row: big unmasked blocks, then small unmasked ones, then small masked ones to the end
        big = shortest // bs
        small = (shortest - big * bs) // es
        edge_from = big * bs + small * es
        carry = (carry, k_cache_BGShd, v_cache_BGShd)
        carry = blocks(carry, 0, big, bs, masked=False)
        carry = blocks(carry, big * bs, small, es, masked=False)
        carry, k_cache_BGShd, v_cache_BGShd = blocks(carry, edge_from, (longest - edge_from + es - 1) // es, es,
                                                   masked=True)

    mask_B1QT = fold_mask(mask_TT, B, n_rep)[:, None]
    k_new_BGThd, v_new_BGThd = k_new_BTGhd.transpose(0, 2, 1, 3), v_new_BTGhd.transpose(0, 2, 1, 3)
    m, l, acc = online_update(carry, scores(q_BGQhd, k_new_BGThd, scale), v_new_BGThd, mask_B1QT)
    out = unfold_out(acc / l[..., None], T).astype(q_BTHhd.dtype)
    return out, k_cache_BGShd, v_cache_BGShd
