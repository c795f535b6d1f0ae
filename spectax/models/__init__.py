"""Flax decoder-only transformers behind one forward signature (see `Model.forward`)."""

from spectax.models.config import ModelConfig
from spectax.models.model import Model, check_params, decoder_module

__all__ = ["Model", "ModelConfig", "check_params", "decoder_module"]
