"""Greedy verification: the deepest draft path whose every token is the target's argmax at its parent."""

from __future__ import annotations

import jax.numpy as jnp

from spectax.step_types import Draft
from spectax.tree import DraftTree
from spectax.verify.verdict import Verdict, deepest_accepted, path_from_best


def verify_greedy(logits_BTV, draft: Draft, tree: DraftTree) -> Verdict:
    """Exact greedy acceptance over any tree: output equals plain greedy decoding token for token.

    logits_BTV: float [B, 1 + N, V] target logits at the root (index 0) and each node; nodes a row does not offer
    (Draft.depth_B) are never accepted.
    """
    target_BT = jnp.argmax(logits_BTV, axis=-1).astype(jnp.int32)
    best_step = deepest_accepted((draft.tokens_BN == target_BT[:, tree.parent + 1]) & draft.live(tree), tree)
    next_root = jnp.take_along_axis(target_BT, best_step[:, None], axis=1)[:, 0]
    return Verdict(path_BD=path_from_best(tree, best_step), n_accepted=jnp.asarray(tree.step_depth)[best_step],
                   next_root=next_root)
