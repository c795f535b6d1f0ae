"""DraftTree: the static shape of a step's draft (a chain is a degenerate tree; zero nodes is plain decoding).

Vocabulary used below:
  node i       one draft token, 0 <= i < N; nodes are topologically ordered (a parent comes before its children).
  step index t the position in a verification step: t = 0 is the root (the last committed token), t = i + 1 node i.
  child rank   a node's order among its siblings (0 = the first, i.e. the drafter's best guess below that parent).
  rank path    the child ranks from the root down to a node, e.g. (0, 1) = the second child of the first child.
  acceptance   float [R] or [Dp, R]: acceptance[d - 1, r] is the probability that, at depth d, the child of rank r is
               the accepted one (rows past Dp reuse the last row; ranks >= R are never accepted).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from spectax.checks import is_int

MAX_KARY_NODES = 4096



@dataclasses.dataclass(frozen=True)
class DraftTree:
    """N draft nodes below the root (the last committed token, not counted).

    parents[i] is node i's parent: -1 for the root, else an earlier node index (nodes are in topological order).
    Frozen and hashable: a tree is a static jit argument, its derived arrays are numpy constants.
    """

    parents: tuple[int, ...] = ()

    def __post_init__(self):
        try:
            parents = tuple(self.parents)
        except TypeError:
            raise ValueError(f"parents must be a sequence of ints, got {self.parents!r}") from None
        for i, p in enumerate(parents):
            if not is_int(p):
                raise ValueError(f"node {i} has parent {p!r}; parents must be ints")
            if not -1 <= p < i:
                raise ValueError(f"node {i} has parent {p}; parents must be -1 (root) or an earlier node")
        object.__setattr__(self, "parents", tuple(int(p) for p in parents))   # lists / numpy ints -> hashable

    # ---------------------------------------------------------------- builders

    @classmethod
    def none(cls) -> "DraftTree":
        """The empty tree: plain decoding."""
        return cls(())

    @classmethod
    def chain(cls, k: int) -> "DraftTree":
        """k draft tokens in a line."""
        if not is_int(k):
            raise ValueError(f"chain length must be an int, got {k!r}")
        if k < 0:
            raise ValueError(f"chain length must be >= 0, got {k}")
        return cls(tuple(range(-1, k - 1)))

    @classmethod
    def kary(cls, branching: Sequence[int]) -> "DraftTree":
        """Every node at depth d - 1 (the root is depth 0) gets branching[d - 1] children; depth len(branching).

        Nodes are in BFS order: by depth, then parent, then child rank. kary((1,) * k) == chain(k).
        """
        branching = tuple(branching)
        if not branching:
            raise ValueError("kary needs a non-empty branching sequence (use DraftTree.none() for no draft)")
        for d, b in enumerate(branching, 1):
            if not is_int(b) or b < 1:
                raise ValueError(f"kary branching must be ints >= 1, got {b!r} at depth {d}")
        total, width = 0, 1
        for b in branching:
            width *= int(b)
            total += width
        if total > MAX_KARY_NODES:
            raise ValueError(f"kary{branching} has {total} nodes, more than the limit of {MAX_KARY_NODES}")
        parents, level = [], [-1]                                     # level: node indices at the previous depth
        for b in branching:
            nxt = []
            for p in level:
                for _ in range(int(b)):
                    nxt.append(len(parents))
                    parents.append(p)
            level = nxt
        return cls(tuple(parents))

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]]) -> "DraftTree":
        """Medusa-style: one rank path per node, e.g. [(0,), (1,), (0, 0), (0, 1), (1, 0)].

        Every path's prefix must be present, and ranks below a parent must be contiguous from 0. Nodes come out in
        BFS order, sorted by (len(path), path), so from_paths(t.rank_paths) == t for every BFS-ordered tree t.
        """
        paths = list(paths)
        if not paths:
            raise ValueError("from_paths got an empty list of paths (use DraftTree.none() for no draft)")
        clean = []
        for path in paths:
            try:
                path = tuple(path)
            except TypeError:
                raise ValueError(f"each path must be a tuple of child ranks, got {path!r}") from None
            if not path:
                raise ValueError("empty path (): the root is implicit, every path names a node below it")
            for r in path:
                if not is_int(r) or r < 0:
                    raise ValueError(f"path {path}: child ranks must be ints >= 0, got {r!r}")
            clean.append(tuple(int(r) for r in path))
        present = set()
        for path in clean:
            if path in present:
                raise ValueError(f"duplicate path {path}")
            present.add(path)
        for path in clean:
            if len(path) > 1 and path[:-1] not in present:
                raise ValueError(f"path {path} has no parent: its prefix {path[:-1]} is missing")
            if path[-1] > 0 and path[:-1] + (path[-1] - 1,) not in present:
                raise ValueError(f"path {path} has child rank {path[-1]} without its sibling of rank "
                                 f"{path[-1] - 1}; ranks below a parent must be contiguous from 0")
        order = sorted(clean, key=lambda p: (len(p), p))
        index = {p: i for i, p in enumerate(order)}
        return cls(tuple(index[p[:-1]] if len(p) > 1 else -1 for p in order))

    @classmethod
    def optimal(cls, acceptance, budget: int, max_depth: int, cost=None) -> "DraftTree":
        """The Sequoia tree: at most `budget` nodes, depth <= max_depth, maximising expected_accepted(acceptance).

        acceptance: float [R] (every depth) or [Dp, R] (row d - 1 for depth d; deeper depths use the last row), the
        probability that the child of rank r is the accepted one. Rows need not be monotone in rank. A dynamic
        program over (depth, subtree size) with a knapsack over child ranks 0, 1, 2, ... (rank r needs ranks < r);
        nodes that add nothing are left out, so the result can be smaller than the budget (even empty). BFS order.

        cost: optional float [>= budget + 1], cost[n] = the time of a verification step over n draft nodes divided
        by a plain step's (cost[0] == 1), e.g. `spectax.calibrate.cost_curve`. Then the tree maximises
        expected_speedup = (1 + expected accepted) / cost[num_nodes] instead: the smallest best size n is chosen
        (0, the empty tree, when speculation cannot pay) and the tree has exactly n nodes (zero-gain root children
        pad it only when cost makes n nodes cheaper than the fewer that carry the same value).
        """
        values, tables = optimal_values(acceptance_table(acceptance), budget, max_depth)
        if cost is None:
            paths = optimal_paths(tables, budget)
        else:
            size = _best_size(values, _cost_table(cost, budget))
            paths = _pad_root(optimal_paths(tables, size), size)
        return cls.from_paths(paths) if paths else cls.none()

    def truncated(self, depth: int) -> "DraftTree":
        """The nodes of depth <= `depth`, which must be the tree's first nodes (true of every BFS-ordered tree:
        chain, kary, from_paths, optimal); ValueError otherwise. The loop runs these prefixes as cheaper steps."""
        if not is_int(depth) or depth < 0:
            raise ValueError(f"truncation depth must be an int >= 0, got {depth!r}")
        keep = self.depth <= depth
        n = int(keep.sum())
        if not keep[:n].all():
            raise ValueError(f"the nodes of depth <= {depth} are not the first nodes of this tree; truncating "
                             f"needs nodes ordered by depth (build it with from_paths or kary)")
        return DraftTree(self.parents[:n])

    # ------------------------------------------------------------ properties

    @property
    def num_nodes(self) -> int:
        """N, the number of draft nodes (the root not counted)."""
        return len(self.parents)

    @functools.cached_property
    def parent(self) -> np.ndarray:
        """int32 [N] parents as an array (-1 = the root)."""
        return np.asarray(self.parents, np.int32).reshape(self.num_nodes)

    @functools.cached_property
    def depth(self) -> np.ndarray:
        """int32 [N] depth of each node (children of the root have depth 1)."""
        d = np.zeros(self.num_nodes, np.int32)
        for i, p in enumerate(self.parents):
            d[i] = 1 if p < 0 else d[p] + 1
        return d

    @property
    def max_depth(self) -> int:
        """The deepest node's depth; 0 for the empty tree."""
        return int(self.depth.max()) if self.num_nodes else 0

    @functools.cached_property
    def child_rank(self) -> np.ndarray:
        """int32 [N] each node's order among its siblings (0 = first, by node index)."""
        seen = np.zeros(self.num_nodes + 1, np.int32)                 # children so far, per step index
        r = np.zeros(self.num_nodes, np.int32)
        for i, p in enumerate(self.parents):
            r[i] = seen[p + 1]
            seen[p + 1] += 1
        return r

    @property
    def max_children(self) -> int:
        """The most children any step position (root included) has; 0 for the empty tree."""
        return int(self.child_rank.max()) + 1 if self.num_nodes else 0

    @property
    def is_chain(self) -> bool:
        """True iff the tree is non-empty and no step position has more than one child."""
        return self.num_nodes >= 1 and self.max_children == 1

    @functools.cached_property
    def children(self) -> np.ndarray:
        """int32 [1 + N, K] step indices of each step position's children in rank order, -1 padded.

        K = max(max_children, 1); row 0 is the root.
        """
        c = np.full((self.num_nodes + 1, max(self.max_children, 1)), -1, np.int32)
        c[self.parent + 1, self.child_rank] = np.arange(1, self.num_nodes + 1, dtype=np.int32)
        return c

    @functools.cached_property
    def step_mask(self) -> np.ndarray:
        """bool [1 + N, 1 + N]: row t sees column j iff j is t itself or an ancestor of t (index 0 = the root)."""
        n = self.num_nodes + 1
        m = np.eye(n, dtype=bool)
        m[:, 0] = True
        for i, p in enumerate(self.parents):
            if p >= 0:
                m[i + 1] |= m[p + 1]
        return m

    @functools.cached_property
    def ancestor_mask(self) -> np.ndarray:
        """bool [N, N]: node i sees node j iff j is i itself or an ancestor of i (step_mask without the root)."""
        return self.step_mask[1:, 1:].copy()

    @functools.cached_property
    def step_depth(self) -> np.ndarray:
        """int32 [1 + N] position offset of each step token from the root's position."""
        return np.concatenate([[0], self.depth]).astype(np.int32)

    @functools.cached_property
    def rank_paths(self) -> tuple[tuple[int, ...], ...]:
        """Each node's rank path (child ranks from the root down to it), in node order."""
        out: list[tuple[int, ...]] = []
        for p, r in zip(self.parents, self.child_rank.tolist()):
            out.append((out[p] if p >= 0 else ()) + (r,))
        return tuple(out)

    @functools.cached_property
    def leaf_paths(self) -> np.ndarray:
        """int32 [n_leaves, max_depth] node indices from depth 1 down to each leaf (leaves in node order), -1 padded."""
        is_leaf = np.ones(self.num_nodes, bool)
        is_leaf[self.parent[self.parent >= 0]] = False
        leaves = np.flatnonzero(is_leaf)
        out = np.full((leaves.size, self.max_depth), -1, np.int32)
        for row, leaf in enumerate(leaves):
            i = int(leaf)
            while i >= 0:
                out[row, self.depth[i] - 1] = i
                i = self.parents[i]
        return out

    # ------------------------------------------------------------- objective

    def expected_accepted(self, acceptance) -> float:
        """Expected accepted draft tokens per step: sum over nodes of prod acceptance[depth - 1, rank] on its path.

        acceptance: float [R] or [Dp, R] (see `optimal`); a node of rank >= R contributes (and passes on) 0.
        """
        table = acceptance_table(acceptance)
        Dp, R = table.shape
        gain = np.zeros(self.num_nodes)
        for i, (p, d, r) in enumerate(zip(self.parents, self.depth.tolist(), self.child_rank.tolist())):
            a = table[min(d, Dp) - 1, r] if r < R else 0.0
            gain[i] = a * (gain[p] if p >= 0 else 1.0)
        return float(gain.sum())

    def expected_speedup(self, acceptance, cost) -> float:
        """Expected new tokens per unit of plain-step time: (1 + expected_accepted(acceptance)) / cost[num_nodes].

        cost: float [>= N + 1], verification step time over n draft nodes / plain step time (cost[0] == 1).
        """
        return (1.0 + self.expected_accepted(acceptance)) / float(_cost_table(cost, self.num_nodes)[self.num_nodes])


