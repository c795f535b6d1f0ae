"""Block: a parallel block drafter. One draft forward proposes a whole block of k tokens (PARD, DFlash), and a static
tree over its per-position candidates is verified in one target forward (DDTree).

The drafter is `num_layers` Llama-style transformer layers of the target's width with their own KV cache, the
context. Context entry t is the target's own view of committed token t: the outputs of the target layers
`target_layers` at t (taken from the target's verification forward, no extra pass), each RMS-normalised (n),
concatenated and fused by a learned projection, c_t = RMSNorm([n(h_t^(l1)), ..., n(h_t^(lm))] W_fuse); each draft
layer keeps its own K/V of c_t (its attention norm and K/V projections applied to c_t, RoPE at position t).

Each step the block is [root, mask_1, ..., mask_k] at positions p .. p + k (p: the root's position): the root's
embedding (the target's own), then k mask slots, slot j the root's embedding plus a learned vector of position j
(`block_inputs`). The block attends causally to the context (slots < p) and bidirectionally within itself; the final
norm and the target's LM head (restricted to the draft vocabulary, as for heads) read mask slot j as the
distribution of token p + j. So one forward gives all k positions' distributions, and node (depth d, rank r) of the
tree holds position d's r-th candidate (`per_depth`).

Per step: `propose` runs the one draft forward; `update` writes the accepted path's context entries (root + accepted
nodes, their features gathered from the verification forward) into the draft cache, so the draft cache always holds
exactly the target's committed tokens. Lossless sampling: each node's q is its position's warped draft distribution,
siblings are draws without replacement (see per_depth).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pallas_kernels.tree_attention import AttnImpl
from spectax.cache import KVCache, write_block
from spectax.drafters.heads import head_table
from spectax.drafters.per_depth import check_per_depth, check_vocab_ids, propose_per_depth
from spectax.drafters.stored import load_drafter_parts, save_drafter
from spectax.models.config import ModelConfig
from spectax.models.llama import LlamaBlock
from spectax.models.model import param_axes
from spectax.models.rope import apply_rope, inv_frequencies
from spectax.sharding import Axes, axes
from spectax.tree import DraftTree

MANIFEST = "block.json"


def default_target_layers(num_layers: int, count: int = 3) -> tuple[int, ...]:
    """`count` target layers spread from the second to the second-to-last (shallow, middle, deep features)."""
    return tuple(sorted({int(round(x)) for x in np.linspace(min(1, num_layers - 1), max(num_layers - 2, 0), count)}))


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """The static half of a block drafter (hashable: part of the jit cache key).

    layer: the draft layers' (Llama) config, of the target's width, heads and vocabulary; target_layers: the target
    layers whose outputs feed the context; target_num_layers: the target's depth (a drafter fits one target)."""

    block_size: int
    target_layers: tuple[int, ...]
    target_num_layers: int
    layer: ModelConfig

    def __post_init__(self):
        for name in ("block_size", "target_num_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Block {name} must be an int >= 1, got {v!r}")
        t = self.target_layers
        if not isinstance(t, tuple) or not t or any(isinstance(i, bool) or not isinstance(i, (int, np.integer))
                                                    for i in t) \
                or list(t) != sorted(set(t)) or not 0 <= t[0] <= t[-1] < self.target_num_layers:
            raise ValueError(f"target_layers must be a non-empty increasing tuple of distinct layer indices in "
                             f"[0, {self.target_num_layers}), got {t!r}")
        if self.layer.arch != "llama":
            raise ValueError(f"Block draft layers are Llama layers, got arch {self.layer.arch!r}")

    @classmethod
    def for_target(cls, target_config: ModelConfig, block_size: int = 8, num_layers: int = 1,
                   target_layers: tuple[int, ...] | None = None) -> "BlockConfig":
        """Draft layers shaped like the target's (its width, heads, MLP, RoPE; default RoPE for a GPT-2 target)."""
        c = target_config
        if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
            raise ValueError(f"Block num_layers must be an int >= 1, got {num_layers!r}")
        rope = {} if c.arch == "llama" else {"rope_theta": 10000.0, "rope_scaling": None}
        layer = dataclasses.replace(c, arch="llama", num_layers=int(num_layers), qkv_bias=False,
                                    tie_embeddings=True, **rope)
        layers = default_target_layers(c.num_layers) if target_layers is None else tuple(target_layers)
        return cls(block_size=block_size, target_layers=layers, target_num_layers=c.num_layers, layer=layer)

    def to_dict(self) -> dict:
        return {"block_size": self.block_size, "target_layers": list(self.target_layers),
                "target_num_layers": self.target_num_layers, "layer": json.loads(self.layer.to_json())}

    @classmethod
    def from_dict(cls, d: dict) -> "BlockConfig":
        return cls(block_size=d["block_size"], target_layers=tuple(d["target_layers"]),
                   target_num_layers=d["target_num_layers"], layer=ModelConfig.from_json(json.dumps(d["layer"])))


