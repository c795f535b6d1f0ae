"""DraftModel: a smaller LM with its own KV cache fills the draft tree, one forward per tree level."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from spectax.cache import KVCache, commit_path
from spectax.models import Model
from spectax.models.vocab import check_vocab_match, to_vocab
from spectax.sampling import fold_rows, gumbel_rows, top_k, warp
from spectax.sharding import axes
from spectax.step_types import Draft
from spectax.tree import DraftTree


@struct.dataclass
class DraftModelState:
    cache: KVCache                       # the draft's cache; lengths = the target's length - 1 (slot `lengths`: x0)
    x0: jax.Array = axes("batch")        # int32 [B] the committed token just before the root (re-fed each step)
    root: jax.Array = axes("batch")      # int32 [B] the root of the latest proposal


@struct.dataclass
class DraftModel:
    """Drafts with a small LM. Every step it runs one forward per tree level over the window [x0, root, nodes]
    (static shape, ancestor mask): level d reads the logits at the depth d - 1 nodes and fills their children, the
    k-th ranked child with the k-th best token (greedy) or the k-th draw without replacement (sampling, Gumbel
    top-k over the warped draft distribution, which it records as q). A chain is the one-child case. After the
    verdict the accepted path's K/V are compacted like the target's; the deepest accepted node and the bonus token
    are fed at the start of the next proposal.
    """

    model: Model
    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree.chain(4))
    target_layers = ()
    follows_any_path = False   # its cache holds its own proposals' K/V

    def check(self, target, batch: int | None = None) -> None:
        """ValueError unless this draft can serve the target (non-empty tree, compatible vocabulary); any batch."""
        if not isinstance(self.model, Model):
            raise ValueError(f"DraftModel.model must be a spectax Model, got {type(self.model).__name__}")
        if not isinstance(self.tree, DraftTree) or self.tree.num_nodes == 0:
            raise ValueError(f"DraftModel needs a non-empty DraftTree, got {self.tree!r}")
        check_vocab_match(self.model.config.vocab_size, target.config.vocab_size,
                          "the draft vocabulary does not match the target's")

    def init(self, target, prompt_BP, prompt_len_B, out, cache_size, spec) -> DraftModelState:
        """Prefills the draft's own cache with the prompts."""
        config = self.model.config
        cache = self.model.create_cache(prompt_BP.shape[0], cache_size)
        tokens = jnp.minimum(prompt_BP, config.vocab_size - 1)
        kv = self.model.prefill(tokens, prompt_len_B, cache.layers, spec.prefill_chunk, spec.attn_impl).kv
        last = jnp.take_along_axis(prompt_BP, (prompt_len_B - 1)[:, None], axis=1)[:, 0]
        return DraftModelState(cache=cache.with_layers(kv).replace(lengths=prompt_len_B - 1), x0=last,
                               root=jnp.zeros_like(last))

    def propose(self, state: DraftModelState, history, keys_B, spec, sampling):
        """Fills the tree level by level (a lax.fori_loop over depths); keys_B: key [B], one per row."""
        root_B = history.root_B
        tree, config = self.tree, self.model.config
        N, V, R = tree.num_nodes, spec.vocab_size, tree.max_children
        B = root_B.shape[0]
        s0 = state.cache.lengths
        mask_WW = np.zeros((N + 2, N + 2), bool)                      # window [x0, root, nodes]
        mask_WW[:, 0] = True
        mask_WW[1:, 1:] = tree.step_mask
        positions_BW = s0[:, None] + jnp.asarray(np.concatenate([[0], 1 + tree.step_depth]), jnp.int32)[None]
        parent_steps = np.unique(tree.parent + 1)                     # step positions with children
        at_BI = jnp.broadcast_to(jnp.asarray(parent_steps + 1, jnp.int32), (B, parent_steps.size))
        from_parent_N = np.searchsorted(parent_steps, tree.parent + 1)
        rank_N, depth_N = jnp.asarray(tree.child_rank), jnp.asarray(tree.depth)
        sampled = not spec.sampler.greedy

        def level(d, carry):
            tokens_BN, q_BNV, kv = carry
            window = jnp.concatenate([state.x0[:, None], root_B[:, None], tokens_BN], axis=1)
            out = self.model.forward(jnp.minimum(window, config.vocab_size - 1), positions_BW, kv, s0,
                                     jnp.asarray(mask_WW), spec.attn_impl, logits_at_BI=at_BI)
            logits, kv = to_vocab(out.logits_BTV, V), out.kv                             # [B, P, V] at each parent
            if sampled:
                logq = jax.nn.log_softmax(warp(logits, spec.sampler, sampling), axis=-1)
                _, top = top_k(logq + gumbel_rows(fold_rows(keys_B, d), logq.shape[1:]), R, spec.vocab_shards)
                q_BNV = jnp.where((depth_N == d)[None, :, None], jnp.exp(logq)[:, from_parent_N], q_BNV)
            else:
                _, top = top_k(logits, R, spec.vocab_shards)
            fill = top[:, from_parent_N, rank_N]                         # [B, N] the node's ranked child token
            return jnp.where((depth_N == d)[None], fill, tokens_BN), q_BNV, kv

        q0 = jnp.zeros((B, N, V), jnp.float32) if sampled else None
        tokens, q, kv = lax.fori_loop(1, tree.max_depth + 1, level,
                                      (jnp.zeros((B, N), jnp.int32), q0, state.cache.layers))
        draft = Draft(tokens_BN=tokens.astype(jnp.int32), q_BNV=q, without_replacement=True)
        return draft, state.replace(cache=state.cache.with_layers(kv), root=root_B)

    def update(self, state: DraftModelState, verdict, new_tokens_BC, out, active_B) -> DraftModelState:
        """Compacts the accepted path in the draft cache; the newest accepted token becomes x0."""
        s0 = state.cache.lengths
        n = verdict.n_accepted
        # window slot s0 + 1 + j holds step j; commit_path moves the path to s0 + 2 + d
        cache = commit_path(state.cache.replace(lengths=s0 + 1), verdict.path_BD, n, active_B, self.tree.is_chain)
        newest = jnp.take_along_axis(new_tokens_BC, jnp.maximum(n - 1, 0)[:, None], axis=1)[:, 0]
        x0 = jnp.where(active_B, jnp.where(n > 0, newest, state.root), state.x0)
        return DraftModelState(cache=cache.replace(lengths=jnp.where(active_B, s0 + 1 + n, s0)), x0=x0,
                               root=state.root)

