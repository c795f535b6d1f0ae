"""DraftTree: builders, derived arrays, validation, and the Sequoia optimum against a brute force."""

import functools
import itertools

import numpy as np
import pytest

from spectax.tree import DraftTree, acceptance_table, optimal_paths, optimal_values


def _ancestors(tree, i):
    """Node i and its ancestors, walking `parents` directly (independent of the cached arrays)."""
    out = set()
    while i >= 0:
        out.add(i)
        i = tree.parents[i]
    return out


def _is_bfs(tree):
    """By depth, then parent, then child rank."""
    keys = [(d, p, r) for d, p, r in zip(tree.depth, tree.parents, tree.child_rank)]
    return keys == sorted(keys)


def _value(paths, acc):
    """Expected accepted tokens straight from rank paths; acc is [R] or [Dp, R], ranks >= R accept nothing."""
    acc = np.atleast_2d(np.asarray(acc, float))
    total = 0.0
    for path in paths:
        g = 1.0
        for depth, r in enumerate(path, 1):
            g *= acc[min(depth, len(acc)) - 1, r] if r < acc.shape[1] else 0.0
        total += g
    return total


@functools.lru_cache(None)
def _forests(n, depth):
    """All ordered forests (tuples of (children-forest,) trees) with exactly n nodes and depth <= depth."""
    if n == 0:
        return [()]
    if depth == 0:
        return []
    out = []
    for m in range(1, n + 1):
        for below in _forests(m - 1, depth - 1):
            for rest in _forests(n - m, depth):
                out.append((below,) + rest)
    return out


def _forest_paths(forest, prefix=()):
    for r, below in enumerate(forest):
        yield prefix + (r,)
        yield from _forest_paths(below, prefix + (r,))


def _brute_force(acc, budget, max_depth):
    """Best value over every rank-contiguous tree with <= budget nodes and depth <= max_depth."""
    return max(_value(list(_forest_paths(f)), acc) for n in range(budget + 1) for f in _forests(n, max_depth))


def _brute_force_rates(acc, budget, max_depth, cost):
    """[budget + 1]: per exact node count n, the best (1 + value) / cost[n] over every such tree."""
    return np.array([max(1 + _value(list(_forest_paths(f)), acc) for f in _forests(n, max_depth)) / cost[n]
                     for n in range(budget + 1)])


def _assert_no_useless_nodes(tree, acc):
    """A node that adds nothing is only there when its parent's next child needs it."""
    for path in tree.rank_paths:
        if _value([path], acc) == 0:
            assert path[:-1] + (path[-1] + 1,) in tree.rank_paths, path


def _random_rows(rng, shape):
    """Random acceptance rows summing to < 1, in random (non-monotone) rank order."""
    return rng.dirichlet(np.ones(shape[-1] + 1), size=shape[:-1])[..., :-1]


# ------------------------------------------------------------------ builders


def test_chain_and_none():
    assert DraftTree.chain(4).parents == (-1, 0, 1, 2)
    assert DraftTree.chain(0) == DraftTree.none() and DraftTree.none().num_nodes == 0
    np.testing.assert_array_equal(DraftTree.chain(4).depth, [1, 2, 3, 4])
    assert DraftTree.chain(4).is_chain and DraftTree.chain(1).is_chain and not DraftTree.none().is_chain


def test_kary_shapes_parents_and_bfs_order():
    t = DraftTree.kary((2, 2))
    assert t.parents == (-1, -1, 0, 0, 1, 1)
    assert DraftTree.kary((3, 2, 1)).parents == (-1, -1, -1, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8)
    assert DraftTree.kary((1, 1, 1)) == DraftTree.chain(3)
    for branching in [(2, 2), (3, 1, 2), (1, 4), (2, 3, 2)]:
        t = DraftTree.kary(branching)
        assert t.num_nodes == sum(np.cumprod(branching)) and t.max_depth == len(branching)
        np.testing.assert_array_equal(np.bincount(t.depth)[1:], np.cumprod(branching))
        assert _is_bfs(t)
        for i in range(t.num_nodes):   # every node at depth d - 1 has branching[d - 1] children
            if t.depth[i] < len(branching):
                assert (t.parent == i).sum() == branching[t.depth[i]]
            else:
                assert (t.parent == i).sum() == 0
        assert t.max_children == max(branching) and t.is_chain == (max(branching) == 1)


