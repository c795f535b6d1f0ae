"""Flax decoder-only transformers behind one forward signature (see `Model.forward`)."""

from spectax.models.config import ModelConfig
from spectax.models.model import ForwardOut, Model, check_params, decoder_module
from spectax.models.target import Target

__all__ = ["ForwardOut", "Model", "ModelConfig", "Target", "check_params", "decoder_module"]
