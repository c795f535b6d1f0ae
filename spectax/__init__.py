"""spectax: several tokens per target-model call, in one jitted JAX loop."""

from spectax import drafters
from spectax.api import Decoder, DecodeResult, decode, decode_stream
from spectax.compilation import enable_compile_cache
from spectax.io import load, save
from spectax.models import Model, ModelConfig
from spectax.models.ensemble import Ensemble
from spectax.sampling import Sampling
from spectax.tree import DraftTree

__all__ = ["DecodeResult", "Decoder", "DraftTree", "Ensemble", "Model", "ModelConfig", "Sampling", "decode",
           "decode_stream", "drafters", "enable_compile_cache", "load", "save"]
