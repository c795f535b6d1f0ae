"""NGram: model-free drafts from each row's own history (prompt lookup), matched on device inside the loop.

Each step, for every row, the last n tokens of its history (prompt + output so far, the root included) are searched
for in the earlier history, for every n from max_n down to min_n at once (a [B, max_n, H] comparison, no host round
trip). A match of length n ending at position t proposes what followed it: h[t + 1], h[t + 2], ... where the copy
runs into the row's present it continues periodically (the match says the text repeats with period L - 1 - t, so
"a b a b" proposes "a b a b ..."), so every match fills a chain of any depth.

Candidates are the `occurrences` latest matches for each n, ranked by (n, recency): longer and later first. The tree
is filled as the top of the candidates' trie: a node's token is the r-th distinct next token, in candidate order,
among the candidates that agree with its ancestors (r its child rank). A node with no such candidate repeats its
first sibling (never accepted over it). Drafts are deterministic (one-hot q), so every verifier stays lossless.

Adaptive length: a row whose longest match has n tokens offers the tree down to depth depth_by_n[n - min_n] (0 when
no match of >= min_n tokens exists); the loop then runs the shallowest of the drafter's depth cuts that covers every
active row, and a plain step when no row matched (see loop.step and Draft.depth_B).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from spectax.checks import is_int
from spectax.step_types import Draft
from spectax.tree import DraftTree


@struct.dataclass
class NGram:
    """Prompt-lookup drafts (see the module docstring).

    max_n >= min_n >= 1: the n-gram lengths matched; occurrences: the latest matches kept per n (candidates for
    sibling branches); tree: the static draft tree (BFS order, so it can be truncated by depth); depth_by_n: the
    depth offered after a longest match of n = min_n .. max_n tokens (default: the whole tree for every n).
    """

    max_n: int = struct.field(pytree_node=False, default=4)
    min_n: int = struct.field(pytree_node=False, default=1)
    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree.chain(4))
    occurrences: int = struct.field(pytree_node=False, default=1)
    depth_by_n: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    target_layers = ()
    follows_any_path = True

    def __post_init__(self):
        for name in ("max_n", "min_n", "occurrences"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ValueError(f"NGram.{name} must be an int >= 1, got {v!r}")
        if self.max_n < self.min_n:
            raise ValueError(f"NGram.max_n ({self.max_n}) must be >= min_n ({self.min_n})")
        if not isinstance(self.tree, DraftTree) or self.tree.num_nodes == 0:
            raise ValueError(f"NGram needs a non-empty DraftTree, got {self.tree!r}")
        if self.depth_by_n is not None:
            depths = tuple(self.depth_by_n)
            if len(depths) != self.max_n - self.min_n + 1 or not all(is_int(d) and 0 <= d for d in depths):
                raise ValueError(f"NGram.depth_by_n must hold one int depth >= 0 per n in [{self.min_n}, "
                                 f"{self.max_n}], got {self.depth_by_n!r}")
            object.__setattr__(self, "depth_by_n", tuple(min(int(d), self.tree.max_depth) for d in depths))
            for d in set(self.depth_by_n):
                self.tree.truncated(d)                                  # ValueError unless ordered by depth

    @property
    def cuts(self) -> tuple[int, ...]:
        """The depths the loop may truncate the tree to: no speculation, and every depth depth_by_n offers."""
        return (0,) + (self.depth_by_n or ())

    # ------------------------------------------------------------------------------------------- drafter contract

    def check(self, target, batch: int | None = None) -> None:
        """Any target and batch: the drafter reads only token ids."""

    def init(self, target, prompt_BP, prompt_len_B, out, cache_size, spec) -> tuple:
        """No state: the drafter reads the loop's token history."""
        return ()

    def propose(self, state: tuple, history, keys_B, spec, sampling):
        """Matches the end of each row's history (the root included) and fills the tree from the candidates' trie."""
        cand_BMD, found_BM, n_best_B = self._candidates(history.tokens_BW, history.length_B)
        tokens_BN = self._fill(cand_BMD, found_BM)
        if self.depth_by_n is None:
            depth_B = jnp.where(n_best_B > 0, self.tree.max_depth, 0)
        else:
            table = jnp.asarray((0,) * self.min_n + self.depth_by_n, jnp.int32)     # [max_n + 1] by match length
            depth_B = table[n_best_B]
        draft = Draft(tokens_BN=tokens_BN, depth_B=depth_B.astype(jnp.int32), cuts=self.cuts)
        return draft, state

    def update(self, state: tuple, verdict, new_tokens_BC, out, active_B) -> tuple:
        """Nothing to catch up on: the loop's history holds the committed tokens."""
        return state

    # ------------------------------------------------------------------------------------------------- matching

    def _candidates(self, history_BW, L_B):
        """The ranked candidates: (int32 [B, M, D] continuations, bool [B, M] found, int32 [B] longest match n or 0).

        M = (max_n - min_n + 1) * occurrences, ordered by n (longest first), then recency."""
        B, H = history_BW.shape
        D, n_occ = self.tree.max_depth, self.occurrences
        t_W = jnp.arange(H)
        padded = jnp.concatenate([jnp.full((B, self.max_n), -1, jnp.int32), history_BW], axis=1)
        match_BW = (t_W[None, :] <= L_B[:, None] - 2)                    # an earlier end, with a token after it
        ends, found, n_found = [], [], []
        for m in range(self.max_n):                                      # suffix token m back from the root
            suffix_B = jnp.take_along_axis(history_BW, jnp.maximum(L_B - 1 - m, 0)[:, None], axis=1)
            shifted_BW = padded[:, self.max_n - m:self.max_n - m + H]    # history[t - m], -1 before the start
            match_BW = match_BW & (shifted_BW == suffix_B) & (L_B[:, None] > m)
            n = m + 1
            if n >= self.min_n:
                score_BW = jnp.where(match_BW, t_W[None, :], -1)
                latest = []                                              # the n_occ latest ends of an n-token match
                for _ in range(n_occ):                                       # (n_occ max-reductions: far cheaper than a
                    latest.append(jnp.max(score_BW, axis=1))             # top_k over H on CPU)
                    score_BW = jnp.where(score_BW >= latest[-1][:, None], -1, score_BW)
                latest_BM = jnp.stack(latest, axis=1)
                ends.append(latest_BM)
                found.append(latest_BM >= 0)
                n_found.append(jnp.where(latest_BM[:, 0] >= 0, n, 0))
        end_BM = jnp.concatenate(ends[::-1], axis=1)                     # longest n first
        found_BM = jnp.concatenate(found[::-1], axis=1)
        n_best_B = jnp.max(jnp.stack(n_found, axis=1), axis=1)
        period_BM = jnp.maximum(L_B[:, None] - 1 - end_BM, 1)           # the copy repeats with this period
        i_D = jnp.arange(D)
        src_BMD = end_BM[..., None] + 1 + i_D[None, None, :] % period_BM[..., None]
        cand_BMD = jnp.take_along_axis(history_BW[:, None, :], jnp.clip(src_BMD, 0, H - 1), axis=2)
        return cand_BMD, found_BM, n_best_B

    def _fill(self, cand_BMD, found_BM) -> jax.Array:
        """int32 [B, N]: node tokens from the candidates' trie (see the module docstring)."""
        tree = self.tree
        B, M, _ = cand_BMD.shape
        earlier_MM = jnp.tril(jnp.ones((M, M), bool), -1)                # [m, m']: m' comes before m
        agree = {-1: found_BM}                                           # node -> candidates on its path
        tokens = []
        for i in range(tree.num_nodes):
            parent, d, r = int(tree.parent[i]), int(tree.depth[i]), int(tree.child_rank[i])
            cons_BM = agree[parent]
            tok_BM = cand_BMD[:, :, d - 1]
            same_BMM = (tok_BM[:, :, None] == tok_BM[:, None, :]) & cons_BM[:, None, :] & earlier_MM[None]
            first_BM = cons_BM & ~same_BMM.any(-1)                       # first candidate of each distinct token
            nth_BM = jnp.cumsum(first_BM, axis=1) - 1
            pick_BM = first_BM & (nth_BM == r)
            pick_BM = jnp.where(pick_BM.any(-1, keepdims=True), pick_BM, first_BM & (nth_BM == 0))
            token_B = jnp.sum(jnp.where(pick_BM, tok_BM, 0), axis=1)
            agree[i] = cons_BM & (tok_BM == token_B[:, None])
            tokens.append(token_B)
        return jnp.stack(tokens, axis=1).astype(jnp.int32)
