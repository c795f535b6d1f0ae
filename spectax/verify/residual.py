"""Probability helpers shared by the lossless sampling verifiers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spectax.sampling import Sampler, SamplingParams, warp


def target_probs(logits_xV: jax.Array, sampler: Sampler, params: SamplingParams) -> jax.Array:
    """float32 [..., V]: the warped target distribution (the one plain sampling draws from)."""
    return jax.nn.softmax(warp(logits_xV, sampler, params), axis=-1)


def residual(r_xV: jax.Array, q_xV: jax.Array) -> jax.Array:
    """norm(max(0, r - q)): what is left of r after a rejected draw from q. Where nothing is left (r == q, so the
    draw could not have been rejected) r itself is returned, keeping every row a distribution."""
    left = jnp.maximum(r_xV - q_xV, 0.0)
    mass = jnp.sum(left, axis=-1, keepdims=True)
    return jnp.where(mass > 0, left / jnp.where(mass > 0, mass, 1.0), r_xV)


def draw(probs_xV: jax.Array, rng: jax.Array) -> jax.Array:
    """int32 [...]: one token from each distribution."""
    return jax.random.categorical(rng, jnp.log(probs_xV), axis=-1).astype(jnp.int32)


def at(x_xV: jax.Array, token_x: jax.Array) -> jax.Array:
    """x[..., token]: the value of each distribution at its token."""
    return jnp.take_along_axis(x_xV, token_x[..., None], axis=-1)[..., 0]
