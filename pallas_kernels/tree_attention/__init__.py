"""Tree attention: T new query tokens over a per-row cache prefix plus the new tokens under a [T, T] mask.

`tree_attention(..., impl="xla")` is the pure-jnp reference (also the XLA path); Pallas kernels plug in behind the
same signature.
"""

from pallas_kernels.tree_attention.reference import tree_attention_reference

IMPLS = ("xla",)


def tree_attention(q_BTHD, k_new_BTKD, v_new_BTKD, k_cache_BKSD, v_cache_BKSD, lengths_B, mask_TT, *,
                   block_size=512, edge_block_size=128, impl="xla"):
    """Dispatches to the implementation named by `impl` (see `tree_attention_reference` for the contract)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; available: {IMPLS}")
    return tree_attention_reference(q_BTHD, k_new_BTKD, v_new_BTKD, k_cache_BKSD, v_cache_BKSD, lengths_B,
                                    mask_TT, block_size=block_size, edge_block_size=edge_block_size)


__all__ = ["tree_attention", "tree_attention_reference", "IMPLS"]