def acceptance_table(acceptance) -> np.ndarray:
    """Validates acceptance ([R] or [Dp, R]); returns float64 [Dp, R]."""
    try:
        a = np.array(acceptance, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"acceptance must be a float array of shape [R] or [Dp, R], got {acceptance!r}") from None
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"acceptance must be a non-empty float array of shape [R] or [Dp, R], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("acceptance has non-finite values")
    if (a < 0).any() or (a > 1).any():
        raise ValueError(f"acceptance values must be in [0, 1], got min {a.min()} max {a.max()}")
    sums = a.sum(1)
    if (sums > 1 + 1e-6).any():
        raise ValueError(f"each acceptance row must sum to <= 1 (one child at most is accepted), got row sums {sums}")
    return a


def _cost_table(cost, budget: int) -> np.ndarray:
    """Validates a relative step cost curve (1-D, finite, > 0, cost[0] == 1, covering 0..budget); float64 [len]."""
    try:
        c = np.array(cost, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"cost must be a 1-D float sequence, got {cost!r}") from None
    if c.ndim != 1:
        raise ValueError(f"cost must be 1-D (cost[n] for n draft nodes), got shape {c.shape}")
    if c.size < budget + 1:
        raise ValueError(f"cost has {c.size} entries but covers only up to {c.size - 1} nodes; "
                         f"{budget + 1} are needed for {budget} nodes")
    if not np.isfinite(c).all():
        raise ValueError("cost has non-finite values")
    if (c <= 0).any():
        raise ValueError(f"cost values must be > 0, got min {c.min()}")
    if abs(c[0] - 1.0) > 1e-6:
        raise ValueError(f"cost[0] must be 1 (costs are relative to a plain step), got {c[0]}; divide by cost[0]")
    return c


