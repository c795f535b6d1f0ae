"""The weight products of the models: XLA's dot_general, or the native CPU kernel for decode shapes
(`cpu_kernels.matmul`), as the AttnImpl's `products` field chooses."""

from __future__ import annotations

from jax import lax

from cpu_kernels.matmul import covers, matmul
from pallas_kernels.tree_attention import AttnImpl


def skinny_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """flax's dot_general for a Dense / DenseGeneral: x [..., K] contracted with a kernel [K, *out] on the CPU kernel
    when `cpu_kernels.matmul` covers it (a few rows, fp32), lax.dot_general for anything else."""
    (lhs_c, rhs_c), batch = dimension_numbers
    w = rhs.reshape(rhs.shape[0], -1)
    if batch != ((), ()) or tuple(lhs_c) != (lhs.ndim - 1,) or tuple(rhs_c) != (0,) or not covers(lhs, w):
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
    return matmul(lhs, w).reshape(lhs.shape[:-1] + rhs.shape[1:])


def dot_general(impl: AttnImpl):
    """The dot_general the models' Dense layers use under `impl`."""
    return skinny_dot_general if impl.products == "auto" else lax.dot_general


def head_product(impl: AttnImpl, embedding_VE, hidden_BTE):
    """hidden [B, T, E] x embedding [V, E] -> [B, T, V] on the CPU kernel (table read as stored), or None where
    `impl` or the shapes leave it to XLA."""
    if impl.products != "auto" or not covers(hidden_BTE, embedding_VE):
        return None
    return matmul(hidden_BTE, embedding_VE, transposed=True)
