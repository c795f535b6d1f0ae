"""Adapters: low-rank updates of a base model's weight matrices plus new vocabulary rows, a few MB where a fine-tuned
copy of the model would be hundreds (APAR's forking SmolLM2 ships this way).

An `Adapter` holds, for some of the base's Dense kernels (`kernel` [in, *out]), factors a [in, r] and b [r, *out]:
the merged kernel is kernel + scale * a @ b. `embed_rows` [X, E] are X token embeddings appended after the base
vocabulary (ids V .. V + X - 1); an untied model also gets `head_cols` [E, X], the LM head's columns for them (a tied
model scores them with the appended embedding rows). `merge(base, adapter)` is the adapted Model (vocab V + X);
under `jax.grad` it is differentiable in the adapter, which is how one is trained.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spectax.models.model import Model

SEP = "/"
EMBEDDING = {"llama": "embed", "gpt2": "wte"}     # the token embedding table's module, by architecture


def kernel_paths(params) -> list[str]:
    """The "/"-joined paths of every Dense kernel of a params tree (the names an adapter's factors are keyed by)."""
    return [SEP.join(str(k.key) for k in path) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if path[-1].key == "kernel" and np.ndim(leaf) >= 2 and path[0].key != "lm_head"]


def _get(params, path: str):
    for key in path.split(SEP):
        params = params[key]
    return params


@struct.dataclass
class Adapter:
    """Low-rank factors {kernel path: {"a": [in, r], "b": [r, *out]}}, the appended embedding rows [X, E], the
    appended head columns [E, X] (None for a tied model) and the factors' scale (static)."""

    factors: dict
    embed_rows: jax.Array
    head_cols: jax.Array | None
    scale: float = struct.field(pytree_node=False, default=1.0)

    @classmethod
    def init(cls, base: Model, new_tokens: int, rank: int, targets=None, seed: int = 0, scale: float = 1.0):
        """A fresh adapter of `rank` for the kernels named in `targets` (default: every Dense kernel but the head):
        a ~ N(0, 1/in), b = 0 (the adapted model starts as the base), the new rows drawn like the base's
        embeddings (their std)."""
        if not isinstance(base, Model):
            raise ValueError(f"an adapter adapts a spectax Model, got {type(base).__name__}")
        for name, v in (("rank", rank), ("new_tokens", new_tokens)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "rank" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'rank' else 0}, got {v!r}")
        paths = kernel_paths(base.params) if targets is None else list(targets)
        unknown = sorted(set(paths) - set(kernel_paths(base.params)))
        if unknown:
            raise ValueError(f"no Dense kernel at {unknown[:3]}; the model's are e.g. {kernel_paths(base.params)[:3]}")
        keys = jax.random.split(jax.random.key(seed), len(paths) + 2)
        factors = {}
        for key, path in zip(keys, paths):
            kernel = _get(base.params, path)
            a = jax.random.normal(key, (kernel.shape[0], rank), jnp.float32) / np.sqrt(kernel.shape[0])
            factors[path] = {"a": a, "b": jnp.zeros((rank,) + tuple(kernel.shape[1:]), jnp.float32)}
        table = base.params[EMBEDDING[base.config.arch]]["embedding"]
        std = jnp.std(table)
        rows = std * jax.random.normal(keys[-2], (new_tokens, table.shape[1]), jnp.float32)
        cols = None
        if "lm_head" in base.params:
            head = base.params["lm_head"]["kernel"]
            cols = jnp.std(head) * jax.random.normal(keys[-1], (head.shape[0], new_tokens), jnp.float32)
        return cls(factors=factors, embed_rows=rows, head_cols=cols, scale=float(scale))

    @property
    def new_tokens(self) -> int:
        return int(self.embed_rows.shape[0])

    @property
    def rank(self) -> int:
        return int(next(iter(self.factors.values()))["a"].shape[1]) if self.factors else 0


def merge(base: Model, adapter: Adapter, **config_changes: Any) -> Model:
    """The adapted model: each adapted kernel plus scale * a @ b, the vocabulary extended by the adapter's rows
    (config.vocab_size + X; `config_changes` set other config fields, e.g. apar_ids). ValueError when the adapter
    does not fit the base (kernel shapes, hidden size, tied or not)."""
    params = jax.tree_util.tree_map(lambda x: x, base.params)          # a copy of the dicts, the arrays shared
    for path, f in adapter.factors.items():
        try:
            kernel = _get(params, path)
        except (KeyError, TypeError):
            raise ValueError(f"the adapter adapts {path!r}, which the base model does not have") from None
        if f["a"].shape[0] != kernel.shape[0] or f["b"].shape[1:] != kernel.shape[1:]:
            raise ValueError(f"the adapter's factors for {path!r} ({f['a'].shape} x {f['b'].shape}) do not fit its "
                             f"kernel {kernel.shape}")
        delta = (f["a"] @ f["b"].reshape(f["b"].shape[0], -1)).reshape(kernel.shape)
        *parents, leaf = path.split(SEP)
        _get(params, SEP.join(parents))[leaf] = kernel + adapter.scale * delta.astype(kernel.dtype)
    embed = EMBEDDING[base.config.arch]
    table = params[embed]["embedding"]
    if adapter.embed_rows.shape[1:] != table.shape[1:]:
        raise ValueError(f"the adapter's rows have width {adapter.embed_rows.shape[1]}, the model's embeddings "
                         f"{table.shape[1]}")
    params[embed]["embedding"] = jnp.concatenate([table, adapter.embed_rows.astype(table.dtype)])
    if ("lm_head" in params) != (adapter.head_cols is not None):
        raise ValueError("the adapter and the base model disagree on whether the LM head is tied to the embeddings")
    if adapter.head_cols is not None:
        head = params["lm_head"]["kernel"]
        params["lm_head"]["kernel"] = jnp.concatenate([head, adapter.head_cols.astype(head.dtype)], axis=1)
    config = dataclasses.replace(base.config, vocab_size=base.config.vocab_size + adapter.new_tokens, **config_changes)
    return Model(config=config, params=params)


def to_arrays(adapter: Adapter, dtype=np.float16) -> dict[str, np.ndarray]:
    """The adapter as flat named host arrays (an .npz's contents), cast to `dtype`."""
    out = {f"factors{SEP}{path}{SEP}{k}": np.asarray(v, dtype) for path, f in adapter.factors.items()
           for k, v in f.items()}
    out["embed_rows"] = np.asarray(adapter.embed_rows, dtype)
    if adapter.head_cols is not None:
        out["head_cols"] = np.asarray(adapter.head_cols, dtype)
    return out


def from_arrays(arrays, scale: float) -> Adapter:
    """The inverse of `to_arrays` (float32 arrays)."""
    factors: dict = {}
    for name in arrays:
        if name.startswith(f"factors{SEP}"):
            path, k = name[len("factors") + 1:].rsplit(SEP, 1)
            factors.setdefault(path, {})[k] = jnp.asarray(arrays[name], jnp.float32)
    if "embed_rows" not in arrays or any(set(f) != {"a", "b"} for f in factors.values()):
        raise ValueError("not an adapter's arrays (embed_rows and an a / b pair per kernel expected)")
    head = arrays["head_cols"] if "head_cols" in arrays else None
    return Adapter(factors=factors, embed_rows=jnp.asarray(arrays["embed_rows"], jnp.float32),
                   head_cols=None if head is None else jnp.asarray(head, jnp.float32), scale=float(scale))
