"""Skinny products y = x @ w for a few rows (decode: T <= 16 per row group), on the CPU through the native kernel,
elsewhere (and for more rows, other dtypes, or without a compiler) through XLA.

`matmul(x, w, transposed=False)`: x [..., K] fp32, w [K, N] (or [N, K] with transposed=True, the tied LM head's
table as stored) -> [..., N]. The choice follows the platform being lowered for (lax.platform_dependent): a program
exported for TPU or GPU never holds the CPU call. Under vmap the batched rows of x join the kernel's rows
(vmap_method="expand_dims"); a vmapped (batched) weight is refused at run time: vmap such a program with
products="xla". `reference` is the pure-jnp product of the same signature.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from cpu_kernels.build import library

MAX_ROWS = 16    # products over more rows are compute-bound: XLA's GEMM is the better kernel there


def reference(x, w, transposed: bool = False):
    """The pure-jnp product: x [..., K] @ w [K, N] (w [N, K] with transposed) at full fp32 precision."""
    return jnp.einsum("...k,nk->...n" if transposed else "...k,kn->...n", x, w, precision=lax.Precision.HIGHEST)


def _xla(x, w, transposed: bool):
    dims = (((x.ndim - 1,), (1 if transposed else 0,)), ((), ()))
    return lax.dot_general(x, w, dims)


def kernel(x, w, transposed: bool = False):
    """The native kernel (CPU only): every weight read once for all rows of x. RuntimeError when the library is
    not available (`matmul` falls back to XLA instead)."""
    if library() is None:
        raise RuntimeError("the spectax CPU kernels are not available (see the warning); use matmul()")
    N = w.shape[0] if transposed else w.shape[1]
    call = jax.ffi.ffi_call("spectax_skinny_nt" if transposed else "spectax_skinny_nn",
                            jax.ShapeDtypeStruct(x.shape[:-1] + (N,), x.dtype), vmap_method="expand_dims")
    return call(x, w)


def covers(x, w) -> bool:
    """Whether the kernel takes this product: fp32 operands, a 2-D weight, at most MAX_ROWS rows in all."""
    return (x.dtype == jnp.float32 and w.dtype == jnp.float32 and w.ndim == 2
            and math.prod(x.shape[:-1]) <= MAX_ROWS and library() is not None)


def matmul(x, w, transposed: bool = False):
    """x @ w (see the module docstring): the CPU kernel where it covers the product and the program runs on the CPU,
    XLA otherwise."""
    if not covers(x, w):
        return _xla(x, w, transposed)
    return lax.platform_dependent(x, w, cpu=lambda x, w: kernel(x, w, transposed),
                                  default=lambda x, w: _xla(x, w, transposed))