def layer_module(config: BlockConfig, attn_impl: AttnImpl = AttnImpl()) -> LlamaBlock:
    """The Flax module of one draft layer (a Llama layer that only reads its cache)."""
    return LlamaBlock(config.layer, jnp.float32, attn_impl, write_cache=False)


def init_params(config: BlockConfig, seed: int = 0) -> dict:
    """Random draft weights: Flax's initialisers for the layers, N(0, 1 / (m E)) for the fusion, N(0, 0.02^2) for
    the position vectors of the mask slots, unit norm scales."""
    c = config.layer
    E, m = c.hidden_size, len(config.target_layers)
    keys = jax.random.split(jax.random.key(seed), c.num_layers + 2)
    x, pos, one = jnp.zeros((1, 1, E)), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool)
    params = {f"layers_{i}": layer_module(config).init(keys[i], x, pos, None, pos[:, 0], one)["params"]
              for i in range(c.num_layers)}
    params["fuse"] = jax.random.normal(keys[-2], (m * E, E), jnp.float32) / math.sqrt(m * E)
    params["fuse_norm"] = jnp.ones((E,), jnp.float32)
    params["mask"] = 0.02 * jax.random.normal(keys[-1], (config.block_size, E), jnp.float32)
    params["final_norm"] = jnp.ones((E,), jnp.float32)
    return params


def rms_norm(x, scale, eps):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def fused_context(config: BlockConfig, params: dict, features_BTLpE) -> jax.Array:
    """float32 [B, T, E]: c_t = RMSNorm([n(h_t^(l1)), ..., n(h_t^(lm))] W_fuse) from features [B, T, m, E], n an
    RMS normalisation per layer (the target's residual streams differ in scale by 10-100x between layers)."""
    if features_BTLpE is None:
        raise ValueError("the target's forward returned no layer features: a drafter that wraps a Block must forward "
                         "its target_layers")
    B, T, m, E = features_BTLpE.shape
    normed = rms_norm(features_BTLpE, 1.0, config.layer.norm_eps)
    return rms_norm(normed.reshape(B, T, m * E) @ params["fuse"], params["fuse_norm"], config.layer.norm_eps)


def context_kv(config: BlockConfig, params: dict, ctx_BTE, positions_BT) -> tuple:
    """Per draft layer (k [B, T, G, hd], v): the context entries of T committed tokens from their fused context
    (float32 [B, T, E], `fused_context`) at `positions_BT` (see the module docstring)."""
    c = config.layer
    n_rep = c.num_heads // c.num_kv_heads
    out = []
    for i in range(c.num_layers):
        layer = params[f"layers_{i}"]
        h = rms_norm(ctx_BTE, layer["attn_norm"]["scale"], c.norm_eps)
        kv_BTK2H = jnp.einsum("btd,dkjh->btkjh", h, layer["attn"]["qkv"]["kernel"][:, :, n_rep:])   # its G and V only
        out.append((apply_rope(kv_BTK2H[:, :, :, 0], positions_BT, inv_frequencies(c)), kv_BTK2H[:, :, :, 1]))
    return tuple(out)


def block_inputs(params: dict, root_xD, last_ctx_xD) -> jax.Array:
    """float32 [..., 1 + k, E]: the block's inputs for roots embedded as root_xD [..., E], after a newest committed
    token of fused context last_ctx_xD: every slot gets root + last context (the root and the target's latest view,
    as EAGLE's input), mask slot j also the learned vector of its position j."""
    x = (root_xD.astype(jnp.float32) + last_ctx_xD)[..., None, :]
    return jnp.concatenate([x, x + params["mask"]], axis=-2)


