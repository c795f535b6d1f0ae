"""Verdict: what a verifier decided for each row of one step, and the path helpers every verifier shares."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from spectax.tree import DraftTree


@struct.dataclass
class Verdict:
    path_BD: jax.Array      # int32 [B, D] step indices (1..N) of the accepted nodes by depth; -1 past n_accepted
    n_accepted: jax.Array   # int32 [B] accepted draft tokens (0..D)
    next_root: jax.Array    # int32 [B] the bonus / correction token (the new root)

    @property
    def last_step(self) -> jax.Array:
        """int32 [B]: the step index of each row's deepest accepted node (0, the root, when none was accepted):
        where the verification forward predicted the bonus / correction token."""
        if self.path_BD.shape[1] == 0:
            return jnp.zeros_like(self.n_accepted)
        deepest = jnp.take_along_axis(self.path_BD, jnp.maximum(self.n_accepted - 1, 0)[:, None], axis=1)[:, 0]
        return jnp.where(self.n_accepted > 0, deepest, 0)

    def new_tokens(self, draft_BN: jax.Array) -> jax.Array:
        """int32 [B, D + 1]: the accepted draft tokens in path order, then the bonus token (garbage past it)."""
        draft_BT = jnp.concatenate([jnp.zeros_like(draft_BN[:, :1]), draft_BN], axis=1)  # step 0 = root slot
        path_tokens = jnp.take_along_axis(draft_BT, jnp.maximum(self.path_BD, 0), axis=1)
        tokens = jnp.concatenate([path_tokens, self.next_root[:, None]], axis=1)
        at_bonus = jnp.arange(tokens.shape[1])[None, :] == self.n_accepted[:, None]
        return jnp.where(at_bonus, self.next_root[:, None], tokens)


def path_from_best(tree: DraftTree, best_step_B: jax.Array) -> jax.Array:
    """int32 [B, D]: the step indices of best_step's ancestors (itself included) ordered by depth, -1 padded."""
    mask = jnp.asarray(tree.step_mask)              # [T, T]
    depth = jnp.asarray(tree.step_depth)            # [T]
    on_path_BT = mask[best_step_B]                  # ancestors of the chosen step (root included)
    levels = jnp.arange(1, tree.max_depth + 1)      # [D]
    hit_BDT = on_path_BT[:, None, :] & (depth[None, None, :] == levels[None, :, None])
    return jnp.where(hit_BDT.any(-1), jnp.argmax(hit_BDT, axis=-1), -1).astype(jnp.int32)


def deepest_accepted(ok_BN: jax.Array, tree: DraftTree) -> jax.Array:
    """int32 [B]: the step index (0 = root) ending the deepest path whose every node is ok (first such on ties)."""
    if tree.num_nodes == 0:
        return jnp.zeros(ok_BN.shape[:1], jnp.int32)
    ancestors_NN = jnp.asarray(tree.ancestor_mask)                      # node sees itself and its node ancestors
    path_ok_BN = jnp.all(jnp.where(ancestors_NN[None], ok_BN[:, None, :], True), axis=-1)
    score_BN = jnp.where(path_ok_BN, jnp.asarray(tree.depth)[None, :], 0)
    return jnp.where(path_ok_BN.any(-1), jnp.argmax(score_BN, axis=-1) + 1, 0).astype(jnp.int32)


def walk(accepted_child_BT: jax.Array, tree: DraftTree) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Follows each row's accepted child from the root down: returns (path_BD, n_accepted_B, last step_B).

    accepted_child_BT: int32 [B, 1 + N] the step index of the child accepted below each step position, -1 if none.
    """
    B = accepted_child_BT.shape[0]
    cur = jnp.zeros((B,), jnp.int32)
    path = []
    for _ in range(tree.max_depth):
        nxt = jnp.take_along_axis(accepted_child_BT, cur[:, None], axis=1)[:, 0]
        path.append(nxt)
        cur = jnp.where(nxt >= 0, nxt, cur)
    path_BD = jnp.stack(path, axis=1) if path else jnp.zeros((B, 0), jnp.int32)
    return path_BD, jnp.sum(path_BD >= 0, axis=1).astype(jnp.int32), cur
