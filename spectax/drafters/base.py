"""The drafter contract and the empty drafter (plain decoding through the same loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spectax.tree import DraftTree


@struct.dataclass
class Draft:
    """One step's proposal: a token per tree node and, for sampled drafts, the distribution each was drawn from.

    q_BNV[b, n] is the (warped) draft distribution node n's token was drawn from; None means the tokens are
    deterministic (the verifiers then use a one-hot q). without_replacement: True when the siblings of each node are
    successive draws from their shared q with earlier draws removed (Sequoia), False when each node is an independent
    draw from its own q, or a bool per node (a drafter that combines both, see `continues`).

    depth_B: None (every row offers the whole tree) or int32 [B], the deepest tree level row b offers this step
    (0: the row does not speculate; a gate such as Cerberus', or an n-gram matcher that found nothing or only a
    short match). The verifiers accept no node deeper than its row's depth_B. cuts (static): the tree depths the
    loop may truncate the step's forward to; each step the loop runs the smallest of cuts + (the full depth,) that
    covers every active row's depth_B (lax.switch between these static shapes), so a step where no row speculates
    costs a plain step. Truncating needs a tree whose nodes are ordered by depth (DraftTree.truncated).
    """

    tokens_BN: jax.Array                                   # int32 [B, N] node tokens in the tree's node order
    q_BNV: jax.Array | None = None                         # float32 [B, N, V]
    without_replacement: bool | tuple[bool, ...] = struct.field(pytree_node=False, default=False)
    depth_B: jax.Array | None = None                       # int32 [B]
    cuts: tuple[int, ...] = struct.field(pytree_node=False, default=(0,))

    def live(self, tree: DraftTree) -> jax.Array:
        """bool [B, N] (or [1, N] when every row offers everything): the nodes that may be accepted."""
        if self.depth_B is None:
            return jnp.ones((1, tree.num_nodes), bool)
        return jnp.asarray(tree.depth)[None, :] <= self.depth_B[:, None]

    def continues(self, tree: DraftTree) -> np.ndarray:
        """bool [N] (static): node n's token is the next draw without replacement after its previous sibling's, from
        that sibling's q with the sibling's token removed; otherwise it was drawn from its own q_BNV[:, n]."""
        if isinstance(self.without_replacement, tuple):
            cont = np.asarray(self.without_replacement, bool).reshape(tree.num_nodes)
            if (cont & (tree.child_rank == 0)).any():
                raise ValueError("a first child cannot continue a previous sibling's draws")
            return cont
        return (tree.child_rank > 0) & bool(self.without_replacement)

    def offers(self) -> jax.Array:
        """bool [B]: the rows that speculate this step."""
        if self.depth_B is None:
            return jnp.ones(self.tokens_BN.shape[:1], bool)
        return self.depth_B > 0

    def probs(self, vocab_size: int, tree: DraftTree) -> jax.Array:
        """float32 [B, N, V]: q, or one-hot on the tokens for a deterministic draft; zero at the nodes a row does
        not offer (nothing drawn there, so nothing to accept and no residual to take)."""
        q = (jax.nn.one_hot(self.tokens_BN, vocab_size, dtype=jnp.float32) if self.q_BNV is None
             else self.q_BNV)
        return q if self.depth_B is None else q * self.live(tree)[..., None]

    def truncated(self, tree: DraftTree) -> "Draft":
        """The same draft on `tree`, a depth truncation of the drafter's tree (its first tree.num_nodes nodes)."""
        n = tree.num_nodes
        wr = self.without_replacement
        return self.replace(tokens_BN=self.tokens_BN[:, :n], q_BNV=None if self.q_BNV is None else self.q_BNV[:, :n],
                            without_replacement=wr[:n] if isinstance(wr, tuple) else wr)


@struct.dataclass
class TargetOut:
    """What the step's one target forward computed, handed to the drafter (heads draft from it)."""

    logits_BTV: jax.Array   # float32 [B, T, V] at the root (t = 0) and every node (prefill: T = 1, the last prompt token)
    hidden_BTD: jax.Array   # [B, T, D] final hidden states (after the final norm) at the same positions
    # [B, T, L', D] the residual stream after each of the drafter's target_layers (None when it asks for none), at
    # the same positions; at prefill, at every prompt slot: [B, P, L', D]
    features_BTLD: jax.Array | None = None


def target_layers(drafter) -> tuple[int, ...]:
    """The target layers whose outputs `drafter` reads (its optional `target_layers` attribute; () by default)."""
    return tuple(getattr(drafter, "target_layers", ()))


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
    and optionally target_layers: tuple[int, ...] (static): target layers whose outputs the drafter reads from
    TargetOut.features_BTLD; the target's forwards return them from the same pass (no extra target work).
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
