"""Llama-family decoder (Llama, Mistral, Qwen2, SmolLM2): RMSNorm, RoPE, grouped-query attention, SwiGLU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from spectax.models.attention import cached_attention
from spectax.models.config import ModelConfig
from spectax.models.head import head_inputs, tied_logits
from spectax.models.rope import apply_rope, inv_frequencies


class LlamaAttention(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype
    attn_impl: str
    write_cache: bool = True

    @nn.compact
    def __call__(self, x_BTD, positions_BT, layer_kv, lengths_B, mask_TT):
        c = self.config
        B, T, _ = x_BTD.shape
        dense = lambda n, name, bias: nn.Dense(n, use_bias=bias, dtype=self.dtype, param_dtype=self.dtype, name=name)
        q = dense(c.num_heads * c.head_dim, "q", c.qkv_bias)(x_BTD).reshape(B, T, c.num_heads, c.head_dim)
        k = dense(c.num_kv_heads * c.head_dim, "k", c.qkv_bias)(x_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
        v = dense(c.num_kv_heads * c.head_dim, "v", c.qkv_bias)(x_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
        inv_freq = inv_frequencies(c)
        q, k = apply_rope(q, positions_BT, inv_freq), apply_rope(k, positions_BT, inv_freq)
        out, layer_kv = cached_attention(q, k, v, layer_kv, lengths_B, mask_TT, self.attn_impl,
                                          self.write_cache)
        out = dense(c.hidden_size, "o", False)(out.reshape(B, T, c.num_heads * c.head_dim))
        return out, layer_kv


class LlamaMLP(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x_BTD):
        c = self.config
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=self.dtype, param_dtype=self.dtype, name=name)
        h = jax.nn.silu(dense(c.intermediate_size, "gate")(x_BTD)) * dense(c.intermediate_size, "up")(x_BTD)
        return dense(c.hidden_size, "down")(h)


class _LlamaBlock(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype
    attn_impl: str
    write_cache: bool = True

    @nn.compact
    def __call__(self, x_BTD, positions_BT, layer_kv, lengths_B, mask_TT):
        c = self.config
        norm = lambda name: nn.RMSNorm(epsilon=c.norm_eps, dtype=self.dtype, param_dtype=self.dtype, name=name)
        h, layer_kv = LlamaAttention(c, self.dtype, self.attn_impl, self.write_cache, name="attn")(
            norm("attn_norm")(x_BTD), positions_BT, layer_kv, lengths_B, mask_TT)
        x_BTD = x_BTD + h
        x_BTD = x_BTD + LlamaMLP(c, self.dtype, name="mlp")(norm("mlp_norm")(x_BTD))
        return x_BTD, layer_kv


class LlamaDecoder(nn.Module):
    """forward(tokens [B, T], positions [B, T], kv (tuple of per-layer (k, v)) | None, lengths [B], mask [T, T])
    -> logits [B, T, V] (float32), hidden [B, T, D] (after the final norm), updated kv."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    attn_impl: str = "xla"
    write_cache: bool = True   # False: read the cache, return each layer's new (k, v) [B, T, K, D] instead

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, kv, lengths_B, mask_TT, logits_at_BK=None):
        c = self.config
        norm = lambda name: nn.RMSNorm(epsilon=c.norm_eps, dtype=self.dtype, param_dtype=self.dtype, name=name)
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.dtype, name="embed")
        x = embed(tokens_BT)
        new_kv = []
        for i in range(c.num_layers):
            layer = _LlamaBlock(c, self.dtype, self.attn_impl, self.write_cache, name=f"layers_{i}")
            x, layer_kv = layer(x, positions_BT, None if kv is None else kv[i], lengths_B, mask_TT)
            new_kv.append(layer_kv)
        hidden = norm("final_norm")(x)
        head_in = head_inputs(hidden, logits_at_BK)
        if c.tie_embeddings:
            logits = tied_logits(embed.embedding, head_in)
        else:
            logits = nn.Dense(c.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.dtype,
                              name="lm_head")(head_in)
        return logits.astype(jnp.float32), hidden, (None if kv is None else tuple(new_kv))