def test_from_paths_orders_bfs_and_round_trips():
    t = DraftTree.from_paths([(0, 1), (1,), (0,), (0, 0), (1, 0), (0, 1, 0)])   # any input order
    assert t.rank_paths == ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 1, 0))
    assert t.parents == (-1, -1, 0, 0, 1, 3)
    assert _is_bfs(t)
    i = t.rank_paths.index((0, 1))        # the second child of the first child
    assert t.parents[i] == t.rank_paths.index((0,)) and t.child_rank[i] == 1
    for tree in [DraftTree.chain(5), DraftTree.kary((2, 3)), DraftTree.kary((3, 1, 2)), t,
                 DraftTree.optimal([0.4, 0.3, 0.1], budget=20, max_depth=5)]:
        assert DraftTree.from_paths(tree.rank_paths) == tree
        assert DraftTree.from_paths(reversed(tree.rank_paths)) == tree
    assert DraftTree.from_paths([[0], [0, 0]]) == DraftTree.chain(2)        # lists are fine
    assert DraftTree.from_paths([(np.int64(0),)]) == DraftTree.chain(1)


def test_rank_paths_follow_parents():
    t = DraftTree((-1, 0, -1, 0, 2, 1, 1))   # topological but not BFS
    assert t.rank_paths == ((0,), (0, 0), (1,), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1))
    np.testing.assert_array_equal(t.child_rank, [0, 0, 1, 1, 0, 0, 1])
    assert not _is_bfs(t)
    assert DraftTree.from_paths(t.rank_paths) != t and _is_bfs(DraftTree.from_paths(t.rank_paths))
    assert sorted(DraftTree.from_paths(t.rank_paths).rank_paths) == sorted(t.rank_paths)


# ------------------------------------------------------------ derived arrays


TREES = [DraftTree.none(), DraftTree.chain(1), DraftTree.chain(4), DraftTree.kary((2, 2)), DraftTree.kary((3, 2, 1)),
         DraftTree((-1, 0, -1, 0, 2, 1, 1)),
         DraftTree.from_paths([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])]


@pytest.mark.parametrize("tree", TREES)
def test_masks_agree_with_parents(tree):
    N = tree.num_nodes
    assert tree.step_mask.shape == (N + 1, N + 1) and tree.ancestor_mask.shape == (N, N)
    assert tree.step_mask.dtype == bool and tree.ancestor_mask.dtype == bool
    assert tree.step_mask[:, 0].all() and not tree.step_mask[0, 1:].any()
    for i in range(N):
        want = np.zeros(N, bool)
        want[list(_ancestors(tree, i))] = True
        np.testing.assert_array_equal(tree.ancestor_mask[i], want)
        np.testing.assert_array_equal(tree.step_mask[i + 1, 1:], want)
        assert tree.depth[i] == len(_ancestors(tree, i)) == want.sum()
    np.testing.assert_array_equal(tree.step_depth, np.concatenate([[0], tree.depth]))
    assert tree.parent.dtype == np.int32 and tree.parent.shape == (N,)
    np.testing.assert_array_equal(tree.parent, tree.parents)


