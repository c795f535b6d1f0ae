"""Model: a static ModelConfig plus a params pytree, with the one forward every decoding method uses."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from pallas_kernels.tree_attention import AttnImpl
from spectax.cache import KVCache
from spectax.models.config import ModelConfig
from spectax.models.gpt2 import GPT2Decoder, split_heads
from spectax.models.llama import LlamaDecoder, fuse_params
from spectax.models.rope import check_rope
from spectax.sharding import Axes
from spectax.step_types import TargetOut

_DECODERS = {"llama": LlamaDecoder, "gpt2": GPT2Decoder}

# parameter logical axes by (module, param) name; the arch-specific fused attention layouts override qkv
_PARAM_AXES = {
    ("embed", "embedding"): ("vocab", "embed"),                  # [V, E]
    ("wte", "embedding"): ("vocab", "embed"),                    # [V, E]
    ("wpe", "embedding"): (None, "embed"),                       # [P, E]
    ("lm_head", "kernel"): ("embed", "vocab"),                   # [E, V]
    ("o", "kernel"): ("heads", "embed"),                         # [H * hd, E]
    ("o", "bias"): ("embed",),
    ("gate_up", "kernel"): ("embed", None, "mlp"),               # [E, 2, F]
    ("down", "kernel"): ("mlp", "embed"),                        # [F, E]
    ("fc", "kernel"): ("embed", "mlp"),                          # [E, F]
    ("fc", "bias"): ("mlp",),
    ("proj", "kernel"): ("mlp", "embed"),                        # [F, E]
    ("proj", "bias"): ("embed",),
    ("llama", "qkv", "kernel"): ("embed", "kv_heads", None, "head_dim"),   # [E, G, Q + 2, hd]
    ("llama", "qkv", "bias"): ("kv_heads", None, "head_dim"),
    ("gpt2", "qkv", "kernel"): ("embed", None, "kv_heads", "head_dim"),    # [E, 3, H, hd] (H = G)
    ("gpt2", "qkv", "bias"): (None, "kv_heads", "head_dim"),
}
_NORMS = ("attn_norm", "mlp_norm", "final_norm", "ln_1", "ln_2", "ln_f")


def param_axes(arch: str, params: Any) -> Any:
    """The logical axes (`spectax.sharding.Axes`) of every array of a decoder's params (or of a subtree of them, such
    as one layer's), by module and parameter name; ValueError for a name the table does not know."""
    def one(path, x):
        names = tuple(getattr(k, "key", None) for k in path)
        module, leaf = names[-2], names[-1]
        if module in _NORMS:
            return Axes(("embed",))
        found = _PARAM_AXES.get((arch, module, leaf), _PARAM_AXES.get((module, leaf)))
        if found is None:
            raise ValueError(f"no logical axes known for parameter {jax.tree_util.keystr(path)}")
        return Axes(found)
    return jax.tree_util.tree_map_with_path(one, params)


@struct.dataclass
class ForwardOut:
    """What one target forward (or a prefill) computed.

    forward: logits [B, T, V] float32 (or [B, K, V] at logits_at_BI), hidden [B, T, E] after the final norm.
    prefill: both at each row's last prompt token only, T = 1. kv: per layer (k [B, G, S, hd], v) caches, with the
    new K/V written in (write_cache=True) or only read (False: then new_kv holds per layer (k [B, T, G, hd], v),
    the step's new K/V, for the caller to write; else None). features [B, T, L', E] (prefill: [B, P, L', E] at every
    prompt slot): the residual stream after each of the `features_at` layers, None without them.
    """

    logits_BTV: jax.Array
    hidden_BTE: jax.Array
    kv: Any
    new_kv: Any = None
    features_BTLpE: jax.Array | None = None

    def target_out(self) -> TargetOut:
        """What a drafter may read of this forward."""
        return TargetOut(self.logits_BTV, self.hidden_BTE, self.features_BTLpE)


def decoder_module(config: ModelConfig, dtype, attn_impl: AttnImpl = AttnImpl(), write_cache: bool = True,
                   features_at: tuple[int, ...] = ()):
    """The Flax module for `config.arch`."""
    return _DECODERS[config.arch](config, dtype=dtype, attn_impl=attn_impl, write_cache=write_cache,
                                  features_at=features_at)


