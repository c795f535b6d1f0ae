"""Tree attention: T new query tokens over a per-row cache prefix plus the new tokens under a [T, T] mask.

One entry point, `tree_attention(..., impl=...)`:
  * "xla": the pure-jnp reference (reference.py), the path on CPU and the oracle of the kernels;
  * "pallas_tpu": the Mosaic TPU kernel (tpu.py);
  * "pallas_gpu": the Triton GPU kernel (gpu.py);
  * "auto": Pallas on TPU and GPU, XLA elsewhere.
`interpret=True` runs a Pallas kernel under Pallas' interpreter on any backend (CPU tests). The cache-free call
(k_cache None: a full causal forward, e.g. `Model.logits`) always takes the XLA path. Choices resolve for JAX's
default backend, or inside `target_backend(...)` for the platform a program is lowered for (jax.export on a host of
another kind).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import jax

from pallas_kernels.tree_attention.block_sizes import BlockSizes
from pallas_kernels.tree_attention.gpu import tree_attention_gpu
from pallas_kernels.tree_attention.reference import tree_attention_reference
from pallas_kernels.tree_attention.reference import tree_attention_threaded as _xla_threaded
from pallas_kernels.tree_attention.tpu import tree_attention_tpu

IMPLS = ("xla", "pallas_tpu", "pallas_gpu")
_KERNELS = {"pallas_tpu": (tree_attention_tpu, "tpu"), "pallas_gpu": (tree_attention_gpu, "gpu")}
_TARGET = contextvars.ContextVar("tree_attention_target_backend", default=None)


@contextlib.contextmanager
def target_backend(backend: str):
    """Inside it, attention choices (`resolve_impl`, `AttnImpl.resolved`, and so a `spectax.Decoder` built or traced
    inside) resolve for `backend` ("cpu", "gpu" or "tpu") instead of JAX's default backend: to build a program for
    another platform and lower it with `jax.export(..., platforms=[...])`, e.g. a TPU decode on a CPU host."""
    if backend not in ("cpu", "gpu", "tpu"):
        raise ValueError(f"backend must be 'cpu', 'gpu' or 'tpu', got {backend!r}")
    token = _TARGET.set(backend)
    try:
        yield
    finally:
        _TARGET.reset(token)


def resolve_impl(impl: str, interpret=False, backend: str | None = None) -> str:
    """The implementation `impl` names on `backend` (default: `target_backend`'s, else JAX's default backend), or a
    ValueError before anything is traced: an unknown name, a kernel for another backend without `interpret`, or
    `interpret` with a path that has no kernel."""
    backend = backend or _TARGET.get() or jax.default_backend()
    if impl == "auto":
        impl = {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(backend, "xla")
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; available: 'auto', {', '.join(map(repr, IMPLS))}")
    if impl == "xla":
        if interpret:
            raise ValueError("interpret applies to the Pallas kernels (impl 'pallas_tpu' or 'pallas_gpu'), "
                             "not to 'xla'")
        return impl
    needs = _KERNELS[impl][1]
    if backend != needs and not interpret:
        raise ValueError(f"attention impl {impl!r} needs a {needs.upper()} but JAX's backend is {backend!r}: use "
                         f"'xla' or 'auto', or interpret=True to run the kernel under Pallas' interpreter")
    return impl


@dataclasses.dataclass(frozen=True)
class AttnImpl:
    """A hashable attention choice for the decode loop (a static argument): which implementation, whether it
    runs interpreted, which block sizes (None: the backend's defaults for the call's shapes), and for a kernel in a
    sharded program the boundary it runs inside: a hashable callable boundary(kernel, *operands) that calls the
    kernel under a shard_map (spectax's `Layout.shard_attention`, which `decode(mesh=...)` sets); None calls it
    directly. `products` chooses the weight products the same way: "auto" takes the native CPU kernel
    (`cpu_kernels.matmul`) for decode-shaped products when the program runs on the CPU, "xla" always XLA's.
    `spectax.decode(..., attn_impl=AttnImpl("pallas_tpu", interpret=True))` runs the TPU kernel on CPU."""

    impl: str = "xla"
    interpret: bool | object = False   # bool, or a pltpu.InterpretParams for the TPU kernel
    block_sizes: BlockSizes | None = None
    boundary: object = None   # None, or boundary(kernel, *operands): the kernel runs per shard inside it
    products: str = "xla"     # the weight products: "xla", or "auto" (cpu_kernels.matmul: native on the CPU)

    def __post_init__(self):
        if self.block_sizes is not None and not isinstance(self.block_sizes, BlockSizes):
            raise ValueError(f"block_sizes must be None or a BlockSizes, got {self.block_sizes!r}")
        if self.products not in ("xla", "auto"):
            raise ValueError(f"products must be 'xla' or 'auto', got {self.products!r}")

    def resolved(self) -> "AttnImpl":
        """This choice with "auto" replaced by JAX's backend's implementation; ValueError as `resolve_impl`."""
        return dataclasses.replace(self, impl=resolve_impl(self.impl, self.interpret))


def tree_attention(q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask_TT, *, impl="auto",
                   interpret=False, block_sizes: BlockSizes | None = None):
    """Attention of T new tokens over each row's cache prefix plus the new tokens; the implementation named by
    `impl` (see the module docstring; the contract is `reference.tree_attention_threaded`'s)."""
    return tree_attention_threaded(q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask_TT,
                                   impl=impl, interpret=interpret, block_sizes=block_sizes)[0]


def tree_attention_threaded(q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask_TT, *,
                            impl="auto", interpret=False, block_sizes: BlockSizes | None = None):
    """`tree_attention` that also returns the caches it read, (out, k_cache, v_cache): a caller that writes the step's
    K/V into the returned caches, not its arguments, keeps the cache in place (see reference.py)."""
    impl = resolve_impl(impl, interpret)
    if impl == "xla" or k_cache_BGShd is None:
        return _xla_threaded(q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask_TT,
                             block_sizes=block_sizes)
    kernel = _KERNELS[impl][0]
    out = kernel(q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask_TT,
                 block_sizes=block_sizes, interpret=interpret)
    return out, k_cache_BGShd, v_cache_BGShd


__all__ = ["tree_attention", "tree_attention_threaded", "tree_attention_reference", "tree_attention_tpu",
           "tree_attention_gpu", "resolve_impl", "target_backend", "AttnImpl", "BlockSizes", "IMPLS"]
