"""Rotary position embeddings in the split-halves (rotate_half) convention, with HF's scaling types."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from spectax.models.config import ModelConfig

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_type(config: ModelConfig) -> str:
    """The config's RoPE scaling type ("default" when unscaled)."""
    scaling = config.rope_scaling_dict or {}
    return scaling.get("rope_type", scaling.get("type", "default"))


def check_rope(config: ModelConfig) -> None:
    """Raises ValueError for a scaling type spectax does not implement (never silently ignore it)."""
    kind = rope_type(config)
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope scaling type {kind!r}; supported: {SUPPORTED_ROPE_TYPES}")


def inv_frequencies(config: ModelConfig) -> np.ndarray:
    """float64 [head_dim / 2] inverse frequencies after the config's scaling (computed once, on the host)."""
    check_rope(config)
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    scaling = config.rope_scaling_dict or {}
    kind = rope_type(config)
    if kind == "linear":
        inv = inv / scaling["factor"]
    elif kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        inv = np.where(medium, smoothed, scaled)
    return inv


def apply_rope(x_BTHhd, positions_BT, inv_freq):
    """Rotates x [B, T, ..., D] (any head axes between T and D) by the angles positions * inv_freq (float32 math,
    result in x's dtype)."""
    angles_BTF = positions_BT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
    heads = (None,) * (x_BTHhd.ndim - 3)
    cos = jnp.cos(angles_BTF)[(slice(None), slice(None), *heads)]
    sin = jnp.sin(angles_BTF)[(slice(None), slice(None), *heads)]
    x = x_BTHhd.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTHhd.dtype)