@pytest.mark.parametrize("tree", TREES)
def test_children_table(tree):
    N, K = tree.num_nodes, tree.max_children
    c = tree.children
    assert c.dtype == np.int32 and c.shape == (N + 1, max(K, 1))
    for t in range(N + 1):
        kids = [i + 1 for i, p in enumerate(tree.parents) if p + 1 == t]      # node order = rank order
        assert list(c[t, :len(kids)]) == kids and (c[t, len(kids):] == -1).all()
        assert [tree.child_rank[k - 1] for k in kids] == list(range(len(kids)))
    counts = np.bincount(tree.parent + 1, minlength=N + 1)
    assert K == (counts.max() if N else 0)
    assert tree.is_chain == (N >= 1 and counts.max() == 1)


@pytest.mark.parametrize("tree", TREES)
def test_leaf_paths(tree):
    lp = tree.leaf_paths
    leaves = [i for i in range(tree.num_nodes) if i not in tree.parents]
    assert lp.dtype == np.int32 and lp.shape == (len(leaves), tree.max_depth)
    for row, leaf in zip(lp, leaves):
        nodes = [int(i) for i in row if i >= 0]
        assert (row[len(nodes):] == -1).all() and nodes[-1] == leaf
        assert set(nodes) == _ancestors(tree, leaf) and list(tree.depth[nodes]) == list(range(1, len(nodes) + 1))


def test_hashable_and_equal():
    a, b = DraftTree.kary((2, 2)), DraftTree((-1, -1, 0, 0, 1, 1))
    assert a == b and hash(a) == hash(b) and a is not b
    assert DraftTree([-1, 0]) == DraftTree.chain(2) and hash(DraftTree([-1, 0])) == hash(DraftTree.chain(2))
    assert DraftTree((np.int32(-1), np.int64(0))).parents == (-1, 0)
    d = {a: "kary", DraftTree.chain(3): "chain"}
    assert d[b] == "kary" and d[DraftTree.from_paths([(0,), (0, 0), (0, 0, 0)])] == "chain"
    assert DraftTree.chain(3) != DraftTree.kary((3,)) and len({a, b, DraftTree.chain(6)}) == 2
    _ = a.step_mask, a.children       # cached arrays do not affect equality or hash
    assert a == b and hash(a) == hash(b)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("parents,word", [((0,), "earlier"), ((-1, 1), "earlier"), ((-2,), "earlier"),
                                          ((-1, 0.0), "int"), ((-1, "0"), "int"), ((True,), "int"), (5, "sequence")])
def test_bad_parents(parents, word):
    with pytest.raises(ValueError, match=word):
        DraftTree(parents)


@pytest.mark.parametrize("branching,word", [((), "non-empty"), ((2, 0), ">= 1"), ((-1,), ">= 1"), ((2.0,), "int"),
                                            ((64, 64), "limit of 4096"), ((2,) * 12, "limit")])
def test_bad_kary(branching, word):
    with pytest.raises(ValueError, match=word):
        DraftTree.kary(branching)


def test_kary_at_the_limit():
    assert DraftTree.kary((16, 255)).num_nodes == 16 + 16 * 255 == 4096


@pytest.mark.parametrize("paths,word", [
    ([], "empty list"), ([()], "empty path"), ([(0,), ()], "empty path"),
    ([(0,), (0,)], "duplicate"), ([(0,), (1,), (0, 0), (1,)], "duplicate"),
    ([(0, 0)], "prefix"), ([(0,), (0, 0, 0)], "prefix"),
    ([(1,)], "rank 1 without its sibling of rank 0"), ([(0,), (2,), (1, 0)], "rank 2"),
    ([(0,), (1,), (1, 1)], "contiguous"),
    ([(-1,)], "ranks must be ints >= 0"), ([(0,), (0, -2)], ">= 0"), ([(0.0,)], "ints"), ([("0",)], "ints"),
    ([(True,)], "ints"), ([0], "tuple of child ranks")])
def test_bad_paths(paths, word):
    with pytest.raises(ValueError, match=word):
        DraftTree.from_paths(paths)


