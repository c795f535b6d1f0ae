"""APAR: auto-parallel auto-regressive decoding (Liu et al. 2024): a model that forks its answer into streams."""

from spectax.apar.decode import AparResult, AparStats, Stream, decode
from spectax.apar.format import CHILD, FORK, format_answer, reassemble

__all__ = ["CHILD", "FORK", "AparResult", "AparStats", "Stream", "decode", "format_answer", "reassemble"]
