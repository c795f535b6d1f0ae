"""Multi-draft tree verification by recursive rejection over siblings: lossless for any tree, branch-free.

Independent draws (SpecInfer, Miao et al. 2024): child k of a node was drawn from its own q_k; it is accepted with
probability min(1, r(x_k) / q_k(x_k)), and on rejection the residual becomes r <- norm(max(0, r - q_k)).
Draws without replacement (Sequoia, Chen et al. 2024): the siblings are successive draws from one q with the earlier
ones removed; after a rejection r <- norm(max(0, r - q)) and q <- norm(q with x_k removed). The first accepted child
is walked into; below a node where every child is rejected the correction is drawn from its residual.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from spectax.sampling import Sampler, SamplingParams, split_rows, uniform_rows
from spectax.step_types import Draft
from spectax.tree import DraftTree
from spectax.verify.residual import accepts, at, draw, residual, target_probs, without
from spectax.verify.verdict import Verdict, walk


def verify_multi_draft(logits_BTV, draft: Draft, tree: DraftTree, keys_B, sampler: Sampler,
                       params: SamplingParams) -> Verdict:
    """logits_BTV: float [B, 1 + N, V] target logits at the root and every node. `draft.continues(tree)` says how
    each sibling was drawn (see the module docstring); `draft.q_BNV` is None for deterministic drafts.
    keys_B: key [B], one per row."""
    B, T, V = logits_BTV.shape
    keys_BR = split_rows(keys_B, tree.max_children + 1)
    r_BTV = target_probs(logits_BTV, sampler, params)     # residual below every step position, all in parallel
    q_BNV = draft.probs(V, tree)
    cont_N = draft.continues(tree)                        # static: node n continues its previous sibling's draws
    children_TR = tree.children                           # numpy [T, K] step indices, -1 padded
    accepted_BT = jnp.full((B, T), -1, jnp.int32)
    q_cur_BTV = None                                      # the law of each step position's next draw w/o replacement
    for k in range(children_TR.shape[1]):
        child_T = children_TR[:, k]
        node_T = jnp.maximum(child_T - 1, 0)
        x_BT = draft.tokens_BN[:, node_T]
        q_BTV = q_BNV[:, node_T]
        cont_T = cont_N[np.maximum(child_T - 1, 0)] & (child_T >= 0)
        if cont_T.any():
            q_BTV = jnp.where(jnp.asarray(cont_T)[None, :, None], q_cur_BTV, q_BTV)
        u_BT = uniform_rows(keys_BR[:, k], (T,))
        q_x = at(q_BTV, x_BT)
        # a token its q could not have produced (a filler when fewer tokens are allowed than siblings) is no draw
        trial_BT = (accepted_BT < 0) & jnp.asarray(child_T >= 0)[None, :] & (q_x > 0)
        ok_BT = trial_BT & accepts(u_BT, at(r_BTV, x_BT), q_x)
        accepted_BT = jnp.where(ok_BT, jnp.asarray(child_T)[None, :], accepted_BT)
        rejected = (trial_BT & ~ok_BT)[..., None]
        r_BTV = jnp.where(rejected, residual(r_BTV, q_BTV), r_BTV)
        if cont_N.any():
            q_cur_BTV = jnp.where(rejected, without(q_BTV, x_BT), q_BTV)
    path_BD, n_accepted, last_B = walk(accepted_BT, tree)
    r_last_BV = jnp.take_along_axis(r_BTV, last_B[:, None, None], axis=1)[:, 0]
    return Verdict(path_BD=path_BD, n_accepted=n_accepted, next_root=draw(r_last_BV, keys_BR[:, -1]))
