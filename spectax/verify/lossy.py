"""Lossy acceptance rules: faster, not distribution-preserving. Used only when decode() is given one explicitly."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from spectax.sampling import Sampler, SamplingParams, sample
from spectax.step_types import Draft
from spectax.tree import DraftTree
from spectax.verify.residual import at, target_probs
from spectax.verify.verdict import Verdict, deepest_accepted, path_from_best


@dataclasses.dataclass(frozen=True)
class Typical:
    """Typical acceptance (Medusa, Cai et al. 2024): a node is accepted when the target gives its token probability
    above min(epsilon, delta * exp(-entropy)) at its parent."""

    epsilon: float = 0.09
    delta: float = 0.3
    min_block: ClassVar[int] = 0      # no minimum block: every node must pass

    def __post_init__(self):
        """ValueError unless epsilon and delta are real numbers in (0, 1] (numpy scalars too; bools and NaN are
        not); stores them as Python floats, so equal rules hash alike (the rule is a static jit argument)."""
        for name in ("epsilon", "delta"):
            v = getattr(self, name)
            real = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            if not real or not 0 < float(v) <= 1:
                raise ValueError(f"Typical.{name} must be a number in (0, 1], got {v!r}")
            object.__setattr__(self, name, float(v))

    def accepts(self, logits_BNV, tokens_BN, sampler: Sampler, params: SamplingParams) -> jax.Array:
        """bool [B, N]: whether each node's token passes at its parent's logits."""
        p = target_probs(logits_BNV, sampler, params)
        entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
        return at(p, tokens_BN) > jnp.minimum(self.epsilon, self.delta * jnp.exp(-entropy))


@dataclasses.dataclass(frozen=True)
class TopKMatch:
    """Approximate match (blockwise parallel decoding, Stern et al. 2018): a node is accepted when its token is
    among the target's top k at its parent; with `min_block` (Stern's minimum block size) every node at depth <=
    min_block is accepted whatever its token, so a step commits at least that many draft tokens."""

    k: int = 2
    min_block: int = 0

    def __post_init__(self):
        """ValueError unless k is an int >= 1 (numpy ints too, not bools); stored as a Python int. decode() checks
        k <= the target's vocabulary."""
        if not isinstance(self.k, (int, np.integer)) or isinstance(self.k, (bool, np.bool_)) or self.k < 1:
            raise ValueError(f"TopKMatch.k must be an int >= 1, got {self.k!r}")
        if not isinstance(self.min_block, (int, np.integer)) or isinstance(self.min_block, (bool, np.bool_)) \
                or self.min_block < 0:
            raise ValueError(f"TopKMatch.min_block must be an int >= 0, got {self.min_block!r}")
        object.__setattr__(self, "k", int(self.k))
        object.__setattr__(self, "min_block", int(self.min_block))

    def accepts(self, logits_BNV, tokens_BN, sampler: Sampler, params: SamplingParams) -> jax.Array:
        """bool [B, N]: whether each node's token ranks below k at its parent's logits."""
        above = jnp.sum(logits_BNV > at(logits_BNV, tokens_BN)[..., None], axis=-1)
        return above < self.k


LOSSY_RULES = (Typical, TopKMatch)


def verify_lossy(logits_BTV, draft: Draft, tree: DraftTree, keys_B, sampler: Sampler, params: SamplingParams,
                 rule) -> Verdict:
    """The deepest path whose every node passes `rule`, then the target's own token (argmax or a draw) after it."""
    ok_BN = rule.accepts(logits_BTV[:, tree.parent + 1], draft.tokens_BN, sampler, params)
    ok_BN = (ok_BN | jnp.asarray(tree.depth <= rule.min_block)[None]) & draft.live(tree)
    best_step = deepest_accepted(ok_BN, tree)
    last_BV = jnp.take_along_axis(logits_BTV, best_step[:, None, None], axis=1)[:, 0]
    return Verdict(path_BD=path_from_best(tree, best_step), n_accepted=jnp.asarray(tree.step_depth)[best_step],
                   next_root=sample(last_BV, keys_B, sampler, params))
