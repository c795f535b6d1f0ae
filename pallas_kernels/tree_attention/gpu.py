"""Tree attention as a Pallas GPU kernel (Triton lowering): split-G flash decoding, partial results merged by
log-sum-exp.

Grid (row b, kv head k, query tile i, split s). Split s owns one contiguous chunk of the cache slots; it loops over
the blocks of its chunk that lie below the row's length (a dynamic trip count: blocks past a row's end are neither
loaded nor computed) with masked loads, and writes its unnormalised accumulator plus its running max and
denominator. Split 0 also folds in the T new tokens under the tree mask, block_kv of them at a time. A jnp epilogue
merges the splits. At small batch the splits are what fills the GPU: B * G programs alone would leave most SMs idle
on a long cache. Every indexed read is a `plgpu.load`, so the tests can check each one's bounds (Pallas' generic
interpreter does not: it pads a read past a ref's end with NaN, which a masked-off score hides).

Why Triton and not Mosaic GPU: the Triton lowering runs on every NVIDIA GPU JAX supports (and on ROCm), its tiles
are plain [block_q, head_dim] register tiles that suit 16-64 folded query rows, and its kernels run under Pallas'
generic interpreter on CPU, which is how the tests check it. Mosaic GPU targets Hopper's warpgroup MMA with 64-row
tiles (too tall for a decode step's folded rows at T = 1) and has no CPU interpreter. No GPU was available to measure
the two (see README, GPU status): this choice is a reasoned default, not a measured one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.tree_attention.block_sizes import BlockSizes, check_gpu_block
from pallas_kernels.tree_attention.folding import padded_kernel_inputs, unfold_out

_NEG = -1e30
_TARGET_PROGRAMS = 256  # about 2 programs per SM on an H100 (132 SMs): enough to hide a split's latency


def _next_pow2(x: int, floor: int = 16) -> int:
    return max(floor, 1 << (max(x, 1) - 1).bit_length())


def _fold(carry, s_QN, v_ND, valid_QN):
    """Online softmax: folds scores [Q, N] and values [N, hd] into (acc [Q, hd], m [Q], l [Q])."""
    acc, m_prev, l_prev = carry
    s = jnp.where(valid_QN, s_QN, _NEG)
    m_new = jnp.maximum(m_prev, s.max(axis=-1))
    p = jnp.where(valid_QN, jnp.exp(s - m_new[:, None]), 0.0)
    alpha = jnp.exp(m_prev - m_new)
    pv = plgpu.dot(p.astype(v_ND.dtype), v_ND)
    return alpha[:, None] * acc + pv.astype(jnp.float32), m_new, alpha * l_prev + p.sum(axis=-1)


def _kernel(lengths_ref, q_ref, k_ref, v_ref, k_new_ref, v_new_ref, mask_ref, acc_ref, m_ref, l_ref, *,
            block_kv: int, chunk: int, scale: float):
    s_idx = pl.program_id(3)
    length = lengths_ref[()]
    q = q_ref[...]                                                       # [Q, hd]
    Q, hd = q.shape
    start = s_idx * chunk
    end = jnp.minimum(start + chunk, length)
    carry = (jnp.zeros((Q, hd), jnp.float32), jnp.full((Q,), _NEG, jnp.float32), jnp.zeros((Q,), jnp.float32))

    def block(n, carry):
        slots = start + n * block_kv + jnp.arange(block_kv)
        live = slots < end
        k = plgpu.load(k_ref.at[pl.ds(start + n * block_kv, block_kv), :], mask=live[:, None], other=0.0)
        v = plgpu.load(v_ref.at[pl.ds(start + n * block_kv, block_kv), :], mask=live[:, None], other=0.0)
        s = plgpu.dot(q, k, trans_b=True).astype(jnp.float32) * scale
        return _fold(carry, s, v, jnp.broadcast_to(live[None, :], s.shape))

    carry = lax.fori_loop(0, jnp.maximum(pl.cdiv(end - start, block_kv), 0), block, carry)

    def new_tokens(carry):
        width = min(block_kv, k_new_ref.shape[0])                       # prefill chunks bring up to 256 tokens

        def new_block(n, carry):
            cols = pl.ds(n * width, width)
            s = plgpu.dot(q, plgpu.load(k_new_ref.at[cols, :]), trans_b=True).astype(jnp.float32) * scale
            return _fold(carry, s, plgpu.load(v_new_ref.at[cols, :]), plgpu.load(mask_ref.at[:, cols]) != 0)
        return lax.fori_loop(0, k_new_ref.shape[0] // width, new_block, carry)

    acc, m, l = lax.cond(s_idx == 0, new_tokens, lambda c: c, carry)
    acc_ref[...] = acc
    m_ref[...] = m
    l_ref[...] = l


def tree_attention_gpu(q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask_TT, *,
                       block_sizes: BlockSizes | None = None, interpret: bool = False):
    """The Triton kernel behind `tree_attention_reference`'s signature and contract (k_cache not None).

    interpret=True runs it under Pallas' interpreter on any backend."""
    B, T, H, hd = q_BTHhd.shape
    G, S = k_cache_BGShd.shape[1], k_cache_BGShd.shape[2]
    n_rep = H // G
    Q = n_rep * T
    bs = block_sizes or BlockSizes.default("gpu", T, hd)
    block_q = min(bs.block_q, _next_pow2(Q))
    block_kv = min(bs.block_kv, _next_pow2(S))
    Tp = _next_pow2(T)
    for name, size in (("block_q", block_q), ("block_kv", block_kv), ("head_dim", hd)):
        check_gpu_block(name, size)
    Qp = -(-Q // block_q) * block_q
    tiles = Qp // block_q
    splits = bs.num_splits or max(1, min(pl.cdiv(S, block_kv), _TARGET_PROGRAMS // (B * G * tiles)))
    chunk = pl.cdiv(pl.cdiv(S, splits), block_kv) * block_kv            # slots per split, whole blocks

    q_BGQhd, k_new_BGThd, v_new_BGThd, mask_BQT = padded_kernel_inputs(q_BTHhd, k_new_BTGhd, v_new_BTGhd, mask_TT,
                                                                       Qp, Tp)

    row = lambda b, k, i, s: (b, k, 0, 0)
    kernel = functools.partial(_kernel, block_kv=block_kv, chunk=chunk, scale=hd ** -0.5)
    acc, m, l = pl.pallas_call(
        kernel,
        grid=(B, G, tiles, splits),
        in_specs=[
            pl.BlockSpec((None,), lambda b, k, i, s: (b,)),                # the row's length, a scalar
            pl.BlockSpec((None, None, block_q, hd), lambda b, k, i, s: (b, k, i, 0)),
            pl.BlockSpec((None, None, S, hd), row),
            pl.BlockSpec((None, None, S, hd), row),
            pl.BlockSpec((None, None, Tp, hd), row),
            pl.BlockSpec((None, None, Tp, hd), row),
            pl.BlockSpec((None, block_q, Tp), lambda b, k, i, s: (b, i, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, block_q, hd), lambda b, k, i, s: (b, k, s, i, 0)),
            pl.BlockSpec((None, None, None, block_q), lambda b, k, i, s: (b, k, s, i)),
            pl.BlockSpec((None, None, None, block_q), lambda b, k, i, s: (b, k, s, i)),
        ],
        out_shape=[jax.ShapeDtypeStruct((B, G, splits, Qp, hd), jnp.float32),
                   jax.ShapeDtypeStruct((B, G, splits, Qp), jnp.float32),
                   jax.ShapeDtypeStruct((B, G, splits, Qp), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
    )(jnp.asarray(lengths_B, jnp.int32), q_BGQhd, k_cache_BGShd, v_cache_BGShd, k_new_BGThd, v_new_BGThd, mask_BQT)

    # log-sum-exp merge of the splits: split 0 always holds the new tokens, so every row's total weight is > 0
    m_max = m.max(axis=2, keepdims=True)                                 # [B, G, 1, Qp]
    w = jnp.exp(m - m_max)
    out_BGQhd = (w[..., None] * acc).sum(axis=2) / (w * l).sum(axis=2)[..., None]
    return unfold_out(out_BGQhd[:, :, :Q].astype(q_BTHhd.dtype), T)
