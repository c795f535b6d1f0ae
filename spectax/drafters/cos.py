"""CoS: collaborative decoding via speculation (Fu et al. 2025, ICML): one member of an Ensemble proposes.

The target is the `spectax.Ensemble` itself, so the step's one target call runs every member over the root and the
draft in one parallel pass and combines them into log r; the ordinary lossless verifiers (greedy match, speculative
sampling on chains, multi-draft rejection on trees) then accept against r. The proposer is a `DraftModel` over one
member (default: the one with the fewest parameters) with its own KV cache.

The bonus token. In the paper, after a fully accepted draft the verifying model draws the bonus from its own
distribution and the next round lets the other model propose, so that the bonus is verified against r as the first
token of the next draft (the roles alternate). Here the verification pass already computed every member's logits at
the bonus position, so r there is known exactly: the bonus (or, after a rejection, the correction from the residual
of r) is drawn from r itself and committed at once. That is lossless with no extra round, strictly better than the
alternation (whose first next-round token can still be rejected), so no alternation is needed. Committing a bonus
drawn from a member's own distribution would not be lossless (tests/test_cos.py shows the test catching it).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import struct

from spectax.drafters.draft_model import DraftModel, DraftModelState
from spectax.models.ensemble import Ensemble, num_params
from spectax.tree import DraftTree


@struct.dataclass
class CoS:
    """Speculative collaborative decoding of `ensemble` (pass the same Ensemble as decode()'s model).

    proposer: the index of the proposing member; None picks the member with the fewest parameters (the first of
    equals). tree: the draft tree (a chain by default; trees work too).
    """

    ensemble: Ensemble
    proposer: int | None = struct.field(pytree_node=False, default=None)
    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree.chain(4))
    target_layers = ()
    follows_any_path = False   # its proposer's cache holds its own proposals' K/V

    @property
    def index(self) -> int:
        """The proposing member's index."""
        if self.proposer is not None:
            return self.proposer
        sizes = [num_params(m) for m in self.ensemble.models]
        return sizes.index(min(sizes))

    @property
    def draft(self) -> DraftModel:
        """The DraftModel drafting with the proposing member."""
        return DraftModel(self.ensemble.models[self.index], tree=self.tree)

    def check(self, target, batch: int | None = None) -> None:
        """ValueError unless the target being decoded is this drafter's ensemble (same combination, same members,
        the same params where they are concrete), the proposer exists and its vocabulary fits (DraftModel.check)."""
        if not isinstance(self.ensemble, Ensemble):
            raise ValueError(f"CoS drafts for a spectax.Ensemble, got {type(self.ensemble).__name__}")
        if not _same_ensemble(target, self.ensemble):
            raise ValueError("CoS verifies against its own ensemble: decode that Ensemble (pass it as the model), "
                             f"not a {type(target).__name__} that differs from it")
        n = len(self.ensemble.models)
        if self.proposer is not None and (not isinstance(self.proposer, int) or isinstance(self.proposer, bool)
                                          or not 0 <= self.proposer < n):
            raise ValueError(f"proposer must be None or a member index in [0, {n}), got {self.proposer!r}")
        self.draft.check(target, batch)

    def init(self, target, prompt_BP, prompt_len_B, out, cache_size, spec) -> DraftModelState:
        """The proposer's own prefill (see DraftModel.init)."""
        return self.draft.init(target, prompt_BP, prompt_len_B, out, cache_size, spec)

    def propose(self, state: DraftModelState, history, keys_B, spec, sampling):
        """Fills the tree with the proposer (see DraftModel.propose)."""
        return self.draft.propose(state, history, keys_B, spec, sampling)

    def update(self, state: DraftModelState, verdict, new_tokens_BC, out, active_B) -> DraftModelState:
        """Compacts the accepted path in the proposer's cache (see DraftModel.update)."""
        return self.draft.update(state, verdict, new_tokens_BC, out, active_B)


def _same_ensemble(target, ensemble: Ensemble) -> bool:
    """Whether `target` is `ensemble`: the same static structure (mode, weights, alpha, member configs) and, for
    concrete arrays, the same values (identical arrays pass at once)."""
    if not isinstance(target, Ensemble) or jax.tree_util.tree_structure(target) != jax.tree_util.tree_structure(
            ensemble):
        return False
    for a, b in zip(jax.tree_util.tree_leaves(target), jax.tree_util.tree_leaves(ensemble)):
        if a is b or isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
            continue
        if np.shape(a) != np.shape(b) or not np.array_equal(np.asarray(a), np.asarray(b)):
            return False
    return True