@pytest.mark.parametrize("acceptance,word", [
    ([], "non-empty"), ([[]], "non-empty"), (np.zeros((2, 2, 2)), "shape"), ([[0.1, 0.2], [0.3]], "float array"),
    (["a"], "float array"), ([0.5, np.nan], "non-finite"), ([np.inf], "non-finite"), ([-0.1, 0.5], r"\[0, 1\]"),
    ([1.5], r"\[0, 1\]"), ([0.6, 0.5], "sum"), ([[0.5], [0.2, 0.9]], "float array"),
    ([[0.5, 0.2], [0.7, 0.4]], "sum")])
def test_bad_acceptance(acceptance, word):
    with pytest.raises(ValueError, match=word):
        DraftTree.optimal(acceptance, budget=4, max_depth=2)
    with pytest.raises(ValueError, match=word):
        DraftTree.chain(2).expected_accepted(acceptance)


def test_acceptance_sum_tolerance():
    DraftTree.optimal([0.5, 0.5 + 5e-7], budget=3, max_depth=2)      # within 1e-6 of 1 is fine
    np.testing.assert_array_equal(acceptance_table([0.5, 0.25]), [[0.5, 0.25]])


@pytest.mark.parametrize("budget,max_depth,word", [(0, 2, "budget"), (1.0, 2, "budget"), (True, 2, "budget"),
                                                   (4, 0, "max_depth"), (4, 2.5, "max_depth"), (-3, 2, "budget")])
def test_bad_budget_or_depth(budget, max_depth, word):
    with pytest.raises(ValueError, match=word):
        DraftTree.optimal([0.5, 0.2], budget=budget, max_depth=max_depth)


# --------------------------------------------------------- expected_accepted


def test_expected_accepted_by_hand():
    acc = [0.5, 0.25]
    assert DraftTree.none().expected_accepted(acc) == 0.0
    assert DraftTree.chain(3).expected_accepted(acc) == pytest.approx(0.5 + 0.25 + 0.125)
    assert DraftTree.kary((2,)).expected_accepted(acc) == pytest.approx(0.75)
    assert DraftTree.kary((3,)).expected_accepted(acc) == pytest.approx(0.75)   # rank 2 >= R accepts nothing
    assert DraftTree.kary((2, 2)).expected_accepted(acc) == pytest.approx(0.75 + 0.75 * 0.75)
    deep = [[0.5, 0.25], [0.9, 0.1]]                                               # depth >= 2 uses the last row
    assert DraftTree.chain(3).expected_accepted(deep) == pytest.approx(0.5 + 0.45 + 0.405)
    assert DraftTree.kary((2, 2)).expected_accepted(deep) == pytest.approx(0.75 + 0.75 * 1.0)


@pytest.mark.parametrize("tree", TREES)
def test_expected_accepted_matches_paths(tree):
    rng = np.random.default_rng(1)
    for acc in (_random_rows(rng, (3,)), _random_rows(rng, (2, 4))):
        assert tree.expected_accepted(acc) == pytest.approx(_value(tree.rank_paths, acc), abs=1e-12)


# ------------------------------------------------------------------ optimal


def test_brute_force_enumeration_is_complete():
    catalan = [1, 1, 2, 5, 14, 42, 132]
    assert [len(_forests(n, n)) for n in range(7)] == catalan          # all ordered trees of n nodes
    assert len(_forests(3, 1)) == 1 and len(_forests(3, 2)) == 4       # (3,) and the four of depth <= 2


@pytest.mark.parametrize("seed", range(4))
def test_optimal_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    acc = _random_rows(rng, (int(rng.integers(2, 5)),))
    for max_depth in (1, 2, 3):
        for budget in range(1, 7):
            best = _brute_force(acc, budget, max_depth)
            values, tables = optimal_values(acceptance_table(acc), budget, max_depth)
            value, paths = values[budget], optimal_paths(tables, budget)
            tree = DraftTree.optimal(acc, budget, max_depth)
            assert value == pytest.approx(best, abs=1e-12)
            assert tree.expected_accepted(acc) == pytest.approx(value, abs=1e-12)
            assert DraftTree.from_paths(paths) == tree and _is_bfs(tree)
            assert tree.num_nodes <= budget and tree.max_depth <= max_depth
            _assert_no_useless_nodes(tree, acc)


