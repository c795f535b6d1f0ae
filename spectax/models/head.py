"""The LM head's shared pieces: which positions it reads, and the tied head without a table transpose."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from pallas_kernels.tree_attention import AttnImpl
from spectax.models.products import head_product


def head_inputs(hidden_BTE, logits_at_BI=None):
    """The hidden states the LM head needs: all T, or only the K positions per row in logits_at_BI [B, K]."""
    if logits_at_BI is None:
        return hidden_BTE
    return jnp.take_along_axis(hidden_BTE, logits_at_BI[..., None], axis=1)


def tied_logits(embedding_VE, hidden_BTE, impl: AttnImpl = AttnImpl()):
    """hidden [B, T, E] x embedding [V, E] -> [B, T, V], on the CPU kernel where `impl.products` takes it.

    For XLA the table is the dot's left operand, contracted on its minor dim: XLA:CPU then streams it as stored
    instead of materialising a [E, V] transpose (a full copy of the table) every step.
    """
    out = head_product(impl, embedding_VE, hidden_BTE.astype(embedding_VE.dtype))
    if out is not None:
        return out
    out_VBT = lax.dot_general(embedding_VE, hidden_BTE.astype(embedding_VE.dtype), (((1,), (2,)), ((), ())))
    return jnp.moveaxis(out_VBT, 0, -1)
