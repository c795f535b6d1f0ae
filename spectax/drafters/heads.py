"""Heads: k proposal heads on the target's own hidden state (blockwise parallel decoding, Medusa, Cerberus).

Head i (0-based) reads the target's final hidden state x at the position that predicts the next root and proposes the
token i + 1 positions after that root, through the target's own LM head (shared by all heads), restricted to a draft
vocabulary of V' token ids (the most frequent ones in the target's outputs: FR-Spec / EAGLE-3):

  blockwise (Stern et al. 2018)   h_i = x + relu(x W1_i + b1_i) W2_i          (one hidden FFN layer, residual)
  medusa    (Cai et al. 2024)     h_i = x + silu(x W1_i + b1_i)               (a residual SiLU block)
  cerberus  (Zheng et al. 2024)   h_i = x + silu(x W1_i + h_{i-1} W2_i + b1_i) (sequential: head i sees head i - 1)
  logits_i = h_i E'^T             E' [V', E]: the target's head rows at the draft vocabulary

Combined predict + verify: the heads run in `update` on the hidden state that the step's verification forward
computed at each row's deepest accepted node, so a step costs exactly one target forward. Cerberus adds an entropy
gate: a row whose target distribution at that node has entropy above `gate` (nats) does not speculate next step,
and a step where no row speculates runs as a plain step (see loop.step).

Tree nodes: the node of rank r at depth d holds head d - 1's r-th candidate (greedy: its r-th best token; sampling:
its r-th Gumbel draw without replacement from the warped head distribution q, recorded for the verifier; q is zero
outside V', so verification stays lossless over the full vocabulary).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from spectax.drafters.per_depth import check_per_depth, check_vocab_ids, propose_per_depth
from spectax.drafters.stored import load_drafter_parts, save_drafter
from spectax.sharding import Axes, axes
from spectax.tree import DraftTree

KINDS = ("blockwise", "medusa", "cerberus")
MANIFEST = "heads.json"


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """The static half of a set of heads (hashable: part of the jit cache key)."""

    kind: str
    num_heads: int
    hidden_size: int          # the target's E
    vocab_size: int           # the target's V
    gate: float | None = None  # cerberus: max target entropy (nats) at which a row speculates; None = always

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Heads kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("num_heads", "hidden_size", "vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Heads {name} must be an int >= 1, got {v!r}")
        if self.gate is not None and (self.kind != "cerberus" or not isinstance(self.gate, (int, float))
                                      or isinstance(self.gate, bool) or not math.isfinite(self.gate)
                                      or self.gate < 0):
            raise ValueError(f"gate (a finite entropy >= 0 in nats) is for kind='cerberus' only, got {self.gate!r}")


def head_table(model) -> jax.Array:
    """[V, E]: the target's LM head as rows (the tied embedding, or the transposed untied head)."""
    p = model.params
    if "lm_head" in p:
        return p["lm_head"]["kernel"].T
    return (p["embed"] if "embed" in p else p["wte"])["embedding"]


def init_params(config: HeadsConfig, seed: int = 0, scale: float = 0.0) -> dict:
    """Head weights, zero biases. The matrices that feed a residual are N(0, scale^2 / E) (scale 0, the training
    start: every head begins as the identity and proposes what the LM head would at its own position); blockwise's
    inner layer is N(0, 2 / E) (He), so its zero output layer still gets gradients."""
    D, E = config.num_heads, config.hidden_size
    k1, k2 = jax.random.split(jax.random.key(seed))
    normal = lambda k, std: std * jax.random.normal(k, (D, E, E), jnp.float32)  # noqa: E731
    if config.kind == "blockwise":
        return {"w1": normal(k1, math.sqrt(2 / E)), "b1": jnp.zeros((D, E), jnp.float32),
                "w2": normal(k2, scale / math.sqrt(E))}
    params = {"w1": normal(k1, scale / math.sqrt(E)), "b1": jnp.zeros((D, E), jnp.float32)}
    if config.kind == "cerberus":
        params["w2"] = normal(k2, scale / math.sqrt(E))
    return params


