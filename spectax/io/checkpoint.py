"""spectax checkpoints: a directory with `spectax.json` (format + config) and `params/` (orbax), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from spectax.files import write_dir
from spectax.models import Model, ModelConfig

MANIFEST = "spectax.json"
FORMAT_VERSION = 1


def is_checkpoint(path) -> bool:
    """True when `path` is a directory written by `save`."""
    return (Path(path) / MANIFEST).is_file()


def save(model: Model, path, overwrite: bool = False) -> Path:
    """Writes `model` to the directory `path` (a sibling temp dir renamed into place: never half-written)."""
    if not isinstance(model, Model):
        raise ValueError(f"save() takes a spectax Model, got {type(model).__name__}")

    def fill(tmp: Path) -> None:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "params", model.params)
        checkpointer.wait_until_finished()
        manifest = {"format": "spectax", "version": FORMAT_VERSION, "dtype": str(model.dtype),
                    "config": json.loads(model.config.to_json())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))

    return write_dir(path, overwrite, fill)


def load_checkpoint(path, dtype=None, layout=None) -> Model:
    """Reads a directory written by `save`; `dtype` casts the params (default: as saved); layout: None or a
    spectax.sharding.Layout to shard them over (see Model.create)."""
    path = Path(path).expanduser().absolute()
    if not is_checkpoint(path):
        raise ValueError(f"{path} is not a spectax checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise ValueError(f"{path / MANIFEST} does not hold a JSON object")
    if manifest.get("format") != "spectax" or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path / MANIFEST}: unsupported checkpoint format {manifest.get('format')!r} "
                         f"version {manifest.get('version')!r}")
    if not isinstance(manifest.get("config"), dict):
        raise ValueError(f"{path / MANIFEST} has no 'config' object")
    try:
        config = ModelConfig.from_json(json.dumps(manifest["config"]))
    except (TypeError, ValueError) as e:  # unknown / missing fields, bad values
        raise ValueError(f"{path / MANIFEST}: invalid model config: {e}") from e
    if not (path / "params").is_dir():
        raise ValueError(f"{path} has no params/ directory (incomplete checkpoint)")
    checkpointer = ocp.StandardCheckpointer()
    # restored into host (numpy) buffers, never onto one device: Model.create then places them (per shard on a mesh)
    meta = checkpointer.metadata(path / "params").item_metadata
    params = checkpointer.restore(path / "params", jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), meta))
    try:
        return Model.create(config, params, dtype=dtype, layout=layout)
    except ValueError as e:  # params that do not fit the config
        raise ValueError(f"{path}: {e}") from e
