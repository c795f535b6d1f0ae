"""spectax.load(): the one entry point for everything on disk: named models, spectax checkpoints, Hugging Face dirs,
GGUF files, Ensemble manifests and saved or shipped drafters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from spectax.files import write_dir
from spectax.io import hub
from spectax.io.checkpoint import is_checkpoint, load_checkpoint, save
from spectax.io.gguf import load_gguf
from spectax.io.hf import is_hf_checkpoint, load_hf
from spectax.models import Model
from spectax.models.adapter import Adapter, from_arrays, merge, to_arrays
from spectax.models.ensemble import Ensemble, early_exit
from spectax.sharding import Layout, ShardingRules

ENSEMBLE_MANIFEST = "ensemble.json"
ADAPTER_MANIFEST, ADAPTER_ARRAYS = "adapter.json", "adapter.npz"


def converted_path(name: str) -> Path:
    """Where the float32 spectax checkpoint converted from a named model is cached."""
    return hub.cache_dir() / "converted" / name


def load(path_or_name: str | os.PathLike, dtype=None, mesh=None, rules=None):
    """Loads what `path_or_name` names: a Model from a registered name (e.g. "smollm2-135m-instruct"), a spectax
    checkpoint directory, a Hugging Face directory (config.json + safetensors) or a llama-architecture .gguf file;
    an `Ensemble` from a directory holding `ensemble.json`; an adapted model (`save_adapted`: its base model with a
    low-rank adapter merged and new tokens appended) from a directory holding `adapter.json`; a drafter (`Heads` or `Block`) from a directory it was
    saved to. Shipped checkpoints load by their folder under the target's name, e.g.
    "smollm2-135m-instruct/block" (a drafter) or "smollm2-135m-instruct/cos-contrastive" (an Ensemble).

    A named model is fetched once, converted, and cached as a spectax checkpoint (later loads read that).
    `dtype` (e.g. jnp.bfloat16) casts a model's params; default: float32 for converted formats, as saved otherwise.
    mesh (spectax.sharding.make_mesh): a model's params are sharded over it by `rules` (default ShardingRules()) as
    they load; each tensor is read on the host and each device receives only its own slices (never the whole model
    on one device). Raises ValueError for an unknown name, a path that is none of these, a malformed checkpoint, or
    a mesh the rules do not fit.
    """
    layout = None if mesh is None else Layout(mesh, ShardingRules() if rules is None else rules)
    if isinstance(path_or_name, str) and path_or_name in hub.REGISTRY:
        cached = converted_path(path_or_name)
        if not is_checkpoint(cached):
            config, params = load_gguf(hub.resolve(path_or_name))
            save(Model.create(config, params, layout=layout), cached, overwrite=True)   # on the mesh, if any
        return load_checkpoint(cached, dtype=dtype, layout=layout)
    path = Path(path_or_name).expanduser()
    if not path.exists() and (hub.SHIPPED / path).is_dir():
        path = hub.SHIPPED / path
    if not path.exists():
        raise ValueError(f"{path_or_name!r} is neither a registered model {sorted(hub.REGISTRY)}, a shipped "
                         f"checkpoint nor an existing path (a model, an Ensemble manifest or a drafter directory)")
    if path.is_dir() and (path / ENSEMBLE_MANIFEST).is_file():
        return load_ensemble(path, dtype=dtype)
    if path.is_dir() and (path / ADAPTER_MANIFEST).is_file():
        return load_adapted(path)
    if path.is_dir() and any((path / m).is_file() for m in hub.DRAFTER_MANIFESTS):
        return hub.load_drafter(path)
    if path.is_dir() and is_checkpoint(path):
        return load_checkpoint(path, dtype=dtype, layout=layout)
    if path.is_dir() and is_hf_checkpoint(path):
        config, params = load_hf(path)
        return Model.create(config, params, dtype=dtype, layout=layout)
    if path.is_file() and path.suffix == ".gguf":
        config, params = load_gguf(path)
        return Model.create(config, params, dtype=dtype, layout=layout)
    raise ValueError(f"{path} is not a spectax checkpoint, a Hugging Face directory (config.json + *.safetensors), "
                     f"a .gguf file, an Ensemble manifest ({ENSEMBLE_MANIFEST}) or a saved drafter")


def load_ensemble(path, dtype=None) -> Ensemble:
    """An ensemble from a directory holding `ensemble.json` (mode, alpha or weights, plausibility, members).

    Each member is {"model": a registered name (spectax.load) or a path relative to the directory,
    "early_exit": optional int, keep only that many layers (see `early_exit`)}. A model named by several
    members is loaded once. `path` may also be a folder of the shipped checkpoints, e.g.
    "smollm2-135m-instruct/cos-contrastive". ValueError on a missing or malformed manifest.
    """
    try:
        manifest = json.loads((path / ENSEMBLE_MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / ENSEMBLE_MANIFEST} is not a readable ensemble manifest: {e}") from None
    known = {"mode", "weights", "alpha", "plausibility", "members", "note"}
    if not isinstance(manifest, dict) or set(manifest) - known or not isinstance(manifest.get("members"), list):
        raise ValueError(f"{path / ENSEMBLE_MANIFEST} must be an object with 'members' (a list) and only the keys "
                         f"{sorted(known)}")
    loaded, members = {}, []
    for i, member in enumerate(manifest["members"]):
        if not isinstance(member, dict) or set(member) - {"model", "early_exit"} \
                or not isinstance(member.get("model"), str):
            raise ValueError(f"member {i} of {path / ENSEMBLE_MANIFEST} must be {{'model': str, 'early_exit': int}}, "
                             f"got {member!r}")
        name = member["model"]
        source = path / name if (path / name).exists() else name
        if name not in loaded:
            loaded[name] = load(source, dtype=dtype)
        model = loaded[name]
        members.append(early_exit(model, member["early_exit"]) if "early_exit" in member else model)
    weights = manifest.get("weights")
    return Ensemble(tuple(members), weights=None if weights is None else tuple(weights),
               mode=manifest.get("mode", "mix"), alpha=manifest.get("alpha"),
               plausibility=manifest.get("plausibility", 0.1))


__all__ = ["load", "save", "converted_path", "load_ensemble", "ENSEMBLE_MANIFEST"]


def save_adapted(adapter: Adapter, path, base: str, tokens, config: dict, info: dict | None = None,
                 overwrite: bool = False) -> Path:
    """Writes an adapter for the model `base` (a registered name, or a path spectax.load reads) into the directory `path`: adapter.npz (float16
    factors and rows) and adapter.json (the base, the scale, the appended `tokens` in id order, the `config` fields
    the adapted model changes, and `info`: how it was trained). `spectax.load(path)` gives the adapted model."""
    if not isinstance(base, str):
        raise ValueError(f"an adapter's base is a registered model name or a checkpoint path (a str), got {base!r}")
    if len(tokens) != adapter.new_tokens:
        raise ValueError(f"{len(tokens)} token names for an adapter of {adapter.new_tokens} new tokens")

    def fill(tmp: Path) -> None:
        np.savez(tmp / ADAPTER_ARRAYS, **to_arrays(adapter))
        manifest = {"format": "spectax-adapter", "version": 1, "base": base, "scale": adapter.scale,
                    "tokens": list(tokens), "config": config, "info": info or {}}
        (tmp / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=1))

    return write_dir(path, overwrite, fill)


def _adapter_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / ADAPTER_MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / ADAPTER_MANIFEST} is not a readable adapter manifest: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "spectax-adapter" or manifest.get("version") != 1:
        raise ValueError(f"{path / ADAPTER_MANIFEST}: not a spectax adapter manifest (format 1)")
    for key, kind in (("base", str), ("scale", (int, float)), ("tokens", list), ("config", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"{path / ADAPTER_MANIFEST}: {key!r} missing or of the wrong type")
    return manifest


def load_adapted_base(path) -> Model:
    """The base model of a `save_adapted` directory (what its adapter was trained on)."""
    return load(_adapter_manifest(Path(path))["base"])


def load_adapted(path) -> Model:
    """The model a `save_adapted` directory describes: its base loaded, the adapter merged, the config changed."""
    path = Path(path)
    manifest = _adapter_manifest(path)
    base = load_adapted_base(path)
    try:
        with np.load(path / ADAPTER_ARRAYS) as arrays:
            adapter = from_arrays(arrays, manifest["scale"])
    except (OSError, ValueError) as e:
        raise ValueError(f"{path / ADAPTER_ARRAYS}: {e}") from None
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()}
    try:
        return merge(base, adapter, **changes)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: the adapter does not fit {manifest['base']}: {e}") from None


def adapted_tokenizer(path):
    """The tokenizer of a `save_adapted` directory's model: its base's, with the appended tokens."""
    manifest = _adapter_manifest(Path(path))
    if manifest["base"] not in hub.REGISTRY:
        raise ValueError(f"{path}: the tokenizer of an adapter over {manifest['base']!r} (not a registered model) "
                         f"is not known: pass one")
    return hub.tokenizer(manifest["base"]).with_special_tokens(manifest["tokens"])
