"""Llama-family decoder (Llama, Mistral, Qwen2, SmolLM2): RMSNorm, RoPE, grouped-query attention, SwiGLU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.tree_attention import AttnImpl
from spectax.models.attention import cached_attention
from spectax.models.config import ModelConfig
from spectax.models.head import head_inputs, tied_logits
from spectax.models.products import dot_general
from spectax.models.rope import apply_rope, inv_frequencies


class LlamaAttention(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype
    attn_impl: AttnImpl
    write_cache: bool = True

    @nn.compact
    def __call__(self, x_BTE, positions_BT, layer_kv, lengths_B, mask_TT):
        c = self.config
        B, T, _ = x_BTE.shape
        G, n_rep = c.num_kv_heads, c.num_heads // c.num_kv_heads
        # one product for q|k|v, grouped by kv head: [B, T, G, n_rep + 2, hd] = kv head k's n_rep query heads, its k,
        # its v
        qkv = nn.DenseGeneral((G, n_rep + 2, c.head_dim), use_bias=c.qkv_bias, dtype=self.dtype, param_dtype=self.dtype,
                              dot_general=dot_general(self.attn_impl), name="qkv")(x_BTE)
        qk = apply_rope(qkv[:, :, :, :n_rep + 1], positions_BT, inv_frequencies(c))         # q and k rotate alike
        q = qk[:, :, :, :n_rep].reshape(B, T, c.num_heads, c.head_dim)                     # head k * n_rep + g
        out, layer_kv = cached_attention(q, qk[:, :, :, n_rep], qkv[:, :, :, n_rep + 1], layer_kv, lengths_B, mask_TT,
                                         self.attn_impl, self.write_cache)
        out = nn.Dense(c.hidden_size, use_bias=False, dtype=self.dtype, param_dtype=self.dtype,
                       dot_general=dot_general(self.attn_impl), name="o")(out.reshape(B, T, c.num_heads * c.head_dim))
        return out, layer_kv


class LlamaMLP(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype
    attn_impl: AttnImpl = AttnImpl()   # its `products` choose the products' implementation

    @nn.compact
    def __call__(self, x_BTE):
        c = self.config
        dot = dot_general(self.attn_impl)
        gate_up = nn.DenseGeneral((2, c.intermediate_size), use_bias=False, dtype=self.dtype, param_dtype=self.dtype,
                                  dot_general=dot, name="gate_up")(x_BTE)                # [B, T, 2, F]: one product
        h = jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
        return nn.Dense(c.hidden_size, use_bias=False, dtype=self.dtype, param_dtype=self.dtype, dot_general=dot,
                        name="down")(h)


def fuse_params(config: ModelConfig, params: dict) -> dict:
    """The per-projection layout the loaders read (q, k, v kernels [E, H*hd] / [E, G*hd], gate, up [E, F], as in
    Hugging Face) -> the fused layout the decoder multiplies with: attn/qkv kernel [E, G, n_rep + 2, hd] (per kv head k:
    its n_rep query heads, its key, its value; bias [G, n_rep + 2, hd]) and mlp/gate_up kernel [E, 2, F].

    Grouping by kv head keeps every head's projections in one slice of axis 1, so sharding heads over devices splits
    the fused kernel cleanly. Layers already fused pass through; numpy in, numpy out (no device copy)."""
    G, hd = config.num_kv_heads, config.head_dim
    n_rep = config.num_heads // G
    out = dict(params)
    for i in range(config.num_layers):
        layer = out.get(f"layers_{i}")
        if not isinstance(layer, dict) or not {"attn", "mlp"} <= set(layer):
            continue
        attn, mlp = dict(layer["attn"]), dict(layer["mlp"])
        if {"q", "k", "v"} <= set(attn):
            q, k, v = attn.pop("q"), attn.pop("k"), attn.pop("v")
            xp = np if isinstance(q["kernel"], np.ndarray) else jnp
            E = q["kernel"].shape[0]
            fused = {"kernel": xp.concatenate([q["kernel"].reshape(E, G, n_rep, hd), k["kernel"].reshape(E, G, 1, hd),
                                               v["kernel"].reshape(E, G, 1, hd)], axis=2)}
            if "bias" in q:
                fused["bias"] = xp.concatenate([q["bias"].reshape(G, n_rep, hd), k["bias"].reshape(G, 1, hd),
                                                v["bias"].reshape(G, 1, hd)], axis=1)
            attn = {"qkv": fused, **attn}
        if {"gate", "up"} <= set(mlp):
            gate, up = mlp.pop("gate")["kernel"], mlp.pop("up")["kernel"]
            xp = np if isinstance(gate, np.ndarray) else jnp
            mlp = {"gate_up": {"kernel": xp.stack([gate, up], axis=1)}, **mlp}
        out[f"layers_{i}"] = {**layer, "attn": attn, "mlp": mlp}
    return out


class LlamaBlock(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype
    attn_impl: AttnImpl
    write_cache: bool = True

    @nn.compact
    def __call__(self, x_BTE, positions_BT, layer_kv, lengths_B, mask_TT):
        c = self.config
        norm = lambda name: nn.RMSNorm(epsilon=c.norm_eps, dtype=self.dtype, param_dtype=self.dtype, name=name)
        h, layer_kv = LlamaAttention(c, self.dtype, self.attn_impl, self.write_cache, name="attn")(
            norm("attn_norm")(x_BTE), positions_BT, layer_kv, lengths_B, mask_TT)
        x_BTE = x_BTE + h
        x_BTE = x_BTE + LlamaMLP(c, self.dtype, self.attn_impl, name="mlp")(norm("mlp_norm")(x_BTE))
        return x_BTE, layer_kv


class LlamaDecoder(nn.Module):
    """forward(tokens [B, T], positions [B, T], kv (tuple of per-layer (k, v)) | None, lengths [B], mask [T, T])
    -> logits [B, T, V] (float32), hidden [B, T, E] (after the final norm), updated kv, features [B, T, L', E] (the
    outputs of the layers in features_at, in order; None when it is empty)."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    attn_impl: AttnImpl = AttnImpl()
    write_cache: bool = True   # False: read the cache; return per layer (k cache, v cache, new k, new v)
    features_at: tuple[int, ...] = ()   # layers whose outputs (the residual stream after them) are returned too

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, kv, lengths_B, mask_TT, logits_at_BI=None):
        c = self.config
        norm = lambda name: nn.RMSNorm(epsilon=c.norm_eps, dtype=self.dtype, param_dtype=self.dtype, name=name)
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.dtype, name="embed")
        x = embed(tokens_BT)
        new_kv, features = [], []
        for i in range(c.num_layers):
            layer = LlamaBlock(c, self.dtype, self.attn_impl, self.write_cache, name=f"layers_{i}")
            x, layer_kv = layer(x, positions_BT, None if kv is None else kv[i], lengths_B, mask_TT)
            new_kv.append(layer_kv)
            features += [x] * (i in self.features_at)
        hidden = norm("final_norm")(x)
        head_in = head_inputs(hidden, logits_at_BI)
        if c.tie_embeddings:
            logits = tied_logits(embed.embedding, head_in, self.attn_impl)
        else:
            logits = nn.Dense(c.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.dtype,
                              dot_general=dot_general(self.attn_impl), name="lm_head")(head_in)
        return (logits.astype(jnp.float32), hidden, (None if kv is None else tuple(new_kv)),
                jnp.stack(features, axis=2) if features else None)
