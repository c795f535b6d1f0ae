"""The tied LM head: logits from the embedding table without transposing it."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def tied_logits(embedding_VD, hidden_BTD):
    """hidden [B, T, D] x embedding [V, D] -> [B, T, V].

    The table is the dot's left operand, contracted on its minor dim: XLA:CPU then streams it as stored instead of
    materialising a [D, V] transpose (a full copy of the table) every step.
    """
    out_VBT = lax.dot_general(embedding_VD, hidden_BTD.astype(embedding_VD.dtype), (((1,), (2,)), ((), ())))
    return jnp.moveaxis(out_VBT, 0, -1)
