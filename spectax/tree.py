"""DraftTree: the static shape of a step's draft (a chain is a degenerate tree; zero nodes is plain decoding)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class DraftTree:
    """N draft nodes below the root (the last committed token, not counted).

    parents[i] is node i's parent: -1 for the root, else an earlier node index (nodes are in topological order).
    Frozen and hashable: a tree is a static jit argument, its derived arrays are numpy constants.
    """

    parents: tuple[int, ...] = ()

    def __post_init__(self):
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i} has parent {p}; parents must be -1 (root) or an earlier node")

    @classmethod
    def none(cls) -> "DraftTree":
        """The empty tree: plain decoding."""
        return cls(())

    @classmethod
    def chain(cls, k: int) -> "DraftTree":
        """k draft tokens in a line."""
        if k < 0:
            raise ValueError(f"chain length must be >= 0, got {k}")
        return cls(tuple(range(-1, k - 1)))

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @functools.cached_property
    def depth(self) -> np.ndarray:
        """int32 [N] depth of each node (children of the root have depth 1)."""
        d = np.zeros(self.num_nodes, np.int32)
        for i, p in enumerate(self.parents):
            d[i] = 1 if p < 0 else d[p] + 1
        return d

    @property
    def max_depth(self) -> int:
        return int(self.depth.max()) if self.num_nodes else 0

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
    def step_depth(self) -> np.ndarray:
        """int32 [1 + N] position offset of each step token from the root's position."""
        return np.concatenate([[0], self.depth]).astype(np.int32)
