"""Verification cost curve c(N) of SmolLM2-135M-Instruct, fp32, on this machine: the time of one target forward over
the root + N draft nodes (a chain, on top of a KV cache of --context committed tokens) relative to N = 0.

spectax.calibrate.verify_cost at each --batches size over --nodes (N up to 64); the JSON also holds the curve
interpolated to every N = 0..max(--nodes) (spectax.calibrate.cost_curve), the input DraftTree.optimal(cost=) takes.

Writes JSON (default benchmarks/results/verify_cost.json). Run: python benchmarks/verify_cost.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import spectax
from spectax.calibrate import NODE_COUNTS, cost_curve, verify_cost

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, machine, write_result  # noqa: E402

NOTE = ("measured while a background data-generation job competed for the 2 CPU cores: medians of interleaved "
        "repeats, but the absolute ms are inflated and noisier than on an idle machine")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--nodes", type=int, nargs="+", default=list(NODE_COUNTS), help="draft node counts N (with 0)")
    ap.add_argument("--context", type=int, default=128, help="committed tokens in the KV cache")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--note", default=NOTE, help="the conditions of the run, stored in the JSON")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "verify_cost.json")
    args = ap.parse_args(argv)

    model = spectax.load(MODEL)
    runs = []
    for batch in args.batches:
        measured = verify_cost(model, args.nodes, batch=batch, context=args.context, repeats=args.repeats)
        measured["curve"] = cost_curve(measured, max(args.nodes)).tolist()      # c(n) for n = 0..max N
        runs.append(measured)
        print(f"batch {batch}: " + ", ".join(f"c({n})={c:.3f}" for n, c in zip(measured["nodes"], measured["cost"])),
              flush=True)
    write_result(args.out, {"benchmark": "verify_cost", "model": MODEL, "dtype": "float32", "tree": "chain",
                            "machine": machine(), "note": args.note, "runs": runs})


if __name__ == "__main__":
    main()
