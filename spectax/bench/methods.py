"""The decoding methods `spectax bench` measures, by name, and the `--tree` specs they take.

A method is a target (a Model, or an Ensemble for CoS) and a drafter; its greedy tokens must equal plain decoding
of the same target. For a registered model the drafted methods use what ships with it (heads, block drafter, CoS
ensemble) and, for the draft model, the target's own first layers (no training). For any other model (the smoke
run's tiny random one) only the methods that need nothing trained exist: n-gram and a draft model (the target
drafting for itself, which a chain of k accepts fully: tau k + 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from spectax.drafters import Combined, CoS, DraftModel, Heads, NGram, NoDraft
from spectax.io import hub
from spectax.models import Model
from spectax.models.ensemble import early_exit
from spectax.tree import DraftTree

# name -> what it is (the help text and the README's table)
METHODS = {
    "plain": "plain decoding: one token per target call (the reference every method is checked and timed against)",
    "draft-chain": "DraftModel with a chain of 3 (the draft: a registered target's first 4 layers; any other model "
                   "drafts for itself)",
    "draft-tree": "DraftModel with a k-ary tree (3, 2, 1)",
    "blockwise": "the shipped blockwise heads (Stern et al.), their saved tree",
    "medusa": "the shipped Medusa heads, their saved tree",
    "cerberus": "the shipped Cerberus heads (gated), their saved tree",
    "block-chain": "the shipped parallel block drafter, a chain of 2",
    "block-tree": "the shipped parallel block drafter, a k-ary tree (2, 2)",
    "ngram": "n-gram prompt lookup, a chain of 4",
    "combined": "n-gram (chain of 4) and the shipped Medusa heads, joined at the root",
    "cos": "CoS: the shipped contrastive ensemble, its early-exit member proposing a chain of 1 (reference: plain "
           "decoding of the ensemble)",
}
DEFAULT_METHODS = ("draft-chain", "medusa", "block-chain", "ngram", "combined", "cos")
NEEDS_NOTHING_TRAINED = ("plain", "draft-chain", "draft-tree", "ngram")
DRAFT_LAYERS = 4
DRAFT_CHAIN = 3
NGRAM_CHAIN = 4


@dataclasses.dataclass(frozen=True)
class Method:
    """One measured method: `target` decodes with `drafter`; `reference` names the plain decoding its greedy tokens
    must equal ("plain" for the model, "plain-ensemble" for CoS); `max_depth`: the deepest tree it can fill."""

    name: str
    target: Any
    drafter: Any
    reference: str = "plain"
    max_depth: int = 8


def parse_tree(spec: str) -> DraftTree | str:
    """A `--tree` spec: "chain:K", "kary:B1,B2,..." (branching per depth) or "optimal" (returned as the string: the
    tree is calibrated later). ValueError with the accepted forms for anything else."""
    forms = '"chain:K", "kary:B1,B2,..." or "optimal"'
    if spec == "optimal":
        return spec
    kind, _, arg = spec.partition(":")
    try:
        numbers = [int(x) for x in arg.split(",")] if arg else []
    except ValueError:
        raise ValueError(f"--tree {spec!r}: expected {forms}") from None
    if kind == "chain" and len(numbers) == 1 and numbers[0] >= 1:
        return DraftTree.chain(numbers[0])
    if kind == "kary" and numbers and min(numbers) >= 1:
        return DraftTree.kary(numbers)
    raise ValueError(f"--tree {spec!r}: expected {forms} with positive integers")


def _heads(name: str, kind: str) -> Heads:
    return Heads.load(hub.shipped_drafter(name, kind))


def build(model: Model, registered: str | None, names: list[str]) -> dict[str, Method]:
    """The Methods `names` (plus "plain", always first) for `model`; `registered`: its registry name (shipped drafters
    exist only then), None for any other model. ValueError for an unknown name or one that needs a shipped drafter
    the model does not have."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    if registered is None:
        missing = [n for n in names if n not in NEEDS_NOTHING_TRAINED]
        if missing:
            raise ValueError(f"method(s) {missing} need drafters shipped for a registered model; for this model "
                             f"use {', '.join(NEEDS_NOTHING_TRAINED)}")
    draft = model if registered is None else early_exit(model, DRAFT_LAYERS)   # its first layers: no training
    out = {"plain": Method("plain", model, NoDraft(), max_depth=0)}
    for name in names:
        if name in out:
            continue
        if name == "draft-chain":
            out[name] = Method(name, model, DraftModel(draft, tree=DraftTree.chain(DRAFT_CHAIN)))
        elif name == "draft-tree":
            out[name] = Method(name, model, DraftModel(draft, tree=DraftTree.kary((3, 2, 1))))
        elif name in ("blockwise", "medusa", "cerberus"):
            heads = _heads(registered, name)
            out[name] = Method(name, model, heads, max_depth=heads.config.num_heads)
        elif name.startswith("block-"):
            block = hub.load_drafter(hub.shipped_drafter(registered, "block"))
            tree = DraftTree.chain(2) if name == "block-chain" else DraftTree.kary((2, 2))
            out[name] = Method(name, model, block.replace(tree=tree), max_depth=block.config.block_size)
        elif name == "ngram":
            out[name] = Method(name, model, NGram(tree=DraftTree.chain(NGRAM_CHAIN)))
        elif name == "combined":
            ngram = NGram(tree=DraftTree.chain(NGRAM_CHAIN))
            out[name] = Method(name, model, Combined((ngram, _heads(registered, "medusa"))))
        elif name == "cos":
            ensemble = _shipped_ensemble(registered)
            out[name] = Method(name, ensemble, CoS(ensemble, proposer=1, tree=DraftTree.chain(1)),
                               reference="plain-ensemble")
    return out


def _shipped_ensemble(registered: str):
    """The CoS ensemble shipped for a registered model (ValueError if none)."""
    from spectax.io import load

    if not (hub.SHIPPED / registered / "cos-contrastive").is_dir():
        raise ValueError(f"no CoS ensemble shipped for {registered!r}")
    return load(f"{registered}/cos-contrastive")


def with_tree(method: Method, tree: DraftTree) -> Method:
    """The method with another tree (ValueError if it is deeper than the drafter can fill, or the method cannot take
    one: plain, combined)."""
    if method.name in ("plain", "combined"):
        raise ValueError(f"--tree does not apply to {method.name!r}")
    if tree.max_depth > method.max_depth:
        raise ValueError(f"{method.name}: a tree of depth {tree.max_depth} is deeper than it can fill "
                         f"({method.max_depth})")
    return dataclasses.replace(method, drafter=method.drafter.replace(tree=tree))
