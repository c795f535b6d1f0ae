"""The block drafter on SmolLM2-135M-Instruct (fp32, greedy) against spectax plain decoding and the best heads.

Same workload and method as benchmarks/heads.py (benchmarks/workload.py: the prompt sample, interleaved loop
timings, token checks and summary): a stratified Spec-Bench sample, the decode loop timed from a prefilled state,
every variant's greedy tokens checked against plain decoding's. Variants: plain; the shipped block drafter as chains
of several depths and as the `DraftTree.optimal` tree for its measured per-position, per-rank acceptance and this
CPU's c(N); the best heads variant of benchmarks/results/heads.json (same tree). Also reported: the draft's own cost
per step (the one draft forward + candidate selection, ms) and the c(N) curve.

    python benchmarks/block.py                      # writes benchmarks/results/block.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import spectax
from spectax import DraftTree
from spectax.drafters import Block, Heads, NoDraft
from spectax.drafters.block import block_logits, input_embedding
from spectax.drafters.heads import head_table
from spectax.io import hub

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, timed  # noqa: E402
from workload import add_tree_variants, load_workload, run_batches, verify_cost_curve, workload_arguments  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def draft_cost_ms(model, block: Block, batch: int, context: int = 256, repeats: int = 30) -> float:
    """Median ms of one proposal's draft work (the block forward over a `context`-slot context + top-k)."""
    embed, table = input_embedding(model), head_table(model)[block.vocab_ids]
    c = block.config.layer
    cache = tuple((jnp.ones((batch, c.num_kv_heads, context + 64, c.head_dim)),) * 2 for _ in range(c.num_layers))
    last = jnp.ones((batch, c.hidden_size))
    fn = jax.jit(lambda root, lengths: jax.lax.top_k(block_logits(block.config, block.params, embed, table, root,
                                                                  last, cache, lengths), 4)[1])
    root, lengths = jnp.ones((batch,), jnp.int32), jnp.full((batch,), context, jnp.int32)
    jax.block_until_ready(fn(root, lengths))
    jax.block_until_ready(fn(root, lengths))
    return 1e3 * float(np.median([timed(lambda: fn(root, lengths))[0] for _ in range(repeats)]))


def best_heads(heads_result: dict) -> tuple[str, DraftTree]:
    """(name, tree) of the heads variant with the highest batch-1 speedup in a heads benchmark result."""
    runs = {k: v for k, v in heads_result["batch1"].items() if k != "plain"}
    name = max(runs, key=lambda k: runs[k]["speedup"])
    tree = heads_result["trees"][name]
    while isinstance(tree, str):                                  # "= other/name": measured under another name
        tree = heads_result["trees"][tree[2:]]
    return name, DraftTree.from_paths([tuple(p) for p in tree])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload_arguments(ap)
    ap.add_argument("--chains", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--budget", type=int, default=16, help="node budget of the optimal tree")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--block", type=Path, help="a block drafter directory (default: the shipped one)")
    ap.add_argument("--heads-result", type=Path, default=RESULTS / "heads.json",
                    help="the heads benchmark's JSON: its c(N) and best variant are reused")
    ap.add_argument("--out", type=Path, default=RESULTS / "block.json")
    args = ap.parse_args()

    model, _, prompts, result = load_workload(args)
    heads_result = json.loads(args.heads_result.read_text())
    curve = verify_cost_curve(model, heads_result, (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), result)

    block = Block.load(args.block or hub.shipped_drafter(MODEL, "block"))
    k = block.config.block_size
    result["draft_cost_ms"] = {f"batch{b}": draft_cost_ms(model, block, b) for b in args.batches}
    print("draft cost (ms):", result["draft_cost_ms"], flush=True)

    # the measured per-position, per-rank acceptance (a probe tree with 3 / 2 candidates at the first positions)
    probe = block.replace(tree=DraftTree.kary((3, 2) + (1,) * (k - 2)))
    calib = [p[-args.bucket:] for _, p in prompts[::3]]
    t0 = time.perf_counter()
    acc = spectax.decode(model, calib, args.new, drafter=probe).stats.rank_acceptance
    result["rank_acceptance"] = acc.tolist()
    print(f"rank acceptance in {time.perf_counter() - t0:.0f} s:", np.round(acc, 3).tolist(), flush=True)

    heads_name, heads_tree = best_heads(heads_result)
    kind = heads_name.split("/")[0]
    variants = {"plain": NoDraft(), f"heads:{heads_name}": Heads.load(hub.shipped_drafter(MODEL, kind)).replace(
        tree=heads_tree)}
    trees = {f"heads:{heads_name}": [list(p) for p in heads_tree.rank_paths]}
    options = {f"chain{d}": DraftTree.chain(d) for d in args.chains if d <= k}
    options["optimal"] = DraftTree.optimal(acc, budget=args.budget, max_depth=k, cost=curve)
    add_tree_variants(variants, trees, "block", block, {n: t for n, t in options.items() if t.num_nodes})
    result["trees"] = trees                                           # (an empty optimal tree: nothing pays)
    run_batches(model, variants, prompts, args, result)


if __name__ == "__main__":
    main()
