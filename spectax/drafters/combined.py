"""Combined: several drafters' trees side by side under one root, verified in one target call.

`Combined((NGram(...), heads))` joins the parts' trees at the root: part j's root children come after part j - 1's
(their child ranks are offset), so the joined tree holds every part's branches, in BFS order. Each step every part
proposes into its own nodes; a deterministic part's nodes get a one-hot q when another part samples, and a node keeps
its own part's sibling rule (Draft.continues), so the multi-draft verifier stays lossless. A row offers the deepest
depth any part offers it (Draft.depth_B), and the loop may cut the tree at any part's cut or full depth.

After the verdict every part is updated with the same verdict, so every part must be able to follow a path another
part proposed: its update reads only what was committed (`Drafter.follows_any_path`: NGram, Heads, Block, Combined).
A DraftModel keeps a cache of its own proposals and cannot, so it is refused. Parts that read target layers must
read the same ones (the forward hands one set of features to all).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from spectax.step_types import Draft, Drafter
from spectax.tree import DraftTree


@functools.lru_cache(maxsize=64)
def _join(trees: tuple[DraftTree, ...]) -> tuple[DraftTree, np.ndarray]:
    """(the joined tree, int32 [N]: for each joined node, its index in the parts' nodes concatenated)."""
    paths, offset = [], 0
    for tree in trees:
        paths += [(p[0] + offset,) + p[1:] for p in tree.rank_paths]
        offset += int((tree.parent < 0).sum())
    joined = DraftTree.from_paths(paths)
    where = {p: i for i, p in enumerate(joined.rank_paths)}
    return joined, np.argsort(np.array([where[p] for p in paths])).astype(np.int32)


@struct.dataclass
class Combined:
    """Drafters whose trees share the root (see the module docstring); parts: a tuple of >= 2 drafters."""

    parts: tuple
    follows_any_path = True

    @property
    def tree(self) -> DraftTree:
        """The parts' trees joined at the root."""
        return _join(tuple(p.tree for p in self.parts))[0]

    @property
    def target_layers(self) -> tuple[int, ...]:
        """The target layers the parts read (the same for every part that reads any; see check)."""
        return next((tuple(p.target_layers) for p in self.parts if p.target_layers), ())

    def check(self, target, batch: int | None = None) -> None:
        """ValueError unless there are >= 2 drafter parts that can follow each other's paths, read the same target
        layers, and are each fit for the target."""
        if not isinstance(self.parts, tuple) or len(self.parts) < 2:
            raise ValueError(f"Combined needs a tuple of >= 2 drafters, got {self.parts!r}")
        for part in self.parts:
            if not isinstance(part, Drafter):
                raise ValueError(f"Combined parts must be spectax drafters, got {type(part).__name__}")
            if not part.follows_any_path:
                raise ValueError(f"a {type(part).__name__} cannot be combined: it cannot follow tokens accepted in "
                                 f"another part's branch (its state holds its own proposals; see "
                                 f"Drafter.follows_any_path)")
            part.check(target, batch)
        layers = {tuple(p.target_layers) for p in self.parts if p.target_layers}
        if len(layers) > 1:
            raise ValueError(f"Combined parts read different target layers {sorted(layers)}: one forward hands one "
                             f"set of features to every part")

    def init(self, target, prompt_BP, prompt_len_B, out, cache_size, spec) -> tuple:
        return tuple(p.init(target, prompt_BP, prompt_len_B, out, cache_size, spec) for p in self.parts)

    def propose(self, state: tuple, history, keys_B, spec, sampling):
        """Every part proposes into its own branch (with its own key); the drafts are joined node by node."""
        _, src_N = _join(tuple(p.tree for p in self.parts))
        keys = jax.vmap(lambda k: jax.random.split(k, len(self.parts)))(keys_B)        # [B, parts]
        drafts, states = zip(*(p.propose(s, history, keys[:, j], spec, sampling)
                               for j, (p, s) in enumerate(zip(self.parts, state))))
        gather = lambda x_BN: x_BN[:, src_N]                                          # noqa: E731
        tokens = gather(jnp.concatenate([d.tokens_BN for d in drafts], axis=1))
        q = None
        if any(d.q_BNV is not None for d in drafts):
            q = gather(jnp.concatenate([d.probs(spec.vocab_size, p.tree) for d, p in zip(drafts, self.parts)], 1))
        cont = np.concatenate([d.continues(p.tree) for d, p in zip(drafts, self.parts)])[src_N]
        depth_B = None
        if any(d.depth_B is not None for d in drafts):
            full_B = lambda p: jnp.full(history.length_B.shape, p.tree.max_depth, jnp.int32)   # noqa: E731
            depth_B = jnp.max(jnp.stack([full_B(p) if d.depth_B is None
                                         else d.depth_B for d, p in zip(drafts, self.parts)]), axis=0)
        cuts = sorted({c for d, p in zip(drafts, self.parts) for c in d.cuts + (p.tree.max_depth,)})
        draft = Draft(tokens_BN=tokens, q_BNV=q, without_replacement=tuple(bool(c) for c in cont), depth_B=depth_B,
                      cuts=tuple(cuts))
        return draft, tuple(states)

    def update(self, state: tuple, verdict, new_tokens_BC, out, active_B) -> tuple:
        return tuple(p.update(s, verdict, new_tokens_BC, out, active_B) for p, s in zip(self.parts, state))
