"""The drafter contract and the empty drafter (plain decoding through the same loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from spectax.tree import DraftTree


@struct.dataclass
class Draft:
    """One step's proposal: a token per tree node and, for sampled drafts, the distribution each was drawn from.

    q_BNV[b, n] is the (warped) draft distribution node n's token was drawn from; None means the tokens are
    deterministic (the verifiers then use a one-hot q). without_replacement: the siblings of each node are successive
    draws from their shared q with earlier draws removed (Sequoia); otherwise each node is an independent draw.
    """

    tokens_BN: jax.Array                                   # int32 [B, N] node tokens in the tree's node order
    q_BNV: jax.Array | None = None                         # float32 [B, N, V]
    without_replacement: bool = struct.field(pytree_node=False, default=False)

    def probs(self, vocab_size: int) -> jax.Array:
        """float32 [B, N, V]: q, or one-hot on the tokens for a deterministic draft."""
        if self.q_BNV is None:
            return jax.nn.one_hot(self.tokens_BN, vocab_size, dtype=jnp.float32)
        return self.q_BNV


@struct.dataclass
class NoDraft:
    """A drafter is a pytree (its models' params are leaves; its tree and settings are static) with:

    check(target_config) -> None                             (ValueError on a draft that cannot serve this target)
    init(prompt_BP, prompt_len_B, cache_size, spec) -> state (its own prefill, in the program before the loop)
    propose(state, root_B, rng, spec, sampling) -> (Draft, state)  (fills the tree's N nodes)
    update(state, verdict, new_tokens_BC, hidden_BTD, active_B) -> state  (catches up on the accepted path)
    NoDraft proposes nothing: plain decoding.
    """

    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree())

    def check(self, target_config) -> None:
        """Every target can be decoded without a draft."""

    def init(self, prompt_BP, prompt_len_B, cache_size, spec):
        return ()

    def propose(self, state, root_B, rng, spec, sampling):
        return Draft(tokens_BN=jnp.zeros((root_B.shape[0], 0), jnp.int32)), state

    def update(self, state, verdict, new_tokens_BC, hidden_BTD, active_B):
        return state
