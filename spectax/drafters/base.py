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
    live_B: None (every row speculates) or bool [B], the rows that speculate this step (a gate, e.g. Cerberus'):
    the verifiers accept no node of another row, whose bonus token is then a plain target token. The loop runs a
    step where no active row is live as a plain step (no tree in the forward).
    """

    tokens_BN: jax.Array                                   # int32 [B, N] node tokens in the tree's node order
    q_BNV: jax.Array | None = None                         # float32 [B, N, V]
    without_replacement: bool = struct.field(pytree_node=False, default=False)
    live_B: jax.Array | None = None                        # bool [B]

    def live(self) -> jax.Array:
        """bool [B, 1]: the rows whose nodes may be accepted (broadcasts against [B, N])."""
        if self.live_B is None:
            return jnp.ones((self.tokens_BN.shape[0], 1), bool)
        return self.live_B[:, None]

    def probs(self, vocab_size: int) -> jax.Array:
        """float32 [B, N, V]: q, or one-hot on the tokens for a deterministic draft; zero on rows that are not live
        (nothing drawn, so nothing to accept and no residual to take)."""
        q = (jax.nn.one_hot(self.tokens_BN, vocab_size, dtype=jnp.float32) if self.q_BNV is None
             else self.q_BNV)
        return q if self.live_B is None else q * self.live_B[:, None, None]


@struct.dataclass
class TargetOut:
    """What the step's one target forward computed, handed to the drafter (heads draft from it)."""

    logits_BTV: jax.Array   # float32 [B, T, V] at the root (t = 0) and every node (prefill: T = 1, the last prompt token)
    hidden_BTD: jax.Array   # [B, T, D] final hidden states (after the final norm) at the same positions


@struct.dataclass
class NoDraft:
    """A drafter is a pytree (its models' params are leaves; its tree and settings are static) with:

    check(target_config, batch=None) -> None                 (ValueError on a draft that cannot serve this target;
                                                             batch: the decode's rows, None when unknown; decode()
                                                             calls it on the host before tracing)
    init(target, prompt_BP, prompt_len_B, out, cache_size, spec) -> state  (its own prefill, in the program before
                                                             the loop; target: the target Model, out: TargetOut at
                                                             each row's last prompt token)
    propose(state, root_B, keys_B, spec, sampling) -> (Draft, state)  (fills the tree's N nodes; keys_B: key [B],
                                                             one per row: draw row b's randomness from keys_B[b] only)
    update(state, verdict, new_tokens_BC, out, active_B) -> state  (catches up on the accepted path; out: the
                                                             step's TargetOut, T = 1 + N, or T = 1 in a plain step)
    NoDraft proposes nothing: plain decoding.
    """

    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree())

    def check(self, target_config, batch: int | None = None) -> None:
        """Every target and batch can be decoded without a draft."""

    def init(self, target, prompt_BP, prompt_len_B, out, cache_size, spec):
        return ()

    def propose(self, state, root_B, keys_B, spec, sampling):
        return Draft(tokens_BN=jnp.zeros((root_B.shape[0], 0), jnp.int32)), state

    def update(self, state, verdict, new_tokens_BC, out, active_B):
        return state
