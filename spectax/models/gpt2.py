"""GPT-2 decoder: pre-LayerNorm blocks, learned positions, fused q|k|v projection, gelu_new, tied LM head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pallas_kernels.tree_attention import AttnImpl
from spectax.models.attention import cached_attention
from spectax.models.config import ModelConfig
from spectax.models.head import head_inputs, tied_logits
from spectax.models.products import dot_general


class _GPT2Attention(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype
    attn_impl: AttnImpl
    write_cache: bool = True

    @nn.compact
    def __call__(self, x_BTE, layer_kv, lengths_B, mask_TT):
        c = self.config
        B, T, E = x_BTE.shape
        # [B, T, 3, H, hd]: q, k, v with the heads as their own axis (sharding heads splits the kernel cleanly)
        qkv = nn.DenseGeneral((3, c.num_heads, c.head_dim), dtype=self.dtype, param_dtype=self.dtype,
                              dot_general=dot_general(self.attn_impl), name="qkv")(x_BTE)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out, layer_kv = cached_attention(q, k, v, layer_kv, lengths_B, mask_TT, self.attn_impl,
                                          self.write_cache)
        o = nn.Dense(E, dtype=self.dtype, param_dtype=self.dtype, dot_general=dot_general(self.attn_impl), name="o")
        return o(out.reshape(B, T, E)), layer_kv


def split_heads(config: ModelConfig, params: dict) -> dict:
    """The loaders' fused c_attn layout (qkv kernel [E, 3D] = q|k|v columns, bias [3D], as in Hugging Face) -> the
    layout the decoder multiplies with: kernel [E, 3, H, hd], bias [3, H, hd]. Layers already split pass through;
    numpy in, numpy out (no device copy)."""
    H, hd = config.num_heads, config.head_dim
    out = dict(params)
    for i in range(config.num_layers):
        layer = out.get(f"layers_{i}")
        qkv = layer.get("attn", {}).get("qkv") if isinstance(layer, dict) else None
        if not isinstance(qkv, dict) or "kernel" not in qkv or qkv["kernel"].ndim != 2:
            continue
        split = {"kernel": qkv["kernel"].reshape(qkv["kernel"].shape[0], 3, H, hd)}
        if "bias" in qkv:
            split["bias"] = qkv["bias"].reshape(3, H, hd)
        out[f"layers_{i}"] = {**layer, "attn": {**layer["attn"], "qkv": split}}
    return out


class _GPT2MLP(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype
    attn_impl: AttnImpl = AttnImpl()   # its `products` choose the products' implementation

    @nn.compact
    def __call__(self, x_BTE):
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.dtype,   # noqa: E731
                                         dot_general=dot_general(self.attn_impl), name=name)
        h = jax.nn.gelu(dense(self.config.intermediate_size, "fc")(x_BTE), approximate=True)  # gelu_new
        return dense(self.config.hidden_size, "proj")(h)


class _GPT2Block(nn.Module):
    config: ModelConfig
    dtype: jnp.dtype
    attn_impl: AttnImpl
    write_cache: bool = True

    @nn.compact
    def __call__(self, x_BTE, layer_kv, lengths_B, mask_TT):
        norm = lambda name: nn.LayerNorm(epsilon=self.config.norm_eps, dtype=self.dtype, param_dtype=self.dtype,
                                         name=name)
        h, layer_kv = _GPT2Attention(self.config, self.dtype, self.attn_impl, self.write_cache, name="attn")(
            norm("ln_1")(x_BTE), layer_kv, lengths_B, mask_TT)
        x_BTE = x_BTE + h
        return x_BTE + _GPT2MLP(self.config, self.dtype, self.attn_impl, name="mlp")(norm("ln_2")(x_BTE)), layer_kv


class GPT2Decoder(nn.Module):
    """Same forward contract as `LlamaDecoder`; positions index the learned position table (clipped)."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32
    attn_impl: AttnImpl = AttnImpl()
    write_cache: bool = True   # False: read the cache; return per layer (k cache, v cache, new k, new v)
    features_at: tuple[int, ...] = ()   # layers whose outputs (the residual stream after them) are returned too

    @nn.compact
    def __call__(self, tokens_BT, positions_BT, kv, lengths_B, mask_TT, logits_at_BI=None):
        c = self.config
        wte = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.dtype, name="wte")
        wpe = nn.Embed(c.max_position, c.hidden_size, dtype=self.dtype, param_dtype=self.dtype, name="wpe")
        x = wte(tokens_BT) + wpe(jnp.minimum(positions_BT, c.max_position - 1))
        new_kv, features = [], []
        for i in range(c.num_layers):
            x, layer_kv = _GPT2Block(c, self.dtype, self.attn_impl, self.write_cache, name=f"layers_{i}")(
                x, None if kv is None else kv[i], lengths_B, mask_TT)
            new_kv.append(layer_kv)
            features += [x] * (i in self.features_at)
        hidden = nn.LayerNorm(epsilon=c.norm_eps, dtype=self.dtype, param_dtype=self.dtype, name="ln_f")(x)
        head_in = head_inputs(hidden, logits_at_BI)
        return (tied_logits(wte.embedding, head_in, self.attn_impl).astype(jnp.float32), hidden,
                None if kv is None else tuple(new_kv), jnp.stack(features, axis=2) if features else None)