def block_logits(config: BlockConfig, params: dict, embed_VE, table_VpE, root_B, last_ctx_BE, context, lengths_B,
                 attn_impl: AttnImpl = AttnImpl()) -> jax.Array:
    """float32 [B, k, V']: the one draft forward. The block [root, mask x k] at positions lengths .. lengths + k
    attends to the context (per layer (k [B, G, S, hd], v), slots < lengths_B) and bidirectionally within itself;
    last_ctx_BE: the fused context of each row's newest committed token (slot lengths - 1)."""
    c, k = config.layer, config.block_size
    x = block_inputs(params, embed_VE[root_B], last_ctx_BE)                                    # [B, 1 + k, E]
    positions = lengths_B[:, None] + jnp.arange(1 + k, dtype=jnp.int32)[None]
    within = jnp.ones((1 + k, 1 + k), bool)
    for i in range(c.num_layers):
        x, _ = layer_module(config, attn_impl).apply({"params": params[f"layers_{i}"]}, x, positions, context[i],
                                                     lengths_B, within)
    h = rms_norm(x[:, 1:], params["final_norm"], c.norm_eps)
    return jnp.einsum("bkd,vd->bkv", h, table_VpE.astype(jnp.float32))


def input_embedding(model) -> jax.Array:
    """[V, E]: the target's token embedding table."""
    p = model.params
    return (p["embed"] if "embed" in p else p["wte"])["embedding"]


@struct.dataclass
class BlockState:
    cache: KVCache                                      # the draft's context K/V; lengths = the target's lengths
    last_ctx_BE: jax.Array = axes("batch", None)        # float32 [B, E] fused context of the newest committed token
    embed_VE: jax.Array = axes("vocab", "embed")        # the target's token embedding (constant through the loop)
    table_VpE: jax.Array = axes("vocab", "embed")       # [V', E] the target's head rows at the draft vocabulary