def test_optimal_with_depth_dependent_acceptance_matches_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(3):
        acc = _random_rows(rng, (2, 3))          # depth 3 reuses row 1
        for budget in (2, 4, 6):
            tree = DraftTree.optimal(acc, budget, 3)
            assert tree.expected_accepted(acc) == pytest.approx(_brute_force(acc, budget, 3), abs=1e-12)


def test_only_rank_zero_accepts_gives_a_chain():
    for budget, max_depth in [(1, 1), (3, 5), (5, 3), (8, 8), (10, 4)]:
        tree = DraftTree.optimal([1.0, 0.0, 0.0], budget, max_depth)
        assert tree == DraftTree.chain(min(budget, max_depth))
    assert DraftTree.optimal([0.0, 0.0], 5, 3) == DraftTree.none()                 # nothing is ever accepted


def test_optimal_beats_chain_and_kary_of_the_same_size():
    rng = np.random.default_rng(3)
    for acc in ([0.6, 0.2, 0.1], [0.3, 0.3, 0.3], _random_rows(rng, (4,)), _random_rows(rng, (3, 3))):
        for alt in [DraftTree.chain(4), DraftTree.kary((2, 2)), DraftTree.kary((3, 2)), DraftTree.kary((2, 1, 2)),
                    DraftTree.kary((4,)), DraftTree.chain(9)]:
            opt = DraftTree.optimal(acc, alt.num_nodes, alt.max_depth)
            assert opt.expected_accepted(acc) >= alt.expected_accepted(acc) - 1e-12
    acc = [0.6, 0.2, 0.1]                                                           # and strictly, here
    assert DraftTree.optimal(acc, 6, 2).expected_accepted(acc) > DraftTree.kary((2, 2)).expected_accepted(acc) + 1e-3


def test_depth_dependent_acceptance_changes_the_tree():
    wide_below = [[1.0, 0.0], [0.5, 0.5]]      # depth 1: only rank 0 counts; deeper: two equally good children
    tree = DraftTree.optimal(wide_below, budget=3, max_depth=2)
    assert tree.parents == (-1, 0, 0) and tree.expected_accepted(wide_below) == pytest.approx(2.0)
    flat = DraftTree.optimal([0.5, 0.5], budget=3, max_depth=2)
    assert flat != tree and flat.expected_accepted([0.5, 0.5]) == pytest.approx(1.25)
    wide_top = [[0.5, 0.5], [1.0, 0.0]]        # the mirror image: branch at the root, then chains
    tree = DraftTree.optimal(wide_top, budget=4, max_depth=2)
    assert tree.parents == (-1, -1, 0, 1) and tree.expected_accepted(wide_top) == pytest.approx(2.0)


def test_non_monotone_acceptance():
    acc = [0.1, 0.6, 0.2]                      # rank 1 is the best, but it needs rank 0 beside it
    assert DraftTree.optimal(acc, 1, 1) == DraftTree.chain(1)
    assert DraftTree.optimal(acc, 2, 1) == DraftTree.kary((2,))
    assert DraftTree.optimal(acc, 2, 1).expected_accepted(acc) == pytest.approx(0.7)
    for budget in range(1, 7):
        for max_depth in (1, 2, 3):
            tree = DraftTree.optimal(acc, budget, max_depth)
            assert tree.expected_accepted(acc) == pytest.approx(_brute_force(acc, budget, max_depth), abs=1e-12)
    zero_first = [0.0, 0.7]                    # a zero-gain node kept because its sibling needs it
    tree = DraftTree.optimal(zero_first, 2, 1)
    assert tree == DraftTree.kary((2,)) and tree.expected_accepted(zero_first) == pytest.approx(0.7)
    assert DraftTree.optimal(zero_first, 1, 1) == DraftTree.none()
    gappy = [0.3, 0.0, 0.0, 0.4, 0.0]          # ranks 1, 2 only as stepping stones to rank 3; rank 4 never
    for budget, max_depth in [(4, 1), (7, 2), (9, 3)]:
        tree = DraftTree.optimal(gappy, budget, max_depth)
        _assert_no_useless_nodes(tree, gappy)
        assert tree.expected_accepted(gappy) == pytest.approx(_brute_force(gappy, budget, max_depth), abs=1e-12)
    assert DraftTree.optimal(gappy, 3, 1) == DraftTree.chain(1)          # three nodes cannot reach rank 3
    assert DraftTree.optimal(gappy, 12, 1) == DraftTree.kary((4,))


