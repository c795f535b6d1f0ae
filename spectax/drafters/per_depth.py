"""Proposals from one distribution per tree depth (heads, block drafters): node (depth d, rank r) holds depth d's
r-th candidate, whatever its parent."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from spectax.sampling import gumbel_rows, top_k, warp
from spectax.step_types import Draft
from spectax.tree import DraftTree


def propose_per_depth(logits_BDV: jax.Array, vocab_ids: jax.Array, tree: DraftTree, keys_B, spec, sampling,
                      depth_B: jax.Array | None = None) -> Draft:
    """Fills the tree from logits_BDV (float32 [B, D, V']: depth d + 1's logits (row d) over the draft vocabulary
    vocab_ids,
    int32 [V'] target ids; D >= tree.max_depth).

    Greedy: node (d, r) gets depth d's r-th best token. Sampling: depth d's R = max children draws without
    replacement (Gumbel top-R over the warped distribution q_d, from keys_B[b] for row b); the rank-r sibling is the
    r-th draw, and every node at depth d records q_d (zero outside V', so verification stays lossless over the full
    vocabulary). The rule the verifier applies is without replacement (Draft.continues): sibling r > 0 was drawn
    from q_d with its earlier siblings' tokens removed. Nodes of one depth under different parents repeat the same
    draws, which keeps each node's token a draw from its recorded q given the path to it."""
    R = tree.max_children
    depth_N, rank_N = jnp.asarray(tree.depth - 1), jnp.asarray(tree.child_rank)
    if spec.sampler.greedy:
        _, top_BDR = top_k(logits_BDV, R, spec.vocab_shards)
        return Draft(tokens_BN=vocab_ids[top_BDR[:, depth_N, rank_N]], depth_B=depth_B)
    logq_BDV = jax.nn.log_softmax(warp(logits_BDV, spec.sampler, sampling), axis=-1)
    noisy_BDV = logq_BDV + gumbel_rows(keys_B, logq_BDV.shape[1:])
    _, top_BDR = top_k(noisy_BDV, R, spec.vocab_shards)                              # draws without replacement
    B, D = logits_BDV.shape[:2]
    q_BDV = jnp.zeros((B, D, spec.vocab_size), jnp.float32).at[:, :, vocab_ids].set(jnp.exp(logq_BDV))
    return Draft(tokens_BN=vocab_ids[top_BDR[:, depth_N, rank_N]], q_BNV=q_BDV[:, depth_N], without_replacement=True,
                 depth_B=depth_B)


def check_vocab_ids(ids: np.ndarray, vocab_size: int) -> jax.Array:
    """int32 [V']: a validated draft vocabulary (distinct ids in [0, vocab_size))."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"the draft vocabulary must be a non-empty int [V'] array, got {ids.dtype} {ids.shape}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"draft vocabulary ids must be in the target's vocabulary [0, {vocab_size}), got "
                         f"[{ids.min()}, {ids.max()}]")
    if np.unique(ids).size != ids.size:
        raise ValueError("draft vocabulary ids must be distinct")
    return jnp.asarray(ids, jnp.int32)


def check_per_depth(tree: DraftTree, vocab_ids, vocab_size: int, depths: int, what: str) -> None:
    """ValueError unless `tree` is a non-empty DraftTree at most `depths` deep (`what` has one distribution per
    depth) whose sibling count fits the draft vocabulary `vocab_ids` (distinct ids in [0, vocab_size))."""
    if not isinstance(tree, DraftTree) or tree.num_nodes == 0:
        raise ValueError(f"{what} need a non-empty DraftTree, got {tree!r}")
    if tree.max_depth > depths:
        raise ValueError(f"the tree is {tree.max_depth} deep but there are only {depths} {what}")
    ids = np.asarray(vocab_ids)
    check_vocab_ids(ids, vocab_size)
    if tree.max_children > ids.size:
        raise ValueError(f"the tree has {tree.max_children} siblings under one node but the draft vocabulary only "
                         f"{ids.size} tokens")