def check_features_at(config: ModelConfig, features_at) -> tuple[int, ...]:
    """`features_at` as a tuple of layer indices, ValueError unless they are distinct, increasing and in range."""
    layers = tuple(features_at)
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in layers) \
            or list(layers) != sorted(set(layers)) or (layers and not 0 <= layers[0] <= layers[-1] < config.num_layers):
        raise ValueError(f"feature layers must be increasing distinct ints in [0, {config.num_layers}), got "
                         f"{features_at!r}")
    return tuple(int(i) for i in layers)


def _param_shapes(config: ModelConfig, dtype) -> Any:
    """The params' shapes, from tracing the init of a one-layer model (every layer has layer 0's shapes; tracing all
    of them took 1.5 s of each load of the real model)."""
    one = jnp.zeros((1, 1), jnp.int32)
    mask = jnp.ones((1, 1), bool)
    single = dataclasses.replace(config, num_layers=1)
    params = dict(jax.eval_shape(lambda: decoder_module(single, dtype).init(jax.random.key(0), one, one, None,
                                                                            one[:, 0], mask))["params"])
    layer = params.pop("layers_0")
    return {**params, **{f"layers_{i}": layer for i in range(config.num_layers)}}


def check_params(config: ModelConfig, params: Any) -> None:
    """Raises ValueError naming the first missing, unexpected or mis-shaped tensor."""
    expected = {jax.tree_util.keystr(p): v.shape for p, v in
                jax.tree_util.tree_leaves_with_path(_param_shapes(config, jnp.float32))}
    got = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}
    for name, shape in expected.items():
        if name not in got:
            raise ValueError(f"params are missing tensor {name} (expected shape {shape})")
        if tuple(got[name]) != tuple(shape):
            raise ValueError(f"tensor {name} has shape {tuple(got[name])}, expected {tuple(shape)}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise ValueError(f"params have unexpected tensors {extra[:5]} for architecture {config.arch!r}")


@struct.dataclass
class Model:
    """A decoder-only LM: `config` is static (hashable, part of the jit cache key), `params` a pytree of arrays."""

    config: ModelConfig = struct.field(pytree_node=False)
    params: Any

    @classmethod
    def create(cls, config: ModelConfig, params: Any, dtype=None, layout=None) -> "Model":
        """Validates params against the architecture and moves them to device arrays of `dtype`. Params may come in
        the loaders' layout (llama: per-projection q/k/v, gate/up; gpt2: c_attn [D, 3D]): they are fused / split
        here (`llama.fuse_params`, `gpt2.split_heads`). layout: None (default device) or a
        `spectax.sharding.Layout`: each param goes to the mesh shard by shard, as its rules say."""
        check_rope(config)
        params = fuse_params(config, params) if config.arch == "llama" else split_heads(config, params)
        check_params(config, params)
        if layout is not None:
            return cls(config=config, params=layout.place_arrays(params, param_axes(config.arch, params), dtype))
        cast = (lambda a: jnp.asarray(a, dtype)) if dtype is not None else jnp.asarray
        return cls(config=config, params=jax.tree_util.tree_map(cast, params))

    @classmethod
    def random(cls, config: ModelConfig, seed: int = 0, dtype=jnp.float32, scale: float = 1.0) -> "Model":
        """A randomly initialised model (tests, benchmarks); `scale` multiplies every initial weight."""
        one = jnp.zeros((1, 1), jnp.int32)
        params = decoder_module(config, dtype).init(jax.random.key(seed), one, one, None, one[:, 0],
                                                    jnp.ones((1, 1), bool))["params"]
        return cls(config=config, params=jax.tree_util.tree_map(lambda a: a * jnp.asarray(scale, a.dtype), params))

    @property
    def dtype(self):
        return jax.tree_util.tree_leaves(self.params)[0].dtype

    def logical_axes(self) -> "Model":
        """This model with an `Axes` in place of every param (how `spectax.sharding.Layout` places it)."""
        return self.replace(params=param_axes(self.config.arch, self.params))

    def create_cache(self, batch: int, size: int, fill: float = 0.0) -> KVCache:
        """An empty KV cache of `size` slots per row in the model's dtype; `fill` is what dead slots hold."""
        return KVCache.create(self.config, batch, size, self.dtype, fill)

    def forward(self, tokens_BT, positions_BT, kv, lengths_B, mask_TT, attn_impl: AttnImpl = AttnImpl(),
                logits_at_BI=None, write_cache: bool = True, features_at: tuple[int, ...] = ()) -> ForwardOut:
        """One forward over T new tokens per row; returns a `ForwardOut`.

        tokens_BT, positions_BT: int32 [B, T]. kv: tuple of per-layer (k [B, G, S, hd], v) or None (no cache).
        lengths_B: int32 [B] committed cache length per row (new K/V are written from there). mask_TT: bool [T, T]
        or [B, T, T] visibility among the new tokens. logits_at_BI: optional int32 [B, K] token indices: compute the
        LM head only there (prefill needs one position per row). write_cache=False: the cache is only read and the
        step's new K/V come back in ForwardOut.new_kv (cache.write_block writes them). features_at: layer indices
        (increasing) whose outputs come back in ForwardOut.features_BTLpE, from the same pass (what a Block reads).
        """
        features_at = check_features_at(self.config, features_at)
        module = decoder_module(self.config, self.dtype, attn_impl, write_cache, features_at)
        logits, hidden, kv, features = module.apply({"params": self.params}, tokens_BT, positions_BT, kv, lengths_B,
                                                    mask_TT, logits_at_BI)
        new_kv = None
        if kv is not None and not write_cache:
            kv, new_kv = tuple((k, v) for k, v, _, _ in kv), tuple((k, v) for _, _, k, v in kv)
        return ForwardOut(logits, hidden, kv, new_kv, features if features_at else None)

    def prefill(self, prompt_BP, prompt_len_B, kv, chunk: int, attn_impl: AttnImpl = AttnImpl(),
                features_at: tuple[int, ...] = ()) -> ForwardOut:
        """Writes right-padded prompts into an empty cache, `chunk` tokens per forward; returns a `ForwardOut` with
        the written kv, the logits [B, 1, V] and hidden [B, 1, E] at each row's last prompt token and, with
        features_at, the features [B, P, L', E] at every prompt slot (see `forward`).

        Chunk c covers prompt slots [c * C, (c + 1) * C) of every row and attends to the cache slots before it, so
        the attention never materialises more than a [C, C] block. A row's padding lands in slots past its length
        (dead once the caller sets lengths to prompt_len_B).
        """
        B, P = prompt_BP.shape
        C = min(chunk, P)
        if P % C:
            raise ValueError(f"prompt bucket {P} is not a multiple of the prefill chunk {C}")
        causal = jnp.tril(jnp.ones((C, C), bool))
        last_B = prompt_len_B - 1
        features_at = check_features_at(self.config, features_at)

        def one_chunk(c, carry):
            kv, logits_BV, hidden_BE, features_BPLpE = carry
            start = c * C
            tokens = lax.dynamic_slice_in_dim(prompt_BP, start, C, axis=1)
            positions = jnp.broadcast_to(start + jnp.arange(C, dtype=jnp.int32), (B, C))
            at = jnp.clip(last_B - start, 0, C - 1)[:, None]
            out = self.forward(tokens, positions, kv, jnp.full((B,), start, jnp.int32), causal, attn_impl,
                               logits_at_BI=at, features_at=features_at)
            if features_at:
                features_BPLpE = lax.dynamic_update_slice_in_dim(features_BPLpE, out.features_BTLpE, start, axis=1)
            mine = ((last_B >= start) & (last_B < start + C))[:, None]
            last_hidden = jnp.take_along_axis(out.hidden_BTE, at[..., None], axis=1)[:, 0]
            return (out.kv, jnp.where(mine, out.logits_BTV[:, 0], logits_BV), jnp.where(mine, last_hidden, hidden_BE),
                    features_BPLpE)

        E = self.config.hidden_size
        init = (kv, jnp.zeros((B, self.config.vocab_size), jnp.float32), jnp.zeros((B, E), self.dtype),
                jnp.zeros((B, P, len(features_at), E), self.dtype) if features_at else None)
        kv, logits, hidden, features = lax.fori_loop(0, P // C, one_chunk, init)
        return ForwardOut(logits[:, None], hidden[:, None], kv, None, features)

    def logits(self, tokens_BT) -> jax.Array:
        """Full causal forward without a cache: int32 [B, T] -> float32 logits [B, T, V]."""
        return full_logits(self, tokens_BT)


def full_logits(target, tokens_BT) -> jax.Array:
    """The full causal forward of any target (a Model or an Ensemble: anything with `forward`), no cache:
    int [B, T] -> float32 logits [B, T, V]; ValueError for tokens of another rank."""
    tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
    if tokens_BT.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens_BT.shape}")
    return _causal_logits(target, tokens_BT)


@jax.jit
def _causal_logits(model, tokens_BT):
    B, T = tokens_BT.shape
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    mask = jnp.tril(jnp.ones((T, T), bool))
    return model.forward(tokens_BT, positions, None, jnp.zeros((B,), jnp.int32), mask).logits_BTV