def head_states(config: HeadsConfig, params: dict, x_BE: jax.Array) -> jax.Array:
    """[B, D, E]: every head's hidden state h_i from the target hidden state x (one pass, see module docstring)."""
    x = x_BE.astype(jnp.float32)
    if config.kind == "blockwise":
        inner = jax.nn.relu(jnp.einsum("bd,hde->bhe", x, params["w1"]) + params["b1"])
        return x[:, None] + jnp.einsum("bhe,hed->bhd", inner, params["w2"])
    if config.kind == "medusa":
        return x[:, None] + jax.nn.silu(jnp.einsum("bd,hde->bhe", x, params["w1"]) + params["b1"])
    pre_BDE = jnp.einsum("bd,hde->bhe", x, params["w1"]) + params["b1"]

    def one(prev_BE, i):
        h = x + jax.nn.silu(pre_BDE[:, i] + prev_BE @ params["w2"][i])
        return h, h

    _, hs = lax.scan(one, jnp.zeros_like(x), jnp.arange(config.num_heads))
    return jnp.moveaxis(hs, 0, 1)


def head_logits(config: HeadsConfig, params: dict, table_VpE: jax.Array, x_BE: jax.Array) -> jax.Array:
    """float32 [B, D, V']: every head's logits over the draft vocabulary (table_VpE: the head rows E')."""
    return jnp.einsum("bhd,vd->bhv", head_states(config, params, x_BE), table_VpE.astype(jnp.float32))


def entropy(logits_xV: jax.Array) -> jax.Array:
    """float32 [...]: the entropy (nats) of softmax(logits)."""
    logp = jax.nn.log_softmax(logits_xV.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.where(jnp.isfinite(logp), jnp.exp(logp) * logp, 0.0), axis=-1)


@struct.dataclass
class HeadsState:
    table_VpE: jax.Array = axes("vocab", "embed")            # [V', E] the target's head rows at the draft vocabulary
    logits_BDV: jax.Array = axes("batch", None, "vocab")     # float32 [B, D, V'] the heads' logits, next proposal
    live_B: jax.Array | None = axes("batch")                 # bool [B] rows that speculate next step (the Cerberus
                                                             # gate); None: ungated


