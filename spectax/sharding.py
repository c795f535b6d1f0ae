"""Sharded decoding with jax.sharding: logical axis names -> mesh axes, and the shardings of params, cache and state.

A mesh has two axes, "data" (batch rows: data parallelism) and "model" (tensor parallelism: attention heads, MLP
hidden units, the vocabulary of the embedding and the LM head). `ShardingRules` maps each logical axis name an array
dimension carries to a mesh axis (or None: replicated). A dimension whose size does not divide its mesh axis (kv heads
fewer than the model axis, an odd vocabulary) is replicated instead, with one warning per case; the compiler then
inserts whatever communication the mixed layout needs. Random draws are bit-identical on any mesh (partitionable
threefry); logits can differ in the last bits (a sharded matmul sums in another order), so a token can only change
where two candidates tie to within rounding.

The decode program itself is unchanged: `decode(..., mesh=mesh)` places params and inputs with these shardings and
pins the KV cache and the loop state to them (`Layout.constrain`); XLA's SPMD partitioner shards every op in between
(the all-reduces after the attention out-projection and the MLP down-projection, the vocabulary-sharded softmax,
argmax and sampling reductions). A Pallas attention kernel is a call XLA cannot partition: it enters at one
shard_map boundary (`Layout.shard_attention`), one kernel call per (batch, kv-head) shard.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "model")
CACHE_AXES = ("batch", "kv_heads", "cache_seq", "head_dim")     # k, v [B, G, S, hd]


@dataclasses.dataclass(frozen=True)
class Axes:
    """The logical axis names of one array's dimensions (None: a dimension never sharded). Not a pytree node: a
    pytree of Axes mirrors the pytree of arrays it describes."""

    names: tuple[str | None, ...]


def axes(*names: str | None, **field_kwargs):
    """A pytree field of a flax struct dataclass whose arrays (every array in the field's value: one, or a tuple of
    per-layer arrays) carry these logical axes: how a pytree owner declares its arrays' sharding."""
    return struct.field(pytree_node=True, metadata={"axes": Axes(tuple(names))}, **field_kwargs)


class Undeclared(ValueError):
    """An array whose owner declares no logical axes for it."""


def logical_axes(tree):
    """The pytree of `Axes` (one per array leaf of `tree`) that the owners of its parts declare.

    An object declares by a `logical_axes()` method (returning that pytree for itself) or, for a flax struct
    dataclass, by its fields: a field made with `axes(...)` gives all its arrays those axes; any other pytree field
    is walked in turn. Tuples, lists and dicts are walked; None and empty containers hold nothing. An array reached
    with no declaration raises `Undeclared` naming its path."""
    def walk(x, path):
        if hasattr(x, "logical_axes") and callable(x.logical_axes):
            return x.logical_axes()
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            out = {}
            for f in dataclasses.fields(x):
                if not f.metadata.get("pytree_node", True):
                    continue
                value = getattr(x, f.name)
                declared = f.metadata.get("axes")
                out[f.name] = (jax.tree_util.tree_map(lambda _: declared, value) if declared is not None
                               else walk(value, f"{path}.{f.name}"))
            described = copy.copy(x)                          # no __post_init__: the fields now hold Axes
            for name, value in out.items():
                object.__setattr__(described, name, value)
            return described
        if isinstance(x, (tuple, list)):
            return type(x)(walk(v, f"{path}[{i}]") for i, v in enumerate(x))
        if isinstance(x, dict):
            return {k: walk(v, f"{path}[{k!r}]") for k, v in x.items()}
        if x is None:
            return None
        raise Undeclared(f"{path or 'the tree'} ({type(x).__name__} {np.shape(x)}) has no declared logical axes: "
                         f"declare them with spectax.sharding.axes(...) fields or a logical_axes() method")
    return walk(tree, type(tree).__name__)


_warned: set = set()


def forget_warnings() -> None:
    """Forgets which replications were warned about, so each is said again once (tests)."""
    _warned.clear()


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis name -> mesh axis name (None: replicated). Hashable: part of the decode program's cache key."""

    batch: str | None = "data"
    vocab: str | None = "model"
    embed: str | None = None
    heads: str | None = "model"
    kv_heads: str | None = "model"
    mlp: str | None = "model"
    cache_seq: str | None = None
    head_dim: str | None = None

    def mesh_axes(self) -> set[str]:
        """The mesh axis names these rules shard over."""
        return {a for a in dataclasses.asdict(self).values() if a is not None}


