"""Replay: a controlled-acceptance chain drafter that replays a known continuation, corrupting tokens at a set rate.

Replaying the plain greedy output as the draft of a greedy decode makes every uncorrupted token an exact match, so the
acceptance rate is 1 - corrupt at every depth: the tool for measuring the loop's own overhead at a chosen tau.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spectax.drafters.base import Draft
from spectax.tree import DraftTree


@struct.dataclass
class Replay:
    """reference_BR: int32 [B, R] each row's expected new tokens (reference[:, 0] is the prefill's token).
    corrupt: float32 [] probability that a draft token is replaced by a different, random one."""

    reference_BR: jax.Array
    corrupt: jax.Array
    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree.chain(4))

    @classmethod
    def create(cls, reference, corrupt: float, tree: DraftTree) -> "Replay":
        """Validates the arguments (ValueError) and builds the drafter."""
        ref = np.asarray(reference)
        if ref.ndim != 2 or not np.issubdtype(ref.dtype, np.integer) or ref.shape[1] < 1:
            raise ValueError(f"reference must be int [B, R >= 1], got {ref.dtype} {ref.shape}")
        if not 0.0 <= corrupt <= 1.0:
            raise ValueError(f"corrupt must be in [0, 1], got {corrupt!r}")
        return cls(reference_BR=jnp.asarray(ref, jnp.int32), corrupt=jnp.float32(corrupt), tree=tree)

    def check(self, target_config) -> None:
        """ValueError unless the tree is a chain and the reference ids are in the target's vocabulary."""
        if not self.tree.is_chain:
            raise ValueError(f"Replay drafts chains only, got {self.tree!r}")
        ref = np.asarray(self.reference_BR)
        if ((ref < 0) | (ref >= target_config.vocab_size)).any():
            raise ValueError(f"reference token ids must be in [0, {target_config.vocab_size})")

    def init(self, prompt_BP, prompt_len_B, cache_size, spec):
        if prompt_BP.shape[0] != self.reference_BR.shape[0]:
            raise ValueError(f"reference has {self.reference_BR.shape[0]} rows for a batch of {prompt_BP.shape[0]}")
        return jnp.ones((prompt_BP.shape[0],), jnp.int32)        # [B] reference index of the root's successor

    def propose(self, pos_B, root_B, rng, spec, sampling):
        B, N, V = root_B.shape[0], self.tree.num_nodes, spec.vocab_size
        k_bad, k_tok = jax.random.split(rng)
        idx = jnp.minimum(pos_B[:, None] + jnp.arange(N)[None, :], self.reference_BR.shape[1] - 1)
        tokens = jnp.take_along_axis(self.reference_BR, idx, axis=1)
        wrong = (tokens + jax.random.randint(k_tok, (B, N), 1, V)) % V
        bad = jax.random.uniform(k_bad, (B, N)) < self.corrupt
        return Draft(tokens_BN=jnp.where(bad, wrong, tokens)), pos_B

    def update(self, pos_B, verdict, new_tokens_BC, hidden_BTD, active_B):
        return pos_B + jnp.where(active_B, verdict.n_accepted + 1, 0)
