"""spectax: several tokens per target-model call, in one jitted JAX loop."""

from spectax import drafters
from spectax.api import DecodeResult, decode
from spectax.ensemble import Ensemble
from spectax.io import load, save
from spectax.models import Model, ModelConfig
from spectax.tree import DraftTree

__all__ = ["DecodeResult", "DraftTree", "Ensemble", "Model", "ModelConfig", "decode", "drafters", "load", "save"]