def test_optimal_at_sequoia_scale():
    rng = np.random.default_rng(0)
    acc = np.sort(_random_rows(rng, (16,)))[::-1]
    tree = DraftTree.optimal(acc, budget=128, max_depth=12)
    assert tree.num_nodes <= 128 and tree.max_depth <= 12
    value = tree.expected_accepted(acc)
    assert value >= DraftTree.chain(12).expected_accepted(acc)
    assert value >= DraftTree.optimal(acc, budget=64, max_depth=12).expected_accepted(acc)
    for a, b in itertools.pairwise([DraftTree.optimal(acc, b, 6).expected_accepted(acc) for b in (8, 16, 32, 64)]):
        assert b >= a - 1e-12                   # more budget never hurts


# ----------------------------------------------------------- optimal with cost

COSTS = {   # cost[n] for n = 0..6 draft nodes, relative to a plain step
    "flat": [1.0] * 7,
    "mild": [1.0 + 0.05 * n for n in range(7)],
    "steep": [1.0 + 0.4 * n for n in range(7)],
    "knee": [1.0, 1.0, 1.0, 1.0, 1.6, 1.7, 1.8],          # free up to a tile size, then a jump
    "non_monotone": [1.0, 1.3, 1.5, 1.6, 1.2, 2.0, 2.0],   # 4 nodes cheaper than 3 (padding to a tile)
    "prohibitive": [1.0 + 10.0 * n for n in range(7)],
}


def test_optimal_values_are_the_best_per_exact_size():
    rng = np.random.default_rng(11)
    for acc in (_random_rows(rng, (3,)), _random_rows(rng, (2, 2)), [0.0, 0.7], [1.0, 0.0]):
        for max_depth in (1, 2, 3):
            values, _ = optimal_values(acceptance_table(acc), 6, max_depth)
            exact = [max(_value(list(_forest_paths(f)), acc) for f in _forests(n, max_depth)) for n in range(7)]
            np.testing.assert_allclose(values, exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(COSTS))
@pytest.mark.parametrize("seed", range(3))
def test_optimal_with_cost_matches_brute_force(name, seed):
    cost = COSTS[name]
    rng = np.random.default_rng(seed)
    acc = _random_rows(rng, (int(rng.integers(2, 4)),)) if seed < 2 else _random_rows(rng, (2, 3))
    for max_depth in (1, 2, 3):
        for budget in range(1, 7):
            rates = _brute_force_rates(acc, budget, max_depth, cost)
            tree = DraftTree.optimal(acc, budget, max_depth, cost=cost)
            assert tree.num_nodes <= budget and tree.max_depth <= max_depth and _is_bfs(tree)
            assert tree.expected_speedup(acc, cost) == pytest.approx(rates.max(), abs=1e-12)
            assert (rates[:tree.num_nodes] < rates.max() - 1e-12).all()         # no smaller tree does as well


