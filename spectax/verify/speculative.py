"""Speculative sampling on a chain (Leviathan et al. 2023; Chen et al. 2023): lossless, branch-free."""

from __future__ import annotations

import jax.numpy as jnp

from spectax.sampling import Sampler, SamplingParams, split_rows, uniform_rows
from spectax.step_types import Draft
from spectax.tree import DraftTree
from spectax.verify.residual import accepts, at, draw, residual, target_probs
from spectax.verify.verdict import Verdict


def verify_speculative(logits_BTV, draft: Draft, tree: DraftTree, keys_B, sampler: Sampler,
                       params: SamplingParams) -> Verdict:
    """Accepts draft token d with probability min(1, p_d(x_d) / q_d(x_d)) up to the first rejection, then draws the
    correction from norm(max(0, p - q)) there, or the bonus token from p after a fully accepted chain.

    logits_BTV: float [B, 1 + D, V] target logits at the root and each node; the tree must be a chain (or empty).
    keys_B: key [B], one per row.
    Output tokens are distributed exactly as plain sampling from the warped target.
    """
    if tree.num_nodes and not tree.is_chain:
        raise ValueError("verify_speculative verifies chains; use verify_multi_draft for trees")
    B, T, V = logits_BTV.shape
    D = T - 1
    keys_B2 = split_rows(keys_B, 2)
    p_BTV = target_probs(logits_BTV, sampler, params)
    q_BDV = draft.probs(V, tree)                                               # node d's token was drawn from q_d
    x_BE = draft.tokens_BN
    ok_BD = accepts(uniform_rows(keys_B2[:, 0], (D,)), at(p_BTV[:, :D], x_BE), at(q_BDV, x_BE)) & draft.live(tree)
    n_accepted = jnp.sum(jnp.cumprod(ok_BD, axis=1), axis=1).astype(jnp.int32)
    p_at = jnp.take_along_axis(p_BTV, n_accepted[:, None, None], axis=1)[:, 0]          # [B, V]
    if D:
        q_at = jnp.take_along_axis(q_BDV, jnp.minimum(n_accepted, D - 1)[:, None, None], axis=1)[:, 0]
        p_at = jnp.where((n_accepted < D)[:, None], residual(p_at, q_at), p_at)
    path_BD = jnp.where(jnp.arange(D)[None, :] < n_accepted[:, None], jnp.arange(1, D + 1)[None, :], -1)
    return Verdict(path_BD=path_BD.astype(jnp.int32), n_accepted=n_accepted, next_root=draw(p_at, keys_B2[:, 1]))
