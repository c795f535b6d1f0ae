"""Sampling with an empty draft: the next token is drawn from the target's warped distribution at the root."""

from __future__ import annotations

import jax.numpy as jnp

from spectax.sampling import Sampler, SamplingParams, sample
from spectax.tree import DraftTree
from spectax.verify.verdict import Verdict


def verify_sample_root(logits_BTV, draft_BN, tree: DraftTree, rng, sampler: Sampler,
                       params: SamplingParams) -> Verdict:
    """Plain sampling as a verifier (zero-node trees only; speculative sampling verifies non-empty drafts)."""
    if tree.num_nodes:
        raise ValueError("verify_sample_root verifies only the empty tree")
    B = logits_BTV.shape[0]
    return Verdict(path_BD=jnp.zeros((B, 0), jnp.int32), n_accepted=jnp.zeros((B,), jnp.int32),
                   next_root=sample(logits_BTV[:, 0], rng, sampler, params))
