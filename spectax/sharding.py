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

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "model")
CACHE_AXES = ("batch", "kv_heads", "cache_seq", "head_dim")     # k, v [B, K, S, hd]

# parameter logical axes by (module, param) name; the arch-specific fused attention layouts override qkv
_PARAM_AXES = {
    ("embed", "embedding"): ("vocab", "embed"),                  # [V, D]
    ("wte", "embedding"): ("vocab", "embed"),                    # [V, D]
    ("wpe", "embedding"): (None, "embed"),                       # [P, D]
    ("lm_head", "kernel"): ("embed", "vocab"),                   # [D, V]
    ("o", "kernel"): ("heads", "embed"),                         # [H * hd, D]
    ("o", "bias"): ("embed",),
    ("gate_up", "kernel"): ("embed", None, "mlp"),               # [D, 2, F]
    ("down", "kernel"): ("mlp", "embed"),                        # [F, D]
    ("fc", "kernel"): ("embed", "mlp"),                          # [D, F]
    ("fc", "bias"): ("mlp",),
    ("proj", "kernel"): ("mlp", "embed"),                        # [F, D]
    ("proj", "bias"): ("embed",),
    ("llama", "qkv", "kernel"): ("embed", "kv_heads", None, "head_dim"),   # [D, K, G + 2, hd]
    ("llama", "qkv", "bias"): ("kv_heads", None, "head_dim"),
    ("gpt2", "qkv", "kernel"): ("embed", None, "kv_heads", "head_dim"),    # [D, 3, H, hd] (H = K)
    ("gpt2", "qkv", "bias"): (None, "kv_heads", "head_dim"),
}
_NORMS = ("attn_norm", "mlp_norm", "final_norm", "ln_1", "ln_2", "ln_f")

# logical axes of the decode state's arrays by field name (DecodeState, DecodeStats, KVCache and the drafter states)
_STATE_AXES = {
    "tokens": ("batch", None), "n_out": ("batch",), "root": ("batch",), "done": ("batch",), "rng": ("batch",),
    "lengths": ("batch",), "k": CACHE_AXES, "v": CACHE_AXES,
    "target_calls": (), "row_calls": ("batch",), "new_tokens": ("batch",), "speculated": ("batch",),
    "accepted_hist": ("batch", None), "rank_hist": (None, None),
    "x0": ("batch",),                                                     # DraftModelState
    "table_VpD": ("vocab", "embed"), "logits_BHV": ("batch", None, "vocab"), "live_B": ("batch",),   # HeadsState
    "history_BH": ("batch", None), "n_B": ("batch",),                     # NGramState
}
# Heads' weights by kind (spectax.drafters.heads): the width of the inner layer (blockwise) or of the pre-activation
# (medusa, cerberus) is sharded like an MLP's hidden units
_HEADS_AXES = {"w1": (None, "embed", "mlp"), "b1": (None, "mlp")}
_HEADS_W2 = {"blockwise": (None, "mlp", "embed"), "cerberus": (None, "embed", "mlp")}   # [H, D', D] / [H, D, D']

_warned: set = set()


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

    def param_shardings(self, config, params) -> Any:
        """A NamedSharding per leaf of a Model's params (the decoder's layout, see spectax.models)."""
        def one(path, x):
            names = tuple(getattr(k, "key", None) for k in path)
            module, leaf = names[-2], names[-1]
            if module in _NORMS:
                return self.sharding(("embed",), np.shape(x))
            axes = _PARAM_AXES.get((config.arch, module, leaf), _PARAM_AXES.get((module, leaf)))
            if axes is None:
                raise ValueError(f"no sharding rule for parameter {jax.tree_util.keystr(path)}")
            return self.sharding(axes, np.shape(x))
        return jax.tree_util.tree_map_with_path(one, params)

    def place(self, tree):
        """Puts a target (Model, Ensemble) or a drafter on the mesh: every Model's params and every Heads' weights
        sharded by the rules, anything else replicated. Already placed arrays stay as they are."""
        from spectax.drafters.heads import Heads
        from spectax.models import Model

        def one(x):
            if isinstance(x, Model):
                return x.replace(params=place_tree(x.params, self.param_shardings(x.config, x.params)))
            if isinstance(x, Heads):
                axes = {**_HEADS_AXES, "w2": _HEADS_W2.get(x.config.kind)}
                shardings = {k: self.sharding(axes[k], np.shape(v)) for k, v in x.params.items()}
                return x.replace(params=place_tree(x.params, shardings),
                                 vocab_ids=put(x.vocab_ids, self.sharding((None,), x.vocab_ids.shape)))
            return put(x, self.sharding((None,) * np.ndim(x), np.shape(x)))
        return jax.tree_util.tree_map(one, tree, is_leaf=lambda x: isinstance(x, (Model, Heads)))

    def constrain(self, tree):
        """with_sharding_constraint on every array of a decode state (DecodeState, a KVCache, drafter states) by
        its field name (see _STATE_AXES); arrays of fields the rules do not name are left to the compiler."""
        def one(path, x):
            names = [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)]
            axes = _STATE_AXES.get(names[-1]) if names else None
            if axes is None or len(axes) != np.ndim(x):
                return x
            return jax.lax.with_sharding_constraint(x, self.sharding(axes, np.shape(x)))
        return jax.tree_util.tree_map_with_path(one, tree)

    def shard_attention(self, attend, q_BTHD, k_new_BTKD, v_new_BTKD, k_cache_BKSD, v_cache_BKSD, lengths_B, mask):
        """Runs `attend` (a tree-attention kernel returning (out, k_cache, v_cache), pallas_kernels.tree_attention)
        under shard_map: each device attends its rows over its kv heads and their query heads (head h = k * G + g,
        so splitting H as K is split keeps each group whole). kv heads that do not divide the model axis are
        replicated, like the cache. The kernel needs no communication; the out-projection after it reduces over
        heads as XLA's attention path does."""
        cache = self.spec(("batch", "kv_heads", None, None), k_cache_BKSD.shape)
        rows, heads = cache[0], cache[1]
        per_token = PartitionSpec(rows, None, heads, None)                  # q [B, T, H, D], k/v new [B, T, K, D]
        mask_spec = PartitionSpec(rows, None, None) if np.ndim(mask) == 3 else PartitionSpec(None, None)
        return jax.shard_map(attend, mesh=self.mesh, in_specs=(per_token, per_token, per_token, cache, cache,
                                                                PartitionSpec(rows), mask_spec),
                             out_specs=(per_token, cache, cache), check_vma=False)(
            q_BTHD, k_new_BTKD, v_new_BTKD, k_cache_BKSD, v_cache_BKSD, lengths_B, jnp.asarray(mask))

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