@struct.dataclass
class Heads:
    """A drafter of k heads on the target's hidden state; see the module docstring.

    params: the head weights (init_params); vocab_ids: int32 [V'] the draft vocabulary (target ids).
    `heads.replace(tree=...)` gives the same heads with another tree."""

    config: HeadsConfig = struct.field(pytree_node=False)
    params: dict
    vocab_ids: jax.Array
    tree: DraftTree = struct.field(pytree_node=False, default=DraftTree.chain(4))
    target_layers = ()
    follows_any_path = True

    @classmethod
    def create(cls, model, kind: str = "medusa", num_heads: int = 4, tree: DraftTree | None = None, seed: int = 0,
               vocab_ids=None, gate: float | None = None, scale: float = 1.0) -> "Heads":
        """Randomly initialised heads for `model` (tests; training starts from scale=0). tree: default a chain of
        num_heads; vocab_ids: the draft vocabulary (default: the whole target vocabulary)."""
        c = model.config
        config = HeadsConfig(kind=kind, num_heads=num_heads, hidden_size=c.hidden_size, vocab_size=c.vocab_size,
                             gate=gate)
        ids = np.arange(c.vocab_size) if vocab_ids is None else np.asarray(vocab_ids)
        heads = cls(config=config, params=init_params(config, seed, scale),
                    vocab_ids=check_vocab_ids(ids, c.vocab_size),
                    tree=DraftTree.chain(num_heads) if tree is None else tree)
        heads.check(model)
        return heads

    # ------------------------------------------------------------------------------------------- drafter contract

    def check(self, target, batch: int | None = None) -> None:
        """ValueError unless these heads fit the target and their tree fits the heads."""
        c, t = self.config, target.config
        if (c.hidden_size, c.vocab_size) != (t.hidden_size, t.vocab_size):
            raise ValueError(f"these heads were made for a model with hidden size {c.hidden_size} and vocabulary "
                             f"{c.vocab_size}; the target has {t.hidden_size} and {t.vocab_size}")
        check_per_depth(self.tree, self.vocab_ids, c.vocab_size, c.num_heads, "heads (one per depth)")

    def logical_axes(self) -> "Heads":
        """The heads with an `Axes` per array: the width of the inner layer (blockwise) or of the pre-activation
        (medusa, cerberus) is sharded like an MLP's hidden units."""
        w2 = {"blockwise": Axes((None, "mlp", "embed")), "cerberus": Axes((None, "embed", "mlp"))}
        table = {"w1": Axes((None, "embed", "mlp")), "b1": Axes((None, "mlp")), "w2": w2.get(self.config.kind)}
        return self.replace(params={k: table[k] for k in self.params}, vocab_ids=Axes((None,)))

    def init(self, target, prompt_BP, prompt_len_B, out, cache_size, spec) -> HeadsState:
        """The first proposal, from the hidden state of each row's last prompt token (out: the prefill's
        TargetOut, T = 1)."""
        table = head_table(target)[self.vocab_ids]
        return self._next(HeadsState(table_VpE=table, logits_BDV=None, live_B=None), out.logits_BTV[:, 0],
                          out.hidden_BTE[:, 0], jnp.ones(prompt_BP.shape[:1], bool))

    def propose(self, state: HeadsState, history, keys_B, spec, sampling):
        """Fills node (depth d, rank r) with head d - 1's r-th candidate (per_depth); no target or head work here."""
        return propose_per_depth(state.logits_BDV, self.vocab_ids, self.tree, keys_B, spec, sampling,
                                 self._depths(state)), state

    def _depths(self, state: HeadsState):
        """int32 [B] or None: the whole tree for rows the gate lets speculate, nothing for the others."""
        return None if state.live_B is None else jnp.where(state.live_B, self.tree.max_depth, 0)

    def update(self, state: HeadsState, verdict, new_tokens_BC, out, active_B) -> HeadsState:
        """The next proposal from the verification forward's hidden state at each row's deepest accepted node."""
        at = verdict.last_step[:, None, None]
        logits_BV = jnp.take_along_axis(out.logits_BTV, at, axis=1)[:, 0]
        hidden_BE = jnp.take_along_axis(out.hidden_BTE, at, axis=1)[:, 0]
        return self._next(state, logits_BV, hidden_BE, active_B)

    def _next(self, state: HeadsState, logits_BV, hidden_BE, active_B) -> HeadsState:
        logits = head_logits(self.config, self.params, state.table_VpE, hidden_BE)
        live = None if self.config.gate is None else entropy(logits_BV) <= self.config.gate
        if state.logits_BDV is not None:
            logits = jnp.where(active_B[:, None, None], logits, state.logits_BDV)
        return state.replace(logits_BDV=logits, live_B=live)

    # ------------------------------------------------------------------------------------------------ save / load

    def save(self, path, overwrite: bool = False) -> Path:
        """Writes the heads to the directory `path` (heads.json + params.npz, written to a temp dir renamed into
        place: never half-written). The target's LM head is not stored; the tree is (as rank paths). With
        overwrite=True the whole directory is replaced: copy any other file in it (a README) back afterwards."""
        return save_drafter(path, overwrite, MANIFEST, "spectax-heads", dataclasses.asdict(self.config), self.tree,
                            self.params, self.vocab_ids)

    @classmethod
    def load(cls, path) -> "Heads":
        """Reads heads written by `save` (ValueError for anything else)."""
        config, tree, params, vocab_ids = load_drafter_parts(path, MANIFEST, "spectax-heads", "heads",
                                                             lambda d: HeadsConfig(**d), init_params)
        return cls(config=config, params=params, vocab_ids=check_vocab_ids(vocab_ids, config.vocab_size), tree=tree)
