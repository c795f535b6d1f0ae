"""Probability helpers shared by the lossless sampling verifiers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spectax.sampling import Sampler, SamplingParams, categorical_rows, warp


def target_probs(logits_xV: jax.Array, sampler: Sampler, params: SamplingParams) -> jax.Array:
    """float32 [..., V]: the warped target distribution (the one plain sampling draws from)."""
    return jax.nn.softmax(warp(logits_xV, sampler, params), axis=-1)


def residual(r_xV: jax.Array, q_xV: jax.Array) -> jax.Array:
    """norm(max(0, r - q)): what is left of r after a rejected draw from q. Where nothing is left (r == q, so the
    draw could not have been rejected) r itself is returned, keeping every row a distribution."""
    left = jnp.maximum(r_xV - q_xV, 0.0)
    mass = jnp.sum(left, axis=-1, keepdims=True)
    return jnp.where(mass > 0, left / jnp.where(mass > 0, mass, 1.0), r_xV)


def accepts(u_x: jax.Array, p_x: jax.Array, q_x: jax.Array) -> jax.Array:
    """bool [...]: accept a draft token drawn from q with probability min(1, p(x) / q(x)), given uniform u."""
    return u_x * q_x < p_x


def without(q_xV: jax.Array, token_x: jax.Array) -> jax.Array:
    """q with `token` removed and renormalised: the law of the next draw without replacement. Where nothing is
    left q itself is returned (no further draw can come from it)."""
    removed = q_xV * (jnp.arange(q_xV.shape[-1]) != token_x[..., None])
    mass = jnp.sum(removed, -1, keepdims=True)
    return jnp.where(mass > 0, removed / jnp.where(mass > 0, mass, 1.0), q_xV)


def draw(probs_BV: jax.Array, keys_B: jax.Array) -> jax.Array:
    """int32 [B]: one token from each row's distribution, with that row's key."""
    return categorical_rows(keys_B, jnp.log(probs_BV))


def at(x_xV: jax.Array, token_x: jax.Array) -> jax.Array:
    """x[..., token]: the value of each distribution at its token."""
    return jnp.take_along_axis(x_xV, token_x[..., None], axis=-1)[..., 0]
