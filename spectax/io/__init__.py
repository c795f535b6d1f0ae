"""Getting models in and out: Hugging Face safetensors (hf), GGUF (gguf), spectax checkpoints (checkpoint), named
models (hub), and the one entry point over them all, load() / save()."""

from spectax.io.loader import load, save

__all__ = ["load", "save"]
