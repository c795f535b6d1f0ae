"""N-gram (prompt lookup) drafts on SmolLM2-135M-Instruct (fp32, greedy) against spectax plain decoding.

1. Calibration, on held-out prompts (spectax/train/data/prompts.jsonl, never Spec-Bench): spectax.calibrate's
   ngram_acceptance (for every position of the plain greedy outputs, the longest match n and how many tokens of the
   drafter's chain greedy verification would accept) and ngram_depths (with the measured c(N), batch 1, the depth
   maximising (1 + E[accepted | n, depth]) / c(depth) after a match of n, 0 = a plain step): `depth_by_n`.
2. Spec-Bench (a stratified sample, every category): plain decoding and n-gram variants (chains, the calibrated
   adaptive chain, a tree of two matches, and n-gram + the shipped Medusa heads combined), interleaved prompt by
   prompt in one process (benchmarks/workload.py's loop timing: decode loop from a prefilled state, blocked on;
   tokens checked equal to plain's), at batch 1 and 8: tau, acceptance per depth, speedup over plain, per category.
3. What it costs where it finds nothing: the drafter's own proposal time per step, and the steps that ran plain.

    python benchmarks/ngram.py                      # writes benchmarks/results/ngram.json
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
from spectax import DraftTree, calibrate
from spectax.drafters import Combined, Heads, NGram, NoDraft
from spectax.io import hub

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, timed, write_result  # noqa: E402
from workload import load_workload, run_variants, summarize, verify_cost_curve, workload_arguments  # noqa: E402

HELD_OUT = Path(spectax.__file__).parent / "train" / "data" / "prompts.jsonl"
MAX_DEPTH = 8
MAX_N = 4


def held_out_prompts(n: int, tok) -> list[list[int]]:
    """The first n held-out prompts (the heads' training prompts, one per line), chat-templated."""
    rows = [json.loads(line) for line in HELD_OUT.read_text().splitlines()[:n]]
    return [tok.encode_chat([{"role": "user", "content": r["text"]}]) for r in rows]


def propose_cost_ms(batch: int, history: int, drafter: NGram, repeats: int = 50) -> float:
    """Median ms of one proposal (matching + tree fill) for `batch` rows of `history` tokens."""
    rng = np.random.default_rng(0)
    state = drafter.init(None, jnp.asarray(rng.integers(0, 49152, (batch, history)), jnp.int32),
                         jnp.full((batch,), history - 1, jnp.int32), None, history, None)
    fn = jax.jit(lambda s, r: drafter.propose(s, r, None, None, None)[0].tokens_BN)
    root = jnp.zeros((batch,), jnp.int32)
    jax.block_until_ready(fn(state, root))
    return 1e3 * float(np.median([timed(lambda: fn(state, root))[0] for _ in range(repeats)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload_arguments(ap, per_category=2)
    ap.add_argument("--held-out", type=int, default=24, help="held-out prompts for the depth calibration")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--reuse", type=Path, help="a previous result JSON: reuse its c(N) and calibration")
    ap.add_argument("--variants", nargs="+", help="only these variants (plain is always run)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ngram.json")
    args = ap.parse_args()

    model, tok, prompts, result = load_workload(args)
    previous = json.loads(args.reuse.read_text()) if args.reuse else {}
    curve = verify_cost_curve(model, previous, (0, 1, 2, 3, 4, 6, 8, 12, 16), result)

    if "calibration" in previous and "measured" in previous["calibration"]:
        calib = previous["calibration"]
        depths = tuple(calib["depth_by_n"])
        calib_measured = calib["measured"]
    else:
        t0 = time.perf_counter()
        held_out = [p[-args.bucket:] for p in held_out_prompts(args.held_out, tok)]
        measured = calibrate.ngram_acceptance(model, held_out, args.new, MAX_N, MAX_DEPTH)
        depths, table = calibrate.ngram_depths(measured, curve)
        calib_measured = measured
        ns = np.asarray(measured["n"])
        calib = {"held_out_prompts": args.held_out, "positions": int(ns.size),
                 "match_rate_by_n": {n: float((ns == n).mean()) for n in range(MAX_N + 1)},
                 "by_n": table, "depth_by_n": list(depths), "measured": measured}
        print(f"calibration in {time.perf_counter() - t0:.0f} s: depth_by_n {depths}", flush=True)
    result["calibration"] = calib
    write_result(args.out, result)

    adaptive = NGram(max_n=MAX_N, min_n=1, tree=DraftTree.chain(max(max(depths), 1)), depth_by_n=depths)
    medusa = Heads.load(hub.shipped_drafter(MODEL, "medusa"))
    variants = {"plain": NoDraft(),
                "ngram/chain2": NGram(tree=DraftTree.chain(2)),
                "ngram/chain4": NGram(tree=DraftTree.chain(4)),
                "ngram/adaptive": adaptive,
                "ngram/tree2x4": NGram(tree=DraftTree.from_paths([(0,), (1,), (0, 0), (1, 0), (0, 0, 0), (1, 0, 0),
                                                                   (0, 0, 0, 0), (1, 0, 0, 0)]), occurrences=2,
                                       depth_by_n=tuple(min(d, 4) for d in depths)),
                "ngram+medusa": Combined((adaptive, medusa))}
    if args.variants:
        variants = {k: v for k, v in variants.items() if k == "plain" or k in args.variants}
    result["variants"] = {name: [list(p) for p in v.tree.rank_paths] for name, v in variants.items()}
    result["propose_cost_ms"] = {f"batch{b}": {"history512": propose_cost_ms(b, 512, adaptive),
                                               "history2048": propose_cost_ms(b, 2048, adaptive)}
                                 for b in args.batches}
    print("propose cost (ms):", result["propose_cost_ms"], flush=True)
    for b in args.batches:
        t0 = time.perf_counter()
        batch_variants = dict(variants)
        if b > 1:       # the depths that pay at this batch size: its own c(N) (a verify of B x (1 + d) tokens)
            key = f"verify_cost_batch{b}"
            cost_b = previous.get(key) or calibrate.verify_cost(model, node_counts=(0, 1, 2, 3, 4, 6, 8), batch=b,
                                                                context=256, repeats=5)
            result[key] = cost_b
            depths_b, _ = calibrate.ngram_depths(calib_measured, calibrate.cost_curve(cost_b, MAX_DEPTH))
            result[f"depth_by_n_batch{b}"] = list(depths_b)
            if max(depths_b):
                batch_variants[f"ngram/adaptive-b{b}"] = NGram(max_n=MAX_N, tree=DraftTree.chain(max(depths_b)),
                                                               depth_by_n=depths_b)
        if args.variants:
            batch_variants = {k: v for k, v in batch_variants.items() if k in variants or k in args.variants}
        res = run_variants(model, batch_variants, prompts, b, args.new, args.bucket, args.repeats)
        summary = summarize(res)
        result[f"batch{b}"] = summary
        print(f"batch {b} done in {time.perf_counter() - t0:.0f} s:",
              {n: (round(s["tau"], 2), round(s["speedup"], 2)) for n, s in summary.items()}, flush=True)
        write_result(args.out, result)                                # checkpoint after each batch size


if __name__ == "__main__":
    main()
