"""The jnp tree-attention reference against a dense softmax over an explicit visibility mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_oracle import dense_attention, random_tree_mask
from pallas_kernels.tree_attention import BlockSizes, tree_attention, tree_attention_reference


@pytest.mark.parametrize("lengths", [(0, 13, 30), (17, 13, 30), (36, 36, 36)])
@pytest.mark.parametrize("block_size,edge_block_size", [(4, 4), (8, 3), (7, 5), (256, 128)])
@pytest.mark.parametrize("T", [1, 5])
def test_reference_matches_dense_with_poisoned_slots(block_size, edge_block_size, T, lengths):
    """Covers blocks live for every row (unmasked path), edge blocks, a clamped last block and an empty prefix."""
    rng = np.random.default_rng(T * 100 + block_size + edge_block_size)
    B, S, H, K, D = 3, 41, 6, 2, 8
    q = rng.normal(size=(B, T, H, D)).astype(np.float32)
    k_new, v_new = (rng.normal(size=(B, T, K, D)).astype(np.float32) for _ in range(2))
    k_cache, v_cache = (rng.normal(size=(B, S, K, D)).astype(np.float32) for _ in range(2))
    lengths = np.array(lengths, np.int32)
    for b, L in enumerate(lengths):  # dead slots hold NaN: they must not leak into the result
        k_cache[b, L:] = np.nan
        v_cache[b, L:] = np.nan
    mask = np.stack([random_tree_mask(rng, T) for _ in range(B)])
    got = tree_attention_reference(q, k_new, v_new, k_cache.transpose(0, 2, 1, 3), v_cache.transpose(0, 2, 1, 3),
                                   lengths, mask,
                                   block_sizes=BlockSizes(block_kv=block_size, edge_block_kv=edge_block_size))
    want = dense_attention(q, k_new, v_new, k_cache, v_cache, lengths, mask)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)


def test_causal_without_cache_and_shared_mask():
    rng = np.random.default_rng(0)
    B, T, H, D = 2, 9, 4, 16
    q, k, v = (rng.normal(size=(B, T, H, D)).astype(np.float32) for _ in range(3))
    mask = np.tril(np.ones((T, T), bool))
    got = tree_attention(q, k, v, None, None, np.zeros(B, np.int32), mask)
    want = dense_attention(q, k, v, np.zeros((B, 0, H, D)), np.zeros((B, 0, H, D)), np.zeros(B, int), mask)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)


def test_prefix_loop_trip_count_follows_used_length():
    """The prefix loop reads ceil(max(lengths) / block) blocks: the jaxpr has a while loop with a dynamic bound."""
    B, K, S, D = 1, 1, 64, 4
    f = lambda kc, L: tree_attention_reference(jnp.ones((B, 1, K, D)), jnp.ones((B, 1, K, D)),
                                               jnp.ones((B, 1, K, D)), kc, kc, L, jnp.ones((1, 1), bool),
                                               block_sizes=BlockSizes(block_kv=8, edge_block_kv=8))
    jaxpr = jax.make_jaxpr(f)(jnp.ones((B, K, S, D)), jnp.array([5]))
    assert "while" in str(jaxpr)


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="impl"):
        tree_attention(*(np.zeros((1, 1, 1, 4)),) * 3, None, None, np.zeros(1, np.int32), np.ones((1, 1), bool),
                       impl="cuda-magic")
