"""The drafter contract and the empty drafter (plain decoding through the same loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from spectax.tree import DraftTree


@struct.dataclass
class Draft:
    tokens_BN: jax.Array          # int32 [B, N] node tokens in the tree's node order
    q_BNV: jax.Array | None = None  # float32 [B, N, V] draft distributions (sampling only)


@struct.dataclass
class NoDraft:
    """A drafter is a pytree (its models' params are leaves; its tree is static) with:

    init(prompt_BP, prompt_len_B, cache_size) -> state     (its own prefill, outside the loop body)
    propose(state, root_B, rng) -> Draft                    (fills the tree's N nodes)
    update(state, verdict, new_tokens_BC, hidden_BTD) -> state  (catch up on the accepted path)
    NoDraft proposes nothing: plain decoding.
    """

    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree())

    def init(self, prompt_BP, prompt_len_B, cache_size):
        return ()

    def propose(self, state, root_B, rng) -> Draft:
        return Draft(tokens_BN=jnp.zeros((root_B.shape[0], 0), jnp.int32))

    def update(self, state, verdict, new_tokens_BC, hidden_BTD):
        return state
