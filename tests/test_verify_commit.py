"""The step's tree pieces on hand-made inputs: DraftTree arrays, greedy tree verification, path commit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectax.cache import KVCache, commit_path
from spectax.drafters import Draft
from spectax.models import ModelConfig
from spectax.tree import DraftTree
from spectax.verify import verify_greedy

V = 10


def one_hot_logits(argmax_BT):
    """Logits whose argmax at each step token is the given id."""
    return jnp.asarray(np.eye(V, dtype=np.float32)[np.asarray(argmax_BT)] * 5.0)


def test_tree_arrays():
    tree = DraftTree((-1, -1, 0, 1, 2))  # root -> {0, 1}; 0 -> 2 -> 4; 1 -> 3
    np.testing.assert_array_equal(tree.depth, [1, 1, 2, 2, 3])
    assert tree.max_depth == 3 and tree.num_nodes == 5
    np.testing.assert_array_equal(tree.step_depth, [0, 1, 1, 2, 2, 3])
    m = tree.step_mask
    assert m.shape == (6, 6) and m[:, 0].all() and np.diag(m).all()
    assert m[5].tolist() == [True, True, False, True, False, True]  # node 4 sees root, 0, 2, itself
    assert not m[1, 2] and not m[2, 1]                                # siblings do not see each other
    assert DraftTree.chain(3).parents == (-1, 0, 1) and DraftTree.none().num_nodes == 0
    with pytest.raises(ValueError, match="parent"):
        DraftTree((0,))
    with pytest.raises(ValueError, match=">= 0"):
        DraftTree.chain(-1)


def test_greedy_chain_accepts_longest_matching_prefix():
    tree = DraftTree.chain(3)
    draft = jnp.array([[4, 5, 6], [4, 9, 6], [1, 5, 6]], jnp.int32)
    # target argmax after root, after node 0, after node 1, after node 2
    target = [[4, 5, 6, 7], [4, 5, 6, 7], [4, 5, 6, 7]]
    v = verify_greedy(one_hot_logits(target), Draft(tokens_BN=draft), tree)
    np.testing.assert_array_equal(v.n_accepted, [3, 1, 0])
    np.testing.assert_array_equal(v.next_root, [7, 5, 4])
    np.testing.assert_array_equal(v.path_BD, [[1, 2, 3], [1, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(v.new_tokens(draft)[0], [4, 5, 6, 7])
    np.testing.assert_array_equal(v.new_tokens(draft)[1, :2], [4, 5])


def test_greedy_tree_takes_the_deepest_accepted_branch():
    tree = DraftTree((-1, -1, 0, 1, 2))
    draft = jnp.array([[3, 4, 8, 6, 2]], jnp.int32)
    # root -> 4 (node 1 matches, node 0 does not); after node 1 -> 6 (node 3 matches); after node 3 -> 9
    target = [[4, 0, 6, 0, 9, 0]]  # indexed by step: root, node 0, node 1, ...; node 1 is step 2
    v = verify_greedy(one_hot_logits(target), Draft(tokens_BN=draft), tree)
    assert int(v.n_accepted[0]) == 2 and int(v.next_root[0]) == 9
    np.testing.assert_array_equal(v.path_BD[0], [2, 4, -1])
    np.testing.assert_array_equal(v.new_tokens(draft)[0, :3], [4, 6, 9])


def test_commit_path_compacts_the_accepted_nodes():
    cfg = ModelConfig(arch="llama", vocab_size=V, hidden_size=8, num_layers=2, num_heads=1, num_kv_heads=1,
                      head_dim=2, intermediate_size=8, max_position=64)
    cache = KVCache.create(cfg, 2, 16, jnp.float32)
    slot_ids = jnp.arange(16, dtype=jnp.float32)[None, None, :, None] * jnp.ones((2, 1, 16, 2))
    cache = cache.replace(k=(slot_ids, slot_ids + 100), v=(slot_ids + 200, slot_ids + 300),
                          lengths=jnp.array([3, 5], jnp.int32))
    path = jnp.array([[2, 4, -1], [1, -1, -1]], jnp.int32)   # step indices by depth
    out = commit_path(cache, path, jnp.array([2, 1]), active_B=jnp.array([True, False]))
    np.testing.assert_array_equal(out.lengths, [6, 5])       # row 0: root + 2 accepted; row 1 inactive
    k0 = np.asarray(out.k[0])[:, 0, :, 0]
    np.testing.assert_array_equal(k0[0, :6], [0, 1, 2, 3, 5, 7])  # slots 4, 5 <- step slots 3 + 2, 3 + 4
    np.testing.assert_array_equal(np.asarray(out.v[1])[0, 0, 4:6, 0], [305, 307])
    np.testing.assert_array_equal(k0[1, :5], [0, 1, 2, 3, 4])    # committed slots untouched


def test_chain_commit_in_place_equals_the_move():
    """A chain's accepted path already sits in its final slots: skipping the move (in_place) changes nothing."""
    cfg = ModelConfig(arch="llama", vocab_size=V, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                      head_dim=2, intermediate_size=8, max_position=64)
    cache = KVCache.create(cfg, 3, 16, jnp.float32)
    cache = cache.replace(k=(jax.random.normal(jax.random.key(0), cache.k[0].shape),),
                          lengths=jnp.array([2, 4, 6], jnp.int32))
    n = jnp.array([3, 0, 1])
    path = jnp.where(jnp.arange(3)[None] < n[:, None], jnp.arange(1, 4)[None], -1).astype(jnp.int32)
    active = jnp.array([True, True, False])
    moved, kept = (commit_path(cache, path, n, active, in_place=f) for f in (False, True))
    np.testing.assert_array_equal(moved.lengths, kept.lengths)
    np.testing.assert_array_equal(moved.k[0], kept.k[0])
