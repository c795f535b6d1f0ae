"""The decode step and the compile time through spectax.decode(), for plain decoding, an n-gram chain and the shipped
Medusa heads (SmolLM2-135M-Instruct, fp32, batch 1, a 120-token prompt that repeats itself).

The step is the difference of two decode() lengths in one output bucket (120 and 70 new tokens) over the difference
of their target calls, median of 5 pairs; compile time is the first call minus a warm call. Run it from two checkouts
(PYTHONPATH=<checkout>) alternately to compare them; results/decode_step_ab.json holds the refactor's comparison.

    PYTHONPATH=. python benchmarks/decode_step.py --out benchmarks/results/decode_step.json
"""
import argparse
import time
from pathlib import Path

import numpy as np

import spectax
from common import machine, write_result
from spectax.drafters import NGram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decode_step.json")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = spectax.load("smollm2-135m-instruct")
    prompt = [int(t) for t in np.random.default_rng(0).integers(100, 20000, 60)] * 2
    variants = {"plain": None, "ngram": NGram(max_n=3, tree=spectax.DraftTree.chain(4)),
                "medusa": spectax.load("smollm2-135m-instruct/medusa")}

    def call(drafter, n):
        start = time.perf_counter()
        out = spectax.decode(model, [prompt], n, drafter=drafter)
        calls = int(np.asarray(out.stats.target_calls))
        np.asarray(out.tokens)
        return time.perf_counter() - start, calls

    result = {"spectax": spectax.__file__, "machine": machine()}
    for name, drafter in variants.items():
        first, _ = call(drafter, 70)
        warm, _ = call(drafter, 70)
        steps = []
        for _ in range(args.repeats):
            ta, ca = call(drafter, 120)
            tb, cb = call(drafter, 70)
            steps.append(1e3 * (ta - tb) / max(ca - cb, 1))
        result[name] = {"compile_s": first - warm, "step_ms": float(np.median(steps)), "steps_ms": steps}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
