"""spectax.load(): one entry point for named models, spectax checkpoints, Hugging Face dirs and GGUF files."""

from __future__ import annotations

import os
from pathlib import Path

from spectax.io import hub
from spectax.io.checkpoint import is_checkpoint, load_checkpoint, save
from spectax.io.gguf import load_gguf
from spectax.io.hf import is_hf_checkpoint, load_hf
from spectax.models import Model
from spectax.sharding import Layout, ShardingRules


def converted_path(name: str) -> Path:
    """Where the float32 spectax checkpoint converted from a named model is cached."""
    return hub.cache_dir() / "converted" / name


def load(path_or_name: str | os.PathLike, dtype=None, mesh=None, rules=None) -> Model:
    """Loads a Model from a registered name (e.g. "smollm2-135m-instruct"), a spectax checkpoint directory, a
    Hugging Face directory (config.json + safetensors) or a llama-architecture .gguf file.

    A named model is fetched once, converted, and cached as a spectax checkpoint (later loads read that).
    `dtype` (e.g. jnp.bfloat16) casts the params; default: float32 for converted formats, as saved otherwise.
    mesh (spectax.sharding.make_mesh): the params are sharded over it by `rules` (default ShardingRules()) as they
    load; each tensor is read on the host and each device receives only its own slices (never the whole model on
    one device). Raises ValueError for an unknown name, a path that is none of these, a malformed checkpoint, or a
    mesh the rules do not fit.
    """
    layout = None if mesh is None else Layout(mesh, ShardingRules() if rules is None else rules)
    if isinstance(path_or_name, str) and path_or_name in hub.REGISTRY:
        cached = converted_path(path_or_name)
        if not is_checkpoint(cached):
            config, params = load_gguf(hub.resolve(path_or_name))
            save(Model.create(config, params, layout=layout), cached, overwrite=True)   # on the mesh, if any
        return load_checkpoint(cached, dtype=dtype, layout=layout)
    path = Path(path_or_name).expanduser()
    if not path.exists():
        raise ValueError(f"{path_or_name!r} is neither a registered model {sorted(hub.REGISTRY)} nor an existing "
                         f"path")
    if path.is_dir() and is_checkpoint(path):
        return load_checkpoint(path, dtype=dtype, layout=layout)
    if path.is_dir() and is_hf_checkpoint(path):
        config, params = load_hf(path)
        return Model.create(config, params, dtype=dtype, layout=layout)
    if path.is_file() and path.suffix == ".gguf":
        config, params = load_gguf(path)
        return Model.create(config, params, dtype=dtype, layout=layout)
    raise ValueError(f"{path} is not a spectax checkpoint, a Hugging Face directory (config.json + *.safetensors) "
                     f"or a .gguf file")


__all__ = ["load", "save", "converted_path"]