def _best_size(values_N: np.ndarray, cost: np.ndarray) -> int:
    """The smallest n maximising (1 + values_N[n]) / cost[n] (ties within 1e-12 relative go to fewer nodes)."""
    rate = (1.0 + values_N) / cost[:values_N.size]
    return int(np.flatnonzero(rate >= rate.max() * (1 - 1e-12))[0])


def _pad_root(paths: list[tuple[int, ...]], size: int) -> list[tuple[int, ...]]:
    """paths plus extra root children (the next free ranks) up to `size` nodes."""
    first = sum(len(p) == 1 for p in paths)
    return paths + [(r,) for r in range(first, first + size - len(paths))]


def optimal_values(table: np.ndarray, budget: int, max_depth: int) -> tuple[np.ndarray, list]:
    """The Sequoia DP on a validated float64 [Dp, R] table.

    Returns (values [budget + 1], tables): values[n] is the best expected accepted value of a tree with at most n
    nodes, which is also the best with exactly n (extra root children never lower the value); tables feed
    `optimal_paths`.
    F_d[n]: the best value below a node at depth d with at most n nodes under it (F_{max_depth} = 0).
    G_d[k, n]: the best for children of ranks 0..k-1 (all present) sharing at most n nodes,
      G_d[k, n] = max_{1 <= m <= n} G_d[k-1, n-m] + a_d[k-1] * (1 + F_{d+1}[m-1]),   G_d[0, n] = 0,
    where a_d is the row for depth d + 1; F_d[n] = max_k G_d[k, n]; values = F_0.
    """
    if not is_int(budget) or budget < 1:
        raise ValueError(f"budget must be an int >= 1, got {budget!r}")
    if not is_int(max_depth) or max_depth < 1:
        raise ValueError(f"max_depth must be an int >= 1, got {max_depth!r}")
    B, D = int(budget), int(max_depth)
    Dp, R = table.shape
    n = np.arange(B + 1)
    rest = n[:, None] - np.arange(1, B + 1)[None, :]                 # [B+1, B] n - m for child subtree size m
    valid = rest >= 0
    rest = np.maximum(rest, 0)
    F = np.zeros(B + 1)                                               # F_{d+1}, starting at d + 1 = max_depth
    tables = [None] * D
    for d in range(D - 1, -1, -1):
        a = table[min(d, Dp - 1)]
        ranks = int(np.flatnonzero(a).max()) + 1 if a.any() else 0  # ranks past the last nonzero add nothing
        ranks = min(ranks, B)
        G = np.full((ranks + 1, B + 1), -np.inf)
        G[0] = 0.0
        M = np.zeros((ranks + 1, B + 1), np.int64)                    # argmax child subtree size m
        h = a[:, None] * (1.0 + F[None, :B])                          # [R, B] value of a rank-r child with m nodes
        for k in range(1, ranks + 1):
            cand = np.where(valid, G[k - 1][rest] + h[k - 1][None, :], -np.inf)
            best = cand.argmax(1)
            G[k] = cand[n, best]
            M[k] = best + 1
        F = G.max(0)
        tables[d] = (G, M)
    return F, tables


def optimal_paths(tables: list, size: int) -> list[tuple[int, ...]]:
    """Rank paths of a best tree with at most `size` nodes (0 <= size <= budget), from `optimal_values`' tables."""
    D = len(tables)
    paths: list[tuple[int, ...]] = []

    def build(d: int, left: int, prefix: tuple[int, ...]):
        if d == D or left == 0:
            return
        G, M = tables[d]
        k = int(G[:, left].argmax())         # fewest children among the best: zero-gain nodes only where needed
        sizes = []
        for j in range(k, 0, -1):
            sizes.append(int(M[j, left]))
            left -= sizes[-1]
        for rank, m in enumerate(reversed(sizes)):
            paths.append(prefix + (rank,))
            build(d + 1, m - 1, prefix + (rank,))

    build(0, size, ())
    return paths
