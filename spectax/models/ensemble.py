"""Ensemble: several models of one vocabulary decoded as one model whose logits are log r, a combination of theirs.

Two combinations (Fu et al. 2025, "Fast Large Language Model Collaborative Decoding via Speculation", ICML):

- mix: a weighted ensemble of probabilities, r = sum_k w_k p_k (logits: logsumexp_k(log w_k + log p_k)).
- contrastive (Li et al. 2023): expert e, amateur a, r proportional to p_e / p_a ** alpha on the plausible set
  {x : p_e(x) >= plausibility * max p_e} and 0 elsewhere (logits: log p_e - alpha * log p_a there, -inf elsewhere).

An Ensemble is a target like a Model: `spectax.decode(ensemble, ...)` runs every member on every token (the naive
collaborative decoding, the reference), and `drafter=spectax.drafters.CoS(ensemble)` makes the same call
speculative, lossless with respect to r. decode()'s temperature / top-k / top-p warp log r like any model's logits
(temperature T samples from r ** (1 / T), normalised). Members may differ in architecture, depth and padded vocabulary
size; the ensemble's vocabulary is member 0's (extra rows of the others dropped, missing ones given probability 0).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pallas_kernels.tree_attention import AttnImpl
from spectax.cache import KVCache
from spectax.checks import is_real
from spectax.models.config import ModelConfig
from spectax.models.model import ForwardOut, Model, full_logits
from spectax.models.vocab import check_vocab_match, to_vocab

MODES = ("mix", "contrastive")



def num_params(model: Model) -> int:
    """The number of parameters of a model."""
    return sum(int(np.prod(np.shape(a))) for a in jax.tree_util.tree_leaves(model.params))


@struct.dataclass
class Ensemble:
    """Models of one vocabulary decoded as one target whose logits are log r (see the module docstring).

    models: the members (>= 2; contrastive: exactly 2, the expert first, the amateur second). weights (mix): one
    per member, >= 0, summing to 1; None is uniform. alpha (contrastive): the amateur's weight, finite and >= 0.
    plausibility (contrastive): the cut in [0, 1]. Bad input raises ValueError at construction (before tracing).
    """

    models: tuple[Model, ...]
    weights: tuple[float, ...] | None = struct.field(pytree_node=False, default=None)
    mode: str = struct.field(pytree_node=False, default="mix")
    alpha: float | None = struct.field(pytree_node=False, default=None)
    plausibility: float = struct.field(pytree_node=False, default=0.1)

    def __post_init__(self):
        models = tuple(self.models) if isinstance(self.models, (list, tuple)) else None
        if models is None or len(models) < 2:
            raise ValueError(f"an Ensemble needs a sequence of >= 2 models, got {self.models!r}")
        for i, m in enumerate(models):
            if not isinstance(m, Model):
                raise ValueError(f"ensemble member {i} must be a spectax Model, got {type(m).__name__}")
        v0 = models[0].config.vocab_size
        for i, m in enumerate(models[1:], 1):
            check_vocab_match(m.config.vocab_size, v0, f"ensemble member {i}'s vocabulary does not match member 0's")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not is_real(self.plausibility) or not 0.0 <= self.plausibility <= 1.0:
            raise ValueError(f"plausibility must be a number in [0, 1], got {self.plausibility!r}")
        weights = self.weights
        if self.mode == "mix":
            if self.alpha is not None:
                raise ValueError("alpha is the contrastive mode's amateur weight; mode 'mix' takes weights")
            weights = (1.0 / len(models),) * len(models) if weights is None else weights
            if not isinstance(weights, (list, tuple)) or len(weights) != len(models) \
                    or not all(is_real(w) and math.isfinite(w) and w >= 0 for w in weights):
                raise ValueError(f"weights must be {len(models)} finite numbers >= 0 (one per model), got "
                                 f"{self.weights!r}")
            if abs(sum(weights) - 1.0) > 1e-6:
                raise ValueError(f"weights must sum to 1, got {self.weights!r} (sum {sum(weights)})")
            weights = tuple(float(w) for w in weights)
        else:
            if len(models) != 2:
                raise ValueError(f"contrastive mode takes exactly 2 models (expert, amateur), got {len(models)}")
            if weights is not None:
                raise ValueError("weights are for mode 'mix'; contrastive mode takes alpha")
            if not is_real(self.alpha) or not math.isfinite(self.alpha) or self.alpha < 0:
                raise ValueError(f"contrastive mode needs alpha, a finite number >= 0, got {self.alpha!r}")
            object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "plausibility", float(self.plausibility))

    @property
    def config(self) -> ModelConfig:
        """Member 0's config (the ensemble's vocabulary and hidden state), with the smallest context of all."""
        return dataclasses.replace(self.models[0].config,
                                   max_position=min(m.config.max_position for m in self.models))

    @property
    def dtype(self):
        return self.models[0].dtype

    def logical_axes(self) -> "Ensemble":
        """The ensemble with each member's params replaced by their logical axes (how a mesh places them)."""
        described = copy.copy(self)                 # no __post_init__: the members now hold Axes
        object.__setattr__(described, "models", tuple(m.logical_axes() for m in self.models))
        return described

    def combine(self, member_logits: list[jax.Array]) -> jax.Array:
        """float32 [..., V]: log r (up to a constant) from each member's logits [..., V_k], V = member 0's V."""
        V = self.config.vocab_size
        member_logp = [jax.nn.log_softmax(to_vocab(l.astype(jnp.float32), V), axis=-1) for l in member_logits]
        if self.mode == "mix":
            with np.errstate(divide="ignore"):
                log_w = np.log(np.asarray(self.weights, np.float32))
            return jax.nn.logsumexp(jnp.stack([lp + w for lp, w in zip(member_logp, log_w)]), axis=0)
        expert, amateur = member_logp
        # tokens the amateur has no row for (padding) get its lowest log-probability, not -inf (which would be +inf)
        amateur = jnp.where(jnp.isfinite(amateur), amateur,
                            jnp.min(jnp.where(jnp.isfinite(amateur), amateur, 0.0), axis=-1, keepdims=True))
        score = expert - self.alpha * amateur
        if self.plausibility == 0:
            return score
        plausible = expert >= jnp.max(expert, axis=-1, keepdims=True) + math.log(self.plausibility)
        return jnp.where(plausible, score, -jnp.inf)

    def _split(self, kv):
        """Per member, its layers' slice of the concatenated per-layer kv tuple (or None without a cache)."""
        if kv is None:
            return [None] * len(self.models)
        offsets = np.cumsum([0] + [m.config.num_layers for m in self.models])
        return [tuple(kv[a:b]) for a, b in itertools.pairwise(offsets)]

    def create_cache(self, batch: int, size: int, fill: float = 0.0) -> KVCache:
        """One KV cache of `size` slots per row holding every member's layers (member 0's first)."""
        caches = [m.create_cache(batch, size, fill) for m in self.models]
        return KVCache(k=sum((c.k for c in caches), ()), v=sum((c.v for c in caches), ()),
                       lengths=jnp.zeros((batch,), jnp.int32))

    def forward(self, tokens_BT, positions_BT, kv, lengths_B, mask_TT, attn_impl: AttnImpl = AttnImpl(),
                logits_at_BI=None, write_cache: bool = True, features_at: tuple[int, ...] = ()) -> ForwardOut:
        """Every member's forward over the same tokens (see `Model.forward`): log r as the logits, member 0's hidden
        states and features, the members' caches concatenated."""
        return self._joined([m.forward(jnp.minimum(tokens_BT, m.config.vocab_size - 1), positions_BT, layers,
                                       lengths_B, mask_TT, attn_impl, logits_at_BI, write_cache,
                                       features_at if i == 0 else ())
                             for i, (m, layers) in enumerate(zip(self.models, self._split(kv)))])

    def prefill(self, prompt_BP, prompt_len_B, kv, chunk: int, attn_impl: AttnImpl = AttnImpl(),
                features_at: tuple[int, ...] = ()) -> ForwardOut:
        """Every member's prefill (see `Model.prefill`), joined as `forward` joins them."""
        return self._joined([m.prefill(jnp.minimum(prompt_BP, m.config.vocab_size - 1), prompt_len_B, layers, chunk,
                                       attn_impl, features_at if i == 0 else ())
                             for i, (m, layers) in enumerate(zip(self.models, self._split(kv)))])

    def _joined(self, outs: list[ForwardOut]) -> ForwardOut:
        """One ForwardOut of the members': log r, member 0's hidden states and features, the caches concatenated."""
        cat = lambda kvs: None if kvs[0] is None else sum((tuple(kv) for kv in kvs), ())   # noqa: E731
        return ForwardOut(self.combine([o.logits_BTV for o in outs]), outs[0].hidden_BTE, cat([o.kv for o in outs]),
                          cat([o.new_kv for o in outs]), outs[0].features_BTLpE)

    def logits(self, tokens_BT) -> jax.Array:
        """Full causal forward of every member without a cache: int32 [B, T] -> log r float32 [B, T, V]."""
        return full_logits(self, tokens_BT)


def early_exit(model: Model, num_layers: int) -> Model:
    """The model cut after its first `num_layers` layers, read out through its own final norm and LM head: an amateur
    for contrastive decoding that shares the expert's weights (as in DoLa, Chuang et al. 2024). The arrays are the
    model's own (no copy). ValueError unless 1 <= num_layers < the model's layers."""
    if not isinstance(model, Model):
        raise ValueError(f"early_exit takes a spectax Model, got {type(model).__name__}")
    L = model.config.num_layers
    if not isinstance(num_layers, (int, np.integer)) or isinstance(num_layers, bool) or not 1 <= num_layers < L:
        raise ValueError(f"num_layers must be an int in [1, {L}), got {num_layers!r}")
    dropped = {f"layers_{i}" for i in range(num_layers, L)}
    params = {k: v for k, v in dict(model.params).items() if k not in dropped}
    return Model.create(dataclasses.replace(model.config, num_layers=int(num_layers)), params)
