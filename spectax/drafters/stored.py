"""The on-disk form of trained drafters (Heads, Block): a directory with a JSON manifest and params.npz (the params
flattened to "params/a/b" keys, plus the draft vocabulary), written through a temp dir renamed into place."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def write_drafter(path, overwrite: bool, manifest_name: str, manifest: dict, params: dict, vocab_ids) -> Path:
    """Writes `manifest` (JSON) and params + vocab_ids (params.npz) to the directory `path`, never half-written;
    ValueError if it exists and not `overwrite` (then the whole directory is replaced)."""
    from spectax.io.checkpoint import write_dir

    arrays = {"vocab_ids": np.asarray(vocab_ids, np.int32),
              **{f"params/{k}": np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}}

    def fill(tmp: Path) -> None:
        np.savez(tmp / "params.npz", **arrays)
        (tmp / manifest_name).write_text(json.dumps(manifest, indent=1, sort_keys=True))

    return write_dir(path, overwrite, fill)


def read_drafter(path, manifest_name: str, fmt: str, version: int, what: str) -> tuple[dict, dict, np.ndarray]:
    """(manifest, params (nested dict of arrays), vocab_ids) of a directory written by `write_drafter` with format
    `fmt` and `version`; ValueError naming `what` for anything else."""
    path = Path(path).expanduser()
    try:
        manifest = json.loads((path / manifest_name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} holds no spectax {what} ({manifest_name}: {e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != fmt or manifest.get("version") != version:
        raise ValueError(f"{path / manifest_name}: not spectax {what} of format version {version}")
    try:
        with np.load(path / "params.npz") as z:
            arrays = {k: z[k] for k in z.files}
    except OSError as e:
        raise ValueError(f"{path}: incomplete {what}: {e}") from e
    if "vocab_ids" not in arrays:
        raise ValueError(f"{path}: {what} without a draft vocabulary")
    params = traverse_util.unflatten_dict({k.split("/", 1)[1]: jnp.asarray(v) for k, v in arrays.items()
                                           if k.startswith("params/")}, sep="/")
    return manifest, params, arrays["vocab_ids"]