@struct.dataclass
class Block:
    """A parallel block drafter; see the module docstring. params: its weights (init_params); vocab_ids: int32 [V']
    the draft vocabulary. `block.replace(tree=...)` gives the same drafter with another tree (depth <= block_size)."""

    config: BlockConfig = struct.field(pytree_node=False)
    params: dict
    vocab_ids: jax.Array
    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree.chain(8))
    follows_any_path = True

    @classmethod
    def create(cls, model, block_size: int = 8, num_layers: int = 1, tree: DraftTree | None = None, seed: int = 0,
               target_layers: tuple[int, ...] | None = None, vocab_ids=None) -> "Block":
        """A randomly initialised block drafter for `model`. tree: default a chain of block_size; target_layers:
        default 3 spread over the target (default_target_layers); vocab_ids: default the target's vocabulary."""
        config = BlockConfig.for_target(model.config, block_size, num_layers, target_layers)
        ids = np.arange(model.config.vocab_size) if vocab_ids is None else np.asarray(vocab_ids)
        block = cls(config=config, params=init_params(config, seed),
                    vocab_ids=check_vocab_ids(ids, model.config.vocab_size),
                    tree=DraftTree.chain(block_size) if tree is None else tree)
        block.check(model)
        return block

    @property
    def target_layers(self) -> tuple[int, ...]:
        """The target layers whose outputs the loop hands over in TargetOut.features_BTLpE."""
        return self.config.target_layers

    # ------------------------------------------------------------------------------------------- drafter contract

    def check(self, target, batch: int | None = None) -> None:
        """ValueError unless this drafter was made for the target (width, heads, vocabulary, depth) and its tree
        fits the block."""
        c, t = self.config.layer, target.config
        mine = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size, self.config.target_num_layers)
        theirs = (t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim, t.vocab_size, t.num_layers)
        if mine != theirs:
            raise ValueError(f"this block drafter was made for a target with (hidden size, heads, kv heads, head dim, "
                             f"vocabulary, layers) = {mine}; the target has {theirs}")
        check_per_depth(self.tree, self.vocab_ids, c.vocab_size, self.config.block_size, "positions in the block")
        expected = jax.tree_util.tree_map(np.shape, jax.eval_shape(lambda: init_params(self.config)))
        if jax.tree_util.tree_map(np.shape, self.params) != expected:
            raise ValueError(f"block weights do not match their config {self.config}")

    def init(self, target, prompt_BP, prompt_len_B, out, cache_size, spec) -> BlockState:
        """The context of every prompt token, from the prefill's features (out.features_BTLpE: [B, P, m, E])."""
        B, P = prompt_BP.shape
        cache = KVCache.create(self.config.layer, B, cache_size, jnp.float32)
        ctx = fused_context(self.config, self.params, out.features_BTLpE)                          # [B, P, E]
        context = context_kv(self.config, self.params, ctx, jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P)))
        zero = jnp.zeros((B,), jnp.int32)
        cache = cache.with_layers(tuple((write_block(kc, k, zero), write_block(vc, v, zero))
                                        for (kc, vc), (k, v) in zip(cache.layers, context)))
        last = jnp.take_along_axis(ctx, (prompt_len_B - 1)[:, None, None], axis=1)[:, 0]
        return BlockState(cache=cache.replace(lengths=prompt_len_B.astype(jnp.int32)), last_ctx_BE=last,
                          embed_VE=input_embedding(target), table_VpE=head_table(target)[self.vocab_ids])

    def propose(self, state: BlockState, history, keys_B, spec, sampling):
        """The one draft forward: every block position's logits, then node (d, r) = position d's r-th candidate."""
        logits = block_logits(self.config, self.params, state.embed_VE, state.table_VpE, history.root_B,
                              state.last_ctx_BE,
                              state.cache.layers, state.cache.lengths, spec.attn_impl)
        return propose_per_depth(logits, self.vocab_ids, self.tree, keys_B, spec, sampling), state

    def update(self, state: BlockState, verdict, new_tokens_BC, out, active_B) -> BlockState:
        """Writes the context entries of the step's committed tokens (the root and the accepted path), from the
        verification forward's features at their step positions."""
        s0 = state.cache.lengths
        B = s0.shape[0]
        steps_BC = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), jnp.maximum(verdict.path_BD, 0)], axis=1)
        features = jnp.take_along_axis(out.features_BTLpE, steps_BC[:, :, None, None], axis=1)     # [B, 1 + E, m, E]
        ctx = fused_context(self.config, self.params, features)
        positions = s0[:, None] + jnp.arange(steps_BC.shape[1], dtype=jnp.int32)[None]
        context = context_kv(self.config, self.params, ctx, positions)
        layers = tuple((write_block(kc, k, s0), write_block(vc, v, s0))
                       for (kc, vc), (k, v) in zip(state.cache.layers, context))
        last = jnp.take_along_axis(ctx, verdict.n_accepted[:, None, None], axis=1)[:, 0]          # the newest
        return state.replace(cache=state.cache.with_layers(layers).replace(lengths=jnp.where(
            active_B, s0 + 1 + verdict.n_accepted, s0)), last_ctx_BE=jnp.where(active_B[:, None], last,
                                                                                 state.last_ctx_BE))

    # ------------------------------------------------------------------------------------------------ save / load

    def save(self, path, overwrite: bool = False) -> Path:
        """Writes the drafter to the directory `path` (block.json + params.npz, through a temp dir renamed into
        place: never half-written). The target's embedding and LM head are not stored; the tree is."""
        return save_drafter(path, overwrite, MANIFEST, "spectax-block", self.config.to_dict(), self.tree, self.params,
                            self.vocab_ids)

    @classmethod
    def load(cls, path) -> "Block":
        """Reads a drafter written by `save` (ValueError for anything else)."""
        config, tree, params, vocab_ids = load_drafter_parts(path, MANIFEST, "spectax-block", "block drafter",
                                                             BlockConfig.from_dict, init_params)
        return cls(config=config, params=params, vocab_ids=check_vocab_ids(vocab_ids, config.layer.vocab_size),
                   tree=tree)

    def logical_axes(self) -> "Block":
        """The drafter with an `Axes` per array: its layers shard like the target's (heads, kv heads, MLP), the
        fusion, norms and mask vectors are replicated."""
        params = {k: param_axes("llama", v) if k.startswith("layers_") else Axes((None,) * np.ndim(v))
                  for k, v in self.params.items()}
        return self.replace(params=params, vocab_ids=Axes((None,)))
