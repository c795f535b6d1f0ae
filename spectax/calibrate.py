"""Hardware calibration: what a verification step over N draft nodes costs here, relative to a plain step.

c(N) = time of one target forward over the root + N draft nodes (tree mask, on top of a KV cache of `context`
committed tokens) / the same with N = 0. `DraftTree.optimal(acceptance, budget, max_depth, cost=cost_curve(...))`
turns it into the tree with the most expected new tokens per unit of time on this backend.

    measured = verify_cost(model, batch=1, context=512)
    tree = DraftTree.optimal(acceptance, budget=32, max_depth=6, cost=cost_curve(measured, 32))
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spectax.cache import KVCache
from spectax.checks import is_int
from spectax.models import Model
from spectax.step_types import History
from spectax.tree import DraftTree

NODE_COUNTS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
WARMUP = 2   # untimed calls per N before timing (the first compiles)


def _check_int(name: str, value, low: int) -> int:
    """value as an int, or a ValueError when it is not an int >= low."""
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_node_counts(node_counts: Sequence[int]) -> list[int]:
    """Distinct ints >= 0 including 0 (the reference), sorted."""
    try:
        counts = list(node_counts)
    except TypeError:
        raise ValueError(f"node_counts must be a sequence of ints, got {node_counts!r}") from None
    for n in counts:
        _check_int("every node count", n, 0)
    if len(set(counts)) != len(counts):
        raise ValueError(f"node_counts has duplicates: {counts}")
    if 0 not in counts:
        raise ValueError(f"node_counts must include 0 (the plain step every cost is relative to), got {counts}")
    return sorted(int(n) for n in counts)


def _trees(nodes: list[int], tree_for: Callable[[int], DraftTree]) -> list[DraftTree]:
    """tree_for(N) for every N, checked to be a DraftTree of N nodes."""
    trees = []
    for n in nodes:
        tree = tree_for(n)
        if not isinstance(tree, DraftTree) or tree.num_nodes != n:
            raise ValueError(f"tree_for({n}) must return a DraftTree of {n} nodes, got {tree!r}")
        trees.append(tree)
    return trees


def _filled_cache(model: Model, batch: int, context: int, size: int) -> KVCache:
    """A cache of `size` slots per row holding random K/V, the first `context` committed (lengths = context)."""
    cache = KVCache.create(model.config, batch, size, model.dtype)
    keys = iter(jax.random.split(jax.random.key(0), 2 * len(cache.k)))
    fill = lambda a: jax.random.normal(next(keys), a.shape, a.dtype)
    return cache.replace(k=tuple(fill(a) for a in cache.k), v=tuple(fill(a) for a in cache.v),
                         lengths=jnp.full((batch,), context, jnp.int32))


@jax.jit(static_argnames=("tree",), donate_argnames=("kv",))
def _verify_forward(model: Model, tokens_BT, kv, lengths_B, *, tree: DraftTree):
    """The target call of one decode step (as spectax.loop.step makes it): root + N nodes at positions
    length + depth under the tree mask, writing their K/V in place. Returns (logits [B, T, V], kv)."""
    positions_BT = lengths_B[:, None] + jnp.asarray(tree.step_depth)[None, :]
    out = model.forward(tokens_BT, positions_BT, kv, lengths_B, jnp.asarray(tree.step_mask))
    return out.logits_BTV, out.kv


def verify_cost(model: Model, node_counts: Sequence[int] = NODE_COUNTS, batch: int = 1, context: int = 128,
                repeats: int = 5, tree_for: Callable[[int], DraftTree] | None = None) -> dict:
    """Measures c(N) = verification forward time with N draft nodes / with none, on the current backend.

    One jitted forward per N over tree_for(N) (default DraftTree.chain; the mask matters little), warmed up
    WARMUP times, then `repeats` rounds each timing every N once in turn (so drift hits all alike), every call
    blocked on; the median per N. The K/V cache (random contents) is threaded through the calls and updated in
    place, as in the decode loop. Returns {"nodes": [N...], "cost": [c(N)...], "ms": [median ms...],
    "backend", "batch", "context", "repeats"}.
    """
    nodes = _check_node_counts(node_counts)
    batch = _check_int("batch", batch, 1)
    context = _check_int("context", context, 0)
    repeats = _check_int("repeats", repeats, 1)
    trees = _trees(nodes, tree_for or DraftTree.chain)
    size = context + nodes[-1] + 1                                    # the root and the largest tree fit
    if size > model.config.max_position:
        raise ValueError(f"context {context} + {nodes[-1]} nodes + the root exceed the model's "
                         f"max_position {model.config.max_position}")
    cache = _filled_cache(model, batch, context, size)
    kv, lengths_B = cache.layers, cache.lengths
    tokens = [jax.random.randint(jax.random.key(n), (batch, n + 1), 0, model.config.vocab_size, jnp.int32)
              for n in nodes]                                         # [B, 1 + N] each

    def call(i: int) -> float:
        """Seconds for one verification forward over trees[i], waited for."""
        nonlocal kv
        start = time.perf_counter()
        _, kv = jax.block_until_ready(_verify_forward(model, tokens[i], kv, lengths_B, tree=trees[i]))
        return time.perf_counter() - start

    for i in range(len(nodes)):
        for _ in range(WARMUP):
            call(i)
    seconds = [[] for _ in nodes]
    for _ in range(repeats):
        for i in range(len(nodes)):
            seconds[i].append(call(i))
    ms = [1e3 * statistics.median(s) for s in seconds]
    return {"nodes": nodes, "cost": [m / ms[0] for m in ms], "ms": ms, "backend": jax.default_backend(),
            "batch": batch, "context": context, "repeats": repeats}


def cost_curve(measured: dict, budget: int) -> np.ndarray:
    """float64 [budget + 1]: c(n) for every n = 0..budget from verify_cost's result, for DraftTree.optimal(cost=).

    The measured costs are first made non-decreasing (a running maximum: noise never makes more nodes look cheaper),
    then interpolated linearly between the measured N. budget must not exceed the largest measured N.
    """
    budget = _check_int("budget", budget, 0)
    if not isinstance(measured, dict) or "nodes" not in measured or "cost" not in measured:
        raise ValueError("measured must be verify_cost's dict, with 'nodes' and 'cost' lists")
    nodes = _check_node_counts(measured["nodes"])
    try:
        cost = np.array(measured["cost"], np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"measured 'cost' must be a list of floats, got {measured['cost']!r}") from None
    if list(measured["nodes"]) != nodes or cost.shape != (len(nodes),):
        raise ValueError(f"measured 'nodes' must be increasing and 'cost' as long, got {measured['nodes']} and "
                         f"{measured['cost']}")
    if not np.isfinite(cost).all() or (cost <= 0).any() or cost[0] != 1.0:
        raise ValueError(f"measured costs must be finite, > 0 and 1 at N = 0, got {measured['cost']}")
    if budget > nodes[-1]:
        raise ValueError(f"budget {budget} is beyond the largest measured node count {nodes[-1]}")
    return np.interp(np.arange(budget + 1), nodes, np.maximum.accumulate(cost))


def ngram_acceptance(model: Model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64, max_n: int = 4,
                     max_depth: int = 8) -> dict:
    """How prompt lookup fares on this model's own greedy text, by match length.

    For every position of every prompt's plain greedy output: the longest n-gram match n (0: none; n <= max_n)
    that `NGram` finds there and how many tokens of its chain of max_depth greedy verification would accept (the
    leading proposals equal to the true continuation). Returns {"n": [...], "accepted": [...], "max_n", "max_depth"}
    for `ngram_depths`. Use prompts you do not benchmark on."""
    from spectax.api import decode
    from spectax.drafters.ngram import NGram

    max_n, max_depth = _check_int("max_n", max_n, 1), _check_int("max_depth", max_depth, 1)
    probe = NGram(max_n=max_n, tree=DraftTree.chain(max_depth), depth_by_n=tuple(range(1, max_n + 1)))
    propose = jax.jit(lambda h: probe.propose((), h, None, None, None)[0])   # depth_B = the match length n
    ns, accepted = [], []
    for p in prompts:
        p = list(p)
        out = np.asarray(decode(model, [p], max_new_tokens).tokens[0]).tolist()
        B = len(out) - 1                                 # row i: prompt + out[:i] committed, root out[i]
        hist = np.full((B, len(p) + B), -1, np.int32)
        for i in range(B):
            hist[i, :len(p) + i] = p + out[:i]
        draft = propose(History.after(hist, len(p) + np.arange(B), np.asarray(out[:B], np.int32)))
        tokens = np.asarray(draft.tokens_BN)
        for i in range(B):
            truth = np.asarray(out[i + 1:i + 1 + max_depth])
            accepted.append(int(np.cumprod(tokens[i, :truth.size] == truth).sum()))
        ns.extend(np.asarray(draft.depth_B).tolist())
    return {"n": ns, "accepted": accepted, "max_n": max_n, "max_depth": max_depth}


def ngram_depths(measured: dict, cost: np.ndarray) -> tuple[tuple[int, ...], dict]:
    """NGram's depth_by_n (n = 1 .. max_n) from `ngram_acceptance`: after a match of n, the depth d maximising
    (1 + E[accepted within d | n]) / c(d), 0 (a plain step) where nothing pays. cost: c(0..>= max_depth), e.g.
    `cost_curve`. Returns (depth_by_n, {n: {"positions", "mean_accepted_at_depth", "expected_speedup_at_depth"}})."""
    ns, accepted = np.asarray(measured["n"]), np.asarray(measured["accepted"])
    D = measured["max_depth"]
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 1 or cost.size < D + 1 or cost[0] <= 0:
        raise ValueError(f"cost must be c(0..{D}) with c(0) > 0 (cost_curve(measured, >= {D})), got {cost!r}")
    depths, table = [], {}
    for n in range(1, measured["max_n"] + 1):
        a = accepted[ns == n]
        mean = [float(np.minimum(a, d).mean()) if a.size else 0.0 for d in range(D + 1)]
        gain = [(1 + m) / (cost[d] / cost[0]) for d, m in enumerate(mean)]
        depths.append(int(np.argmax(gain)))
        table[n] = {"positions": int(a.size), "mean_accepted_at_depth": mean, "expected_speedup_at_depth": gain}
    return tuple(depths), table
