"""The types one decoding step passes between its parts: the drafter contract (`Drafter`), what a drafter proposes
(`Draft`), what it may read (`History`, `TargetOut`), and the static settings of the loop (`LoopSpec`).

A leaf module: drafters, verifiers and the loop all build on it; it imports nothing of spectax above the leaves.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pallas_kernels.tree_attention import AttnImpl
from spectax.sampling import Sampler, SamplingParams
from spectax.sharding import axes
from spectax.tree import DraftTree


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """The static half of a decode: everything that shapes the compiled program (hashable)."""

    sampler: Sampler
    out_size: int          # output buffer length (>= max_new_tokens)
    vocab_size: int        # the target's vocabulary (drafters map theirs onto it)
    attn_impl: AttnImpl = AttnImpl()
    prefill_chunk: int = 256  # prompt tokens per prefill forward (bounds the [chunk, chunk] attention block)
    lossy: Any = None         # None (lossless) or a lossy acceptance rule from spectax.verify.lossy
    layout: Any = None        # None (one device) or a spectax.sharding.Layout the state is pinned to

    @property
    def vocab_shards(self) -> int:
        """The blocks the vocabulary is split in over the mesh (1 without a layout); see sampling.top_k."""
        return 1 if self.layout is None else self.layout.axis_size("vocab")

    def constrain(self, tree):
        """The decode state (or a part of it) pinned to the layout's shardings; as is without a layout."""
        return tree if self.layout is None else self.layout.constrain(tree)


@struct.dataclass
class History:
    """The loop's token history, read-only to drafters: each row's prompt, then its committed output, the newest
    committed token (the root, whose K/V are not in the cache yet) last."""

    tokens_BW: jax.Array = axes("batch", None)   # int32 [B, H] -1 past length_B
    length_B: jax.Array = axes("batch")          # int32 [B] tokens held, the root included

    @classmethod
    def after(cls, tokens_BW, length_B, root_B) -> "History":
        """What a drafter sees at a step whose root is root_B: each row's first length_B[b] tokens of tokens_BW
        (the rest ignored), then its root (to drive a drafter outside the loop)."""
        tokens_BW, length_B = jnp.asarray(tokens_BW, jnp.int32), jnp.asarray(length_B, jnp.int32)
        B, W = tokens_BW.shape
        padded = jnp.where(jnp.arange(W)[None, :] < length_B[:, None], tokens_BW, -1)
        padded = jnp.concatenate([padded, jnp.full((B, 1), -1, jnp.int32)], axis=1)
        return cls(tokens_BW=padded.at[jnp.arange(B), length_B].set(jnp.asarray(root_B, jnp.int32)),
                   length_B=length_B + 1)

    @property
    def root_B(self) -> jax.Array:
        """int32 [B]: the newest committed token of each row."""
        return jnp.take_along_axis(self.tokens_BW, (self.length_B - 1)[:, None], axis=1)[:, 0]


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


@struct.dataclass
class TargetOut:
    """What the step's one target forward computed, handed to the drafter (heads draft from it)."""

    logits_BTV: jax.Array   # float32 [B, T, V] at the root (t = 0) and every node (prefill: T = 1, the last prompt
                            # token)
    hidden_BTE: jax.Array   # [B, T, E] final hidden states (after the final norm) at the same positions
    # [B, T, L', E] the residual stream after each of the drafter's target_layers (None when it asks for none), at
    # the same positions; at prefill, at every prompt slot: [B, P, L', E]
    features_BTLpE: jax.Array | None = None


@runtime_checkable
class Drafter(Protocol):
    """The drafter contract. A drafter is a pytree (its models' params are leaves; its tree and settings static).

    tree: the static DraftTree it fills each step. target_layers (static): target layers whose outputs it reads
    from TargetOut.features_BTLpE (the target's forwards return them from the same pass; () for none).
    follows_any_path (static): update() reads only what was committed (the verdict, the new tokens, the step's
    TargetOut), never its own proposals, so it can follow a path another drafter proposed (`Combined` needs it).

    check(target_config, batch=None) -> None: ValueError on a draft that cannot serve this target (batch: the
        decode's rows, None when unknown); called on the host before tracing.
    init(target, prompt_BP, prompt_len_B, out, cache_size, spec) -> state: its own prefill, in the program before
        the loop (target: the target Model or Ensemble; out: TargetOut at each row's last prompt token).
    propose(state, history, keys_B, spec, sampling) -> (Draft, state): fills the tree's N nodes after
        history.root_B (history: the loop's `History`, read-only); keys_B: key [B], one per row: draw row b's
        randomness from keys_B[b] only.
    update(state, verdict, new_tokens_BC, out, active_B) -> state: catches up on the accepted path (out: the step's
        TargetOut over the whole tree, T = 1 + N).
    """

    tree: DraftTree
    target_layers: tuple[int, ...]
    follows_any_path: bool

    def check(self, target_config, batch: int | None = None) -> None: ...

    def init(self, target, prompt_BP, prompt_len_B, out: TargetOut, cache_size: int, spec: LoopSpec) -> Any: ...

    def propose(self, state, history: History, keys_B, spec: LoopSpec, sampling: SamplingParams
                ) -> tuple[Draft, Any]: ...

    def update(self, state, verdict, new_tokens_BC, out: TargetOut, active_B) -> Any: ...
