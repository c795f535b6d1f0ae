"""Tree attention: T new query tokens over a per-row cache prefix plus the new tokens under a [T, T] mask.

`tree_attention(..., impl="xla")` is the pure-jnp reference (also the XLA path); Pallas kernels plug in behind the
same signature.
"""

from pallas_kernels.tree_attention.reference import tree_attention_reference, tree_attention_threaded as _xla_threaded

IMPLS = ("xla",)


def tree_attention(q_BTHD, k_new_BTKD, v_new_BTKD, k_cache_BKSD, v_cache_BKSD, lengths_B, mask_TT, *,
                   block_size=512, edge_block_size=128, impl="xla"):
    """Dispatches to the implementation named by `impl` (see `tree_attention_reference` for the contract)."""
    return tree_attention_threaded(q_BTHD, k_new_BTKD, v_new_BTKD, k_cache_BKSD, v_cache_BKSD, lengths_B, mask_TT,
                                   block_size=block_size, edge_block_size=edge_block_size, impl=impl)[0]


def tree_attention_threaded(q_BTHD, k_new_BTKD, v_new_BTKD, k_cache_BKSD, v_cache_BKSD, lengths_B, mask_TT, *,
                            block_size=512, edge_block_size=128, impl="xla"):
    """`tree_attention` that also returns the caches it read, (out, k_cache, v_cache): a caller that writes the step's
    K/V into the returned caches, not its arguments, keeps the cache in place (see reference.py)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; available: {IMPLS}")
    return _xla_threaded(q_BTHD, k_new_BTKD, v_new_BTKD, k_cache_BKSD, v_cache_BKSD, lengths_B, mask_TT,
                         block_size=block_size, edge_block_size=edge_block_size)


__all__ = ["tree_attention", "tree_attention_threaded", "tree_attention_reference", "IMPLS"]
