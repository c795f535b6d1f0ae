"""Greedy verification: the deepest draft path whose every token is the target's argmax at its parent."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from spectax.tree import DraftTree
from spectax.verify.verdict import Verdict, path_from_best


def verify_greedy(logits_BTV, draft_BN, tree: DraftTree) -> Verdict:
    """Exact greedy acceptance over any tree: output equals plain greedy decoding token for token.

    logits_BTV: float [B, 1 + N, V] target logits at the root (index 0) and each node. draft_BN: int32 [B, N].
    """
    target_BT = jnp.argmax(logits_BTV, axis=-1).astype(jnp.int32)
    if tree.num_nodes == 0:
        B = logits_BTV.shape[0]
        return Verdict(path_BD=jnp.zeros((B, 0), jnp.int32), n_accepted=jnp.zeros((B,), jnp.int32),
                       next_root=target_BT[:, 0])
    parent_step = np.asarray(tree.parents) + 1                          # [N] step index of each node's parent
    match_BN = draft_BN == target_BT[:, parent_step]
    ancestors_NN = jnp.asarray(tree.step_mask[1:, 1:])                  # node sees itself and its node ancestors
    ok_BN = jnp.all(jnp.where(ancestors_NN[None], match_BN[:, None, :], True), axis=-1)
    depth_N = jnp.asarray(tree.depth)
    score_BN = jnp.where(ok_BN, depth_N[None, :], 0)
    best_step = jnp.where(ok_BN.any(-1), jnp.argmax(score_BN, axis=-1) + 1, 0).astype(jnp.int32)
    n_accepted = jnp.asarray(tree.step_depth)[best_step]
    next_root = jnp.take_along_axis(target_BT, best_step[:, None], axis=1)[:, 0]
    return Verdict(path_BD=path_from_best(tree, best_step), n_accepted=n_accepted, next_root=next_root)
