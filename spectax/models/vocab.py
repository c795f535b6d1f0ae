"""Vocabulary mapping between models of one tokenizer whose embedding tables are padded to different sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

VOCAB_SLACK = 0.01   # two vocabularies may differ by this fraction (padding rows) or 8 rows, no more


def check_vocab_match(v_a: int, v_b: int, what: str) -> None:
    """ValueError unless vocabularies of v_a and v_b tokens differ by padding only (VOCAB_SLACK or 8 rows).
    `what` names the pair in the message, e.g. "draft vocabulary ({a} tokens) ... the target's ({b})"."""
    if abs(v_a - v_b) > max(8, VOCAB_SLACK * max(v_a, v_b)):
        raise ValueError(f"{what}: {v_a} tokens against {v_b}; only padding-size differences (<= {VOCAB_SLACK:.0%} "
                         f"or 8 tokens) are mapped")


def to_vocab(logits_xV: jax.Array, vocab_size: int) -> jax.Array:
    """Logits over a vocabulary of `vocab_size` tokens: extra padding rows dropped, missing ones at -inf."""
    v = logits_xV.shape[-1]
    if v >= vocab_size:
        return logits_xV[..., :vocab_size]
    pad = jnp.full(logits_xV.shape[:-1] + (vocab_size - v,), -jnp.inf, logits_xV.dtype)
    return jnp.concatenate([logits_xV, pad], axis=-1)
