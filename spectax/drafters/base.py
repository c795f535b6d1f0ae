"""The empty drafter: plain decoding through the same loop (a tree of zero nodes). The contract every drafter
follows is `spectax.step_types.Drafter`."""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from spectax.step_types import Draft
from spectax.tree import DraftTree


@struct.dataclass
class NoDraft:
    """Proposes nothing: plain decoding (see `spectax.step_types.Drafter` for the contract)."""

    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree())
    target_layers = ()
    follows_any_path = True

    def check(self, target, batch: int | None = None) -> None:
        """Every target and batch can be decoded without a draft."""

    def init(self, target, prompt_BP, prompt_len_B, out, cache_size, spec):
        return ()

    def propose(self, state, history, keys_B, spec, sampling):
        return Draft(tokens_BN=jnp.zeros((history.length_B.shape[0], 0), jnp.int32)), state

    def update(self, state, verdict, new_tokens_BC, out, active_B):
        return state
