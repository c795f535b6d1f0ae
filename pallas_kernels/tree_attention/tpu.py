"""Tree attention as a Mosaic TPU kernel: flash decoding over each row's cache prefix, then the new tokens.

Grid (row b, kv head k, query tile i, cache block j), j innermost and sequential ("arbitrary"): the softmax state of
a query tile lives in VMEM scratch across the cache blocks. Per-row lengths come in by scalar prefetch (SMEM) and
drive two things:
  * the cache blocks' index maps clamp j to the row's last live block, so the pipeline sees an unchanged block index
    past a row's end and fetches nothing, and
  * `pl.when` skips the compute of those blocks.
On the last block the new tokens' K/V (all T of them, one VMEM tile) fold in under the tree mask, and the tile's
output is written. Query rows are the folded (query head of a kv head group, new token) pairs (folding.py), so the
MXU sees block_q full rows even at T = 1 with grouped-query attention.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.tree_attention.block_sizes import BlockSizes, check_tpu_block
from pallas_kernels.tree_attention.folding import padded_kernel_inputs, unfold_out

_NEG = -1e30
_LANES = 128


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def fetched_block(j, length, block_kv: int):
    """The cache block grid step j fetches for a row of `length` slots: j up to the row's last live block, then that
    block again, which the pipeline does not re-fetch (an unchanged block index), so nothing past the row's end is
    read from HBM. A row of length 0 parks on block 0 (fetched once, never computed)."""
    return jnp.minimum(j, jnp.maximum(pl.cdiv(length, block_kv) - 1, 0))


def _fold_block(s_QN, v_ND, valid_QN, m_sc, l_sc, acc_sc):
    """Folds one block of scores [Q, N] and values [N, hd] into the scratch softmax state (lane-broadcast m, l)."""
    s = jnp.where(valid_QN, s_QN, _NEG)
    m_prev = m_sc[...][:, :1]                                       # [Q, 1]
    m_new = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
    p = jnp.where(valid_QN, jnp.exp(s - m_new), 0.0)
    alpha = jnp.exp(m_prev - m_new)
    l_sc[...] = jnp.broadcast_to(alpha * l_sc[...][:, :1] + p.sum(axis=-1, keepdims=True), l_sc.shape)
    m_sc[...] = jnp.broadcast_to(m_new, m_sc.shape)
    pv = jax.lax.dot_general(p.astype(v_ND.dtype), v_ND, (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
    acc_sc[...] = alpha * acc_sc[...] + pv


def _scores(q_QD, k_ND, scale):
    return jax.lax.dot_general(q_QD, k_ND, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale


def _kernel(lengths_ref, q_ref, k_ref, v_ref, k_new_ref, v_new_ref, mask_ref, o_ref, m_sc, l_sc, acc_sc, *,
            block_kv: int, num_blocks: int, scale: float):
    b, j = pl.program_id(0), pl.program_id(3)
    length = lengths_ref[b]

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, _NEG, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when(j * block_kv < length)
    def _cache_block():
        slots_N1 = j * block_kv + jax.lax.broadcasted_iota(jnp.int32, (block_kv, 1), 0)
        v = jnp.where(slots_N1 < length, v_ref[...], 0)            # dead slots may hold NaN: 0 * NaN is NaN
        s = _scores(q_ref[...], k_ref[...], scale)
        slots_1N = j * block_kv + jax.lax.broadcasted_iota(jnp.int32, (1, block_kv), 1)
        _fold_block(s, v, slots_1N < length, m_sc, l_sc, acc_sc)

    @pl.when(j == num_blocks - 1)
    def _new_tokens_and_write():
        s = _scores(q_ref[...], k_new_ref[...], scale)
        _fold_block(s, v_new_ref[...], mask_ref[...] != 0, m_sc, l_sc, acc_sc)
        o_ref[...] = (acc_sc[...] / l_sc[...][:, :1]).astype(o_ref.dtype)


def tree_attention_tpu(q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask_TT, *,
                       block_sizes: BlockSizes | None = None, interpret=False):
    """The Mosaic TPU kernel behind `tree_attention_reference`'s signature and contract (k_cache not None).

    interpret: False (compile for the TPU), True (Pallas' TPU interpreter on any backend, out-of-bounds reads
    raise) or a `pltpu.InterpretParams` (e.g. with detect_races=True).
    """
    B, T, H, hd = q_BTHhd.shape
    G, S = k_cache_BGShd.shape[1], k_cache_BGShd.shape[2]
    n_rep = H // G
    Q = n_rep * T
    bs = block_sizes or BlockSizes.default("tpu", T, hd)
    sublanes = 8 * max(1, 4 // jnp.dtype(q_BTHhd.dtype).itemsize)
    block_q = min(bs.block_q, _round_up(Q, sublanes))
    Qp = _round_up(Q, block_q)
    block_kv = min(bs.block_kv, S)
    check_tpu_block("q", (block_q, hd), (Qp, hd), q_BTHhd.dtype)
    check_tpu_block("k_cache", (block_kv, hd), (S, hd), k_cache_BGShd.dtype)
    num_blocks = pl.cdiv(S, block_kv)

    Tp = _round_up(T, _LANES)  # the new tokens' scores [block_q, Tp] fill whole lanes; padded tokens are seen by none
    q_BGQhd, k_new_BGThd, v_new_BGThd, mask_BQT = padded_kernel_inputs(q_BTHhd, k_new_BTGhd, v_new_BTGhd, mask_TT,
                                                                       Qp, Tp)

    def cache_index(b, k, i, j, lengths_ref):
        return b, k, fetched_block(j, lengths_ref[b], block_kv), 0

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(B, G, Qp // block_q, num_blocks),
        in_specs=[
            pl.BlockSpec((None, None, block_q, hd), lambda b, k, i, j, L: (b, k, i, 0)),
            pl.BlockSpec((None, None, block_kv, hd), cache_index),
            pl.BlockSpec((None, None, block_kv, hd), cache_index),
            pl.BlockSpec((None, None, Tp, hd), lambda b, k, i, j, L: (b, k, 0, 0)),
            pl.BlockSpec((None, None, Tp, hd), lambda b, k, i, j, L: (b, k, 0, 0)),
            pl.BlockSpec((None, block_q, Tp), lambda b, k, i, j, L: (b, i, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, block_q, hd), lambda b, k, i, j, L: (b, k, i, 0)),
        scratch_shapes=[pltpu.VMEM((block_q, _LANES), jnp.float32), pltpu.VMEM((block_q, _LANES), jnp.float32),
                        pltpu.VMEM((block_q, hd), jnp.float32)],
    )
    if interpret is True:
        interpret = pltpu.InterpretParams(out_of_bounds_reads="raise")
    kernel = functools.partial(_kernel, block_kv=block_kv, num_blocks=num_blocks, scale=hd ** -0.5)
    out_BGQhd = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((B, G, Qp, hd), q_BTHhd.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
    )(jnp.asarray(lengths_B, jnp.int32), q_BGQhd, k_cache_BGShd, v_cache_BGShd, k_new_BGThd, v_new_BGThd, mask_BQT)
    return unfold_out(out_BGQhd[:, :, :Q], T)
