"""The on-disk form of trained drafters (Heads, Block): a directory with a JSON manifest (format, version, config,
tree) and params.npz (the params flattened to "params/a/b" keys, plus the draft vocabulary), written through a temp
dir renamed into place."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spectax.files import write_dir
from spectax.tree import DraftTree

FORMAT_VERSION = 1


def save_drafter(path, overwrite: bool, manifest_name: str, fmt: str, config: dict, tree: DraftTree, params: dict,
                 vocab_ids) -> Path:
    """Writes the manifest (format `fmt`, the config dict, the tree as rank paths) and params + vocab_ids to the
    directory `path`, never half-written; ValueError if it exists and not `overwrite` (then the whole directory is
    replaced)."""
    manifest = {"format": fmt, "version": FORMAT_VERSION, "config": config, "tree": [list(p) for p in tree.rank_paths]}
    arrays = {"vocab_ids": np.asarray(vocab_ids, np.int32),
              **{f"params/{k}": np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}}

    def fill(tmp: Path) -> None:
        np.savez(tmp / "params.npz", **arrays)
        (tmp / manifest_name).write_text(json.dumps(manifest, indent=1, sort_keys=True))

    return write_dir(path, overwrite, fill)


def load_drafter_parts(path, manifest_name: str, fmt: str, what: str, make_config, init_params):
    """(config, tree, params, vocab_ids) of a directory written by `save_drafter` with format `fmt`: config is
    make_config(the manifest's config dict), and the params must have the shapes init_params(config) gives.
    ValueError naming `what` for anything else."""
    path = Path(path).expanduser()
    try:
        manifest = json.loads((path / manifest_name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} holds no spectax {what} ({manifest_name}: {e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != fmt or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path / manifest_name}: not spectax {what} of format version {FORMAT_VERSION}")
    try:
        with np.load(path / "params.npz") as z:
            arrays = {k: z[k] for k in z.files}
    except OSError as e:
        raise ValueError(f"{path}: incomplete {what}: {e}") from e
    if "vocab_ids" not in arrays:
        raise ValueError(f"{path}: {what} without a draft vocabulary")
    params = traverse_util.unflatten_dict({k.split("/", 1)[1]: jnp.asarray(v) for k, v in arrays.items()
                                           if k.startswith("params/")}, sep="/")
    try:
        config = make_config(manifest["config"])
        tree = DraftTree.from_paths([tuple(p) for p in manifest["tree"]])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: incomplete or invalid {what} manifest: {e}") from e
    expected = jax.tree_util.tree_map(np.shape, jax.eval_shape(lambda: init_params(config)))
    if jax.tree_util.tree_map(np.shape, params) != expected:
        raise ValueError(f"{path}: {what} weights do not match their config {config}")
    return config, tree, params, arrays["vocab_ids"]
