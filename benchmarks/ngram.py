"""N-gram (prompt lookup) drafts on SmolLM2-135M-Instruct (fp32, greedy) against spectax plain decoding.

1. Calibration, on held-out prompts (spectax/train/data/prompts.jsonl, never Spec-Bench): plain greedy outputs, then
   for every output position the drafter's own proposal (a chain of MAX_DEPTH) and its longest match n: how many
   proposed tokens greedy verification would accept, by n. With the measured verification cost c(N) (batch 1), the
   depth offered after a match of n is the one maximising (1 + E[accepted | n, depth]) / c(depth), 0 (a plain step)
   where no depth pays: `depth_by_n`.
2. Spec-Bench (a stratified sample, every category): plain decoding and n-gram variants (chains, the calibrated
   adaptive chain, a tree of two matches, and n-gram + the shipped Medusa heads combined), interleaved prompt by
   prompt in one process (benchmarks/heads.py's loop timing: decode loop from a prefilled state, blocked on; tokens
   checked equal to plain's), at batch 1 and 8: tau, acceptance per depth, speedup over plain, per category.
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
from spectax import DraftTree, calibrate, hub
from spectax.drafters import Combined, Heads, NGram, NoDraft
from spectax.tokenizer import from_gguf

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, SPEC_BENCH, machine, timed, write_result  # noqa: E402
from heads import run_variants, stratified, summarize  # noqa: E402

HELD_OUT = Path(spectax.__file__).parent / "train" / "data" / "prompts.jsonl"
MAX_DEPTH = 8
MAX_N = 4


def held_out_prompts(n: int, tok) -> list[list[int]]:
    """The first n held-out prompts (the heads' training prompts, one per line), chat-templated."""
    rows = [json.loads(line) for line in HELD_OUT.read_text().splitlines()[:n]]
    return [tok.encode_chat([{"role": "user", "content": r["text"]}]) for r in rows]


def match_acceptance(model, prompts, new: int, bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """(int [S] longest match n per output position (0: none), int [S] leading proposed tokens equal to the greedy
    continuation), over every position of every prompt's plain greedy output."""
    probe = NGram(max_n=MAX_N, min_n=1, tree=DraftTree.chain(MAX_DEPTH), depth_by_n=tuple(range(1, MAX_N + 1)))
    propose = jax.jit(lambda s, r: probe.propose(s, r, None, None, None)[0])
    ns, accepted = [], []
    for p in prompts:
        p = p[-bucket:]
        out = np.asarray(spectax.decode(model, [p], new).tokens[0]).tolist()
        B = len(out) - 1
        width = len(p) + B
        hist = np.full((B, width), -1, np.int32)
        for i in range(B):                              # row i: the prompt and out[:i] committed, root out[i]
            hist[i, :len(p) + i] = p + out[:i]
        state = probe.init(None, jnp.asarray(hist), jnp.asarray([len(p) + i for i in range(B)], jnp.int32), None,
                           width, None)
        draft = propose(state, jnp.asarray(out[:B], jnp.int32))
        tokens = np.asarray(draft.tokens_BN)
        for i in range(B):
            truth = out[i + 1:i + 1 + MAX_DEPTH]
            same = np.asarray(tokens[i, :len(truth)]) == np.asarray(truth)
            accepted.append(int(np.cumprod(same).sum()))
        ns.extend(np.asarray(draft.depth_B).tolist())  # depth_by_n = (1, .., MAX_N): the depth is n itself
    return np.asarray(ns), np.asarray(accepted)


def choose_depths(ns, accepted, curve) -> tuple[tuple[int, ...], dict]:
    """depth_by_n for n = 1 .. MAX_N maximising (1 + E[min(accepted, d)]) / c(d), and the table behind it."""
    depths, table = [], {}
    for n in range(1, MAX_N + 1):
        a = accepted[ns == n]
        gain = [(1 + (np.minimum(a, d).mean() if a.size else 0.0)) / curve[d] for d in range(MAX_DEPTH + 1)]
        depths.append(int(np.argmax(gain)))
        table[n] = {"positions": int(a.size), "mean_accepted_at_depth": [float(np.minimum(a, d).mean()) if a.size
                                                                         else 0.0 for d in range(MAX_DEPTH + 1)],
                    "expected_speedup_at_depth": [float(g) for g in gain]}
    return tuple(depths), table


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
    ap.add_argument("--spec-bench", type=Path, default=SPEC_BENCH)
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--held-out", type=int, default=24, help="held-out prompts for the depth calibration")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--bucket", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--reuse", type=Path, help="a previous result JSON: reuse its c(N) and calibration")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ngram.json")
    args = ap.parse_args()

    model = spectax.load(MODEL)
    tok = from_gguf(hub.resolve(MODEL))
    prompts = stratified(args.spec_bench, args.per_category, tok)
    result = {"machine": machine(), "model": MODEL, "new_tokens": args.new, "prompt_bucket": args.bucket,
              "prompts": len(prompts), "categories": sorted({c for c, _ in prompts}), "repeats": args.repeats}
    previous = json.loads(args.reuse.read_text()) if args.reuse else {}

    t0 = time.perf_counter()
    cost = previous.get("verify_cost_batch1") or calibrate.verify_cost(
        model, node_counts=(0, 1, 2, 3, 4, 6, 8, 12, 16), batch=1, context=256, repeats=5)
    curve = calibrate.cost_curve(cost, 16)
    result["verify_cost_batch1"] = {k: v for k, v in cost.items() if k != "curve"} | {"curve": curve.tolist()}
    print(f"c(N) in {time.perf_counter() - t0:.0f} s: {np.round(curve[:9], 2).tolist()}", flush=True)

    if "calibration" in previous:
        calib = previous["calibration"]
        depths = tuple(calib["depth_by_n"])
    else:
        t0 = time.perf_counter()
        ns, accepted = match_acceptance(model, held_out_prompts(args.held_out, tok), args.new, args.bucket)
        depths, table = choose_depths(ns, accepted, curve)
        calib = {"held_out_prompts": args.held_out, "positions": int(ns.size),
                 "match_rate_by_n": {n: float((ns == n).mean()) for n in range(MAX_N + 1)},
                 "by_n": table, "depth_by_n": list(depths)}
        print(f"calibration in {time.perf_counter() - t0:.0f} s: depth_by_n {depths}", flush=True)
    result["calibration"] = calib
    write_result(args.out, result)

    adaptive = NGram(max_n=MAX_N, min_n=1, tree=DraftTree.chain(max(max(depths), 1)), depth_by_n=depths)
    medusa = Heads.load(hub.shipped_heads(MODEL, "medusa"))
    variants = {"plain": NoDraft(),
                "ngram/chain2": NGram(tree=DraftTree.chain(2)),
                "ngram/chain4": NGram(tree=DraftTree.chain(4)),
                "ngram/adaptive": adaptive,
                "ngram/tree2x4": NGram(tree=DraftTree.from_paths([(0,), (1,), (0, 0), (1, 0), (0, 0, 0), (1, 0, 0),
                                                                   (0, 0, 0, 0), (1, 0, 0, 0)]), occurrences=2,
                                       depth_by_n=tuple(min(d, 4) for d in depths)),
                "ngram+medusa": Combined((adaptive, medusa))}
    result["variants"] = {name: [list(p) for p in v.tree.rank_paths] for name, v in variants.items()}
    result["propose_cost_ms"] = {f"batch{b}": {"history512": propose_cost_ms(b, 512, adaptive),
                                               "history2048": propose_cost_ms(b, 2048, adaptive)}
                                 for b in args.batches}
    print("propose cost (ms):", result["propose_cost_ms"], flush=True)
    for b in args.batches:
        t0 = time.perf_counter()
        res = run_variants(model, variants, prompts, b, args.new, args.bucket, args.repeats)
        summary = summarize(res)
        result[f"batch{b}"] = summary
        print(f"batch {b} done in {time.perf_counter() - t0:.0f} s:",
              {n: (round(s["tau"], 2), round(s["speedup"], 2)) for n, s in summary.items()}, flush=True)
        write_result(args.out, result)                                # checkpoint after each batch size


if __name__ == "__main__":
    main()
