"""Replay: a controlled-acceptance chain drafter that replays a known continuation, corrupting tokens at a set rate.

Replaying the plain greedy output as the draft of a greedy decode makes every uncorrupted token an exact match, so the
acceptance rate is 1 - corrupt at every depth: the tool for measuring the loop's own overhead at a chosen tau.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spectax.sampling import split_rows, uniform_rows
from spectax.sharding import axes
from spectax.step_types import Draft
from spectax.tree import DraftTree


@struct.dataclass
class ReplayState:
    pos_B: jax.Array = axes("batch")   # int32 [B] each row's reference index of the root's successor


@struct.dataclass
class Replay:
    """reference_BO: int32 [B, R] each row's expected new tokens (reference[:, 0] is the prefill's token).
    corrupt: float32 [] probability that a draft token is replaced by a different, random one."""

    reference_BO: jax.Array = axes("batch", None)
    corrupt: jax.Array = axes()
    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree.chain(4))
    target_layers = ()
    follows_any_path = True

    @classmethod
    def create(cls, reference, corrupt: float, tree: DraftTree) -> "Replay":
        """Validates the arguments (ValueError) and builds the drafter."""
        ref = np.asarray(reference)
        if ref.ndim != 2 or not np.issubdtype(ref.dtype, np.integer) or ref.shape[0] < 1 or ref.shape[1] < 1:
            raise ValueError(f"reference must be int [B >= 1, R >= 1], got {ref.dtype} {ref.shape}")
        if ref.min() < 0 or ref.max() > np.iinfo(np.int32).max:
            raise ValueError(f"reference token ids must be int32 ids >= 0, got [{ref.min()}, {ref.max()}]")
        _check_corrupt(corrupt)
        return cls(reference_BO=jnp.asarray(ref, jnp.int32), corrupt=jnp.float32(corrupt), tree=tree)

    def check(self, target, batch: int | None = None) -> None:
        """ValueError unless the tree is a chain, the reference ids are in the target's vocabulary and the reference
        has one row per batch row (when `batch` is known)."""
        if not self.tree.is_chain:
            raise ValueError(f"Replay drafts chains only, got {self.tree!r}")
        ref = np.asarray(self.reference_BO)
        if ((ref < 0) | (ref >= target.config.vocab_size)).any():
            raise ValueError(f"reference token ids must be in [0, {target.config.vocab_size})")
        if batch is not None and ref.shape[0] != batch:
            raise ValueError(f"Replay reference has {ref.shape[0]} rows for a batch of {batch} rows")

    def init(self, target, prompt_BP, prompt_len_B, out, cache_size, spec):
        """Every row starts at reference index 1 (check() matched the batch)."""
        return ReplayState(pos_B=jnp.ones((prompt_BP.shape[0],), jnp.int32))

    def propose(self, state: ReplayState, history, keys_B, spec, sampling):
        pos_B = state.pos_B
        N, V = self.tree.num_nodes, spec.vocab_size
        keys_B2 = split_rows(keys_B, 2)
        idx = jnp.minimum(pos_B[:, None] + jnp.arange(N)[None, :], self.reference_BO.shape[1] - 1)
        tokens = jnp.take_along_axis(self.reference_BO, idx, axis=1)
        wrong = (tokens + jax.vmap(lambda k: jax.random.randint(k, (N,), 1, V))(keys_B2[:, 1])) % V
        bad = uniform_rows(keys_B2[:, 0], (N,)) < self.corrupt
        return Draft(tokens_BN=jnp.where(bad, wrong, tokens)), state

    def update(self, state: ReplayState, verdict, new_tokens_BC, out, active_B) -> ReplayState:
        return ReplayState(pos_B=state.pos_B + jnp.where(active_B, verdict.n_accepted + 1, 0))


def _check_corrupt(corrupt) -> None:
    """ValueError unless `corrupt` is a real, finite number in [0, 1] (bools, strings and NaN are not)."""
    real = isinstance(corrupt, (int, float, np.integer, np.floating)) and not isinstance(corrupt, (bool, np.bool_))
    if not real or not 0.0 <= float(corrupt) <= 1.0:
        raise ValueError(f"Replay corrupt must be a number in [0, 1], got {corrupt!r}")