def make_mesh(data: int = 1, model: int = 1, devices=None) -> Mesh:
    """A (data, model) mesh over the first data * model devices (default: jax.devices(), every process's).

    ValueError unless both are ints >= 1 and that many devices exist."""
    for name, n in (("data", data), ("model", model)):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"make_mesh: {name} must be an int >= 1, got {n!r}")
    devices = jax.devices() if devices is None else list(devices)
    if data * model > len(devices):
        raise ValueError(f"make_mesh(data={data}, model={model}) needs {data * model} devices, there are "
                         f"{len(devices)}")
    return Mesh(np.asarray(devices[:data * model]).reshape(data, model), MESH_AXES)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and the rules that map logical axes onto it (validated: every mesh axis is one the rules know)."""

    mesh: Mesh
    rules: ShardingRules = ShardingRules()

    def __post_init__(self):
        if not isinstance(self.mesh, Mesh):
            raise ValueError(f"mesh must be a jax.sharding.Mesh (spectax.sharding.make_mesh), got "
                             f"{type(self.mesh).__name__}")
        if not isinstance(self.rules, ShardingRules):
            raise ValueError(f"rules must be a spectax.sharding.ShardingRules, got {type(self.rules).__name__}")
        unknown = [a for a in self.mesh.axis_names if a not in self.rules.mesh_axes()]
        if unknown:
            raise ValueError(f"mesh axes {unknown} are unknown to the sharding rules, which shard over "
                             f"{sorted(self.rules.mesh_axes())}: name the mesh axes {MESH_AXES} "
                             f"(spectax.sharding.make_mesh) or map logical axes onto them in ShardingRules")
        missing = sorted(self.rules.mesh_axes() - set(self.mesh.axis_names))
        if missing:
            raise ValueError(f"the sharding rules shard over mesh axes {missing}, which mesh "
                             f"{dict(self.mesh.shape)} lacks")

    def axis_size(self, logical: str) -> int:
        """How many shards the rules cut the logical axis into (1 when replicated)."""
        axis = getattr(self.rules, logical)
        return 1 if axis is None else self.mesh.shape[axis]

    def check_batch(self, batch: int) -> None:
        """ValueError unless `batch` rows split evenly over the data axis."""
        n = self.axis_size("batch")
        if batch % n:
            raise ValueError(f"batch of {batch} rows does not divide the mesh's {self.rules.batch!r} axis of size "
                             f"{n}: pass a multiple of {n} rows (pad the batch with dummy prompts)")

    def spec(self, logical: tuple[str | None, ...], shape: tuple[int, ...]) -> PartitionSpec:
        """The PartitionSpec of an array of `shape` whose dimensions carry the `logical` axis names.

        A dimension that does not divide its mesh axis is replicated (warned once per case); ValueError when two
        dimensions would be sharded over the same mesh axis."""
        if len(logical) != len(shape):
            raise ValueError(f"{len(logical)} logical axes {logical} for an array of shape {shape}")
        axes = []
        for name, size in zip(logical, shape):
            axis = None if name is None else getattr(self.rules, name)
            if axis is not None and size % self.mesh.shape[axis]:
                key = (name, size, axis, self.mesh.shape[axis])
                if key not in _warned:
                    _warned.add(key)
                    warnings.warn(f"{name} of size {size} does not divide mesh axis {axis!r} of size "
                                  f"{self.mesh.shape[axis]}: replicated along it", stacklevel=3)
                axis = None
            axes.append(axis)
        used = [a for a in axes if a is not None]
        if len(used) != len(set(used)):
            raise ValueError(f"logical axes {logical} put mesh axis {used} more than once in one array: check the "
                             f"ShardingRules {self.rules}")
        return PartitionSpec(*axes)

    def sharding(self, logical, shape) -> NamedSharding:
        """NamedSharding of `spec(logical, shape)` on this mesh."""
        return NamedSharding(self.mesh, self.spec(tuple(logical), tuple(shape)))

    # ------------------------------------------------------------------------------------------------- placement

    def shardings(self, tree, axes_tree) -> Any:
        """A NamedSharding per array of `tree`, from the matching pytree of `Axes` (see `logical_axes`)."""
        return jax.tree_util.tree_map(lambda a, x: self.sharding(a.names, np.shape(x)), axes_tree, tree,
                                      is_leaf=lambda a: isinstance(a, Axes))

    def _declared(self, tree):
        """logical_axes(tree), or for a tree whose owners declare nothing, every array replicated (warned once per
        owner type: it still decodes, each device holding every array whole)."""
        try:
            return logical_axes(tree)
        except Undeclared as e:
            key = ("undeclared", type(tree).__name__)
            if key not in _warned:
                _warned.add(key)
                warnings.warn(f"{e}; replicating {type(tree).__name__} on every device", stacklevel=3)
            return jax.tree_util.tree_map(lambda x: Axes((None,) * np.ndim(x)), tree)

    def place(self, tree):
        """Puts a pytree (a target Model or Ensemble, a drafter) on the mesh, every array sharded by the axes its
        owner declares (see `logical_axes`); a tree that declares nothing is replicated, with a warning. Already
        placed arrays stay as they are."""
        return self.place_arrays(tree, self._declared(tree))

    def place_arrays(self, tree, axes_tree, dtype=None):
        """`tree`'s arrays (host or device) on the mesh as the matching pytree of `Axes` says, cast to `dtype`."""
        return place_tree(tree, self.shardings(tree, axes_tree), dtype)

    def constrain(self, tree):
        """with_sharding_constraint on every array of a decode state (DecodeState, a KVCache, drafter states) by
        the axes its owners declare; an undeclared drafter state is pinned replicated, with a warning."""
        return jax.tree_util.tree_map(jax.lax.with_sharding_constraint, tree,
                                      self.shardings(tree, self._declared(tree)))

    def shard_attention(self, attend, q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, mask):
        """Runs `attend` (a tree-attention kernel returning (out, k_cache, v_cache), pallas_kernels.tree_attention)
        under shard_map: each device attends its rows over its kv heads and their query heads (head h = k * G + g,
        so splitting H as K is split keeps each group whole). kv heads that do not divide the model axis are
        replicated, like the cache. The kernel needs no communication; the out-projection after it reduces over
        heads as XLA's attention path does."""
        cache = self.spec(("batch", "kv_heads", None, None), k_cache_BGShd.shape)
        rows, heads = cache[0], cache[1]
        per_token = PartitionSpec(rows, None, heads, None)                  # q [B, T, H, D], k/v new [B, T, K, D]
        mask_spec = PartitionSpec(rows, None, None) if np.ndim(mask) == 3 else PartitionSpec(None, None)
        return jax.shard_map(attend, mesh=self.mesh, in_specs=(per_token, per_token, per_token, cache, cache,
                                                                PartitionSpec(rows), mask_spec),
                             out_specs=(per_token, cache, cache), check_vma=False)(
            q_BTHhd, k_new_BTGhd, v_new_BTGhd, k_cache_BGShd, v_cache_BGShd, lengths_B, jnp.asarray(mask))

    def rows(self, x) -> jax.Array:
        """A per-row host array (prompt [B, ...], lengths [B], keys [B]) placed with its rows over the data axis."""
        return put(x, self.sharding(("batch",) + (None,) * (np.ndim(x) - 1), np.shape(x)))


def put(x, sharding: NamedSharding, dtype=None) -> jax.Array:
    """`x` (numpy or jax) as a jax.Array with `sharding`, cast to `dtype` (default: as is). A host array goes to the
    devices slice by slice (each device receives only its own shard, never the whole array); a jax.Array already so
    sharded is returned as is. Multi-host: every process passes the same host value; each places its own devices'
    slices."""
    if isinstance(x, jax.Array):
        x = x if dtype is None else x.astype(dtype)
        if x.sharding == sharding:
            return x
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):        # keys: place their uint32 data
            data = put(np.asarray(jax.random.key_data(x)), NamedSharding(sharding.mesh, PartitionSpec(
                *sharding.spec, *(None,) * (x.ndim + 1 - len(sharding.spec)))))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    x = np.asarray(x)
    dtype = x.dtype if dtype is None else dtype
    return jax.make_array_from_callback(x.shape, sharding, lambda index: np.asarray(x[index], dtype))


def place_tree(tree, shardings, dtype=None):
    """`put` over a pytree of arrays and the matching pytree of shardings."""
    return jax.tree_util.tree_map(lambda x, s: put(x, s, dtype), tree, shardings)