def test_flat_cost_is_the_per_call_optimum():
    rng = np.random.default_rng(5)
    for acc in ([0.6, 0.2, 0.1], _random_rows(rng, (3,)), _random_rows(rng, (2, 3))):
        for budget, max_depth in [(1, 1), (3, 2), (6, 3), (16, 4), (40, 6)]:
            tree = DraftTree.optimal(acc, budget, max_depth, cost=np.ones(budget + 1))
            assert tree == DraftTree.optimal(acc, budget, max_depth) and tree.num_nodes == budget


def test_steeper_cost_gives_smaller_trees():
    acc = [0.6, 0.2, 0.1]
    sizes = [DraftTree.optimal(acc, 32, 8, cost=1.0 + slope * np.arange(33)).num_nodes
             for slope in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)]
    assert sizes[0] == 32 and sizes == sorted(sizes, reverse=True) and len(set(sizes)) >= 4
    assert sizes[-1] == 0
    assert DraftTree.optimal(acc, 32, 8, cost=1.0 + 0.3 * np.arange(33)) == DraftTree.chain(1)   # 1.6 / 1.3 > 1


def test_cost_where_nothing_pays_gives_the_empty_tree():
    acc = [0.6, 0.2, 0.1]
    for cost in (1.0 + 1.0 * np.arange(17), [1.0] + [4.2] * 16):     # value <= 0.9 + 0.81 + 0.73 + 0.66
        tree = DraftTree.optimal(acc, 16, 4, cost=cost)
        assert tree == DraftTree.none() and tree.expected_speedup(acc, cost) == 1.0
    assert DraftTree.optimal([0.0, 0.0], 8, 3, cost=np.ones(9)) == DraftTree.none()   # nothing is ever accepted
    cost = [1.0, 1.6] + [9.0] * 15                                                     # 1.6 / 1.6 == 1: a tie
    assert DraftTree.optimal(acc, 16, 4, cost=cost) == DraftTree.none()               # goes to fewer nodes


def test_non_monotone_cost_pads_to_the_cheaper_size():
    cost = [1.0, 2.0, 2.0, 2.0, 1.5, 3.0]
    tree = DraftTree.optimal([1.0, 0.0, 0.0], 5, 2, cost=cost)     # chain(2) carries all the value; 4 nodes are cheaper
    assert tree == DraftTree.from_paths([(0,), (1,), (2,), (0, 0)])
    assert tree.expected_speedup([1.0, 0.0, 0.0], cost) == pytest.approx(3.0 / 1.5)


def test_expected_speedup_by_hand():
    acc, cost = [0.5, 0.25], [1.0, 1.1, 1.2, 1.3]
    assert DraftTree.none().expected_speedup(acc, [1.0]) == 1.0
    assert DraftTree.chain(3).expected_speedup(acc, cost) == pytest.approx((1 + 0.875) / 1.3)
    assert DraftTree.kary((2,)).expected_speedup(np.array([acc]), np.array(cost)) == pytest.approx(1.75 / 1.2)


@pytest.mark.parametrize("cost,word", [
    ([1.0, 1.1], "covers only up to 1"), ([[1.0, 1.1, 1.2, 1.3, 1.4]], "1-D"), (1.0, "1-D"), ("abc", "1-D float"),
    ([1.0, np.nan, 1.2, 1.3, 1.4], "non-finite"), ([1.0, 1.1, np.inf, 1.3, 1.4], "non-finite"),
    ([1.0, 0.0, 1.2, 1.3, 1.4], "> 0"), ([1.0, 1.1, -1.2, 1.3, 1.4], "> 0"), ([2.0, 2.2, 2.4, 2.6, 2.8], r"cost\[0\]"),
    ([1.0, None, 1.2, 1.3, 1.4], "non-finite"), ([1.0, [1.1], 1.2, 1.3, 1.4], "1-D float")])
def test_bad_cost(cost, word):
    with pytest.raises(ValueError, match=word):
        DraftTree.optimal([0.5, 0.2], budget=4, max_depth=2, cost=cost)
    with pytest.raises(ValueError, match=word):
        DraftTree.kary((2, 1)).expected_speedup([0.5, 0.2], cost)
