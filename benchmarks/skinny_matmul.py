"""The product benchmark of issue 23: L x [T, K] @ [K, N] fp32 (SmolLM2's 576 -> 1536, 30 layers) through XLA and
through the native CPU kernel with the weight as [K, N] (Dense layout) and as [N, K] (the tied head's layout), for T
= 1..16; medians of interleaved repeats in one process, every result blocked on. Writes JSON.

    python benchmarks/skinny_matmul.py --out benchmarks/results/skinny_matmul.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cpu_kernels import matmul as mm

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_result  # noqa: E402


def chain(product, weights):
    """One program applying `product` to every weight (each output summed so none is dead code)."""
    @jax.jit
    def run(x, ws):
        return sum(product(x, w).sum() for w in ws)
    return lambda x: run(x, weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--k", type=int, default=576)
    ap.add_argument("--n", type=int, default=1536)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/skinny_matmul.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    w_kn = [jnp.asarray(rng.standard_normal((args.k, args.n), np.float32)) for _ in range(args.layers)]
    w_nk = [jnp.asarray(np.ascontiguousarray(np.asarray(w).T)) for w in w_kn]
    runs = {"xla": chain(lambda x, w: x @ w, w_kn), "kernel_kn": chain(lambda x, w: mm.kernel(x, w), w_kn),
            "kernel_nk": chain(lambda x, w: mm.kernel(x, w, True), w_nk)}
    weight_bytes = args.layers * args.k * args.n * 4
    rows = []
    for T in args.rows:
        x = jnp.asarray(rng.standard_normal((T, args.k), np.float32))
        times = {name: [] for name in runs}
        for run in runs.values():
            np.asarray(run(x))                                     # compile, blocked on
        for _ in range(args.repeats):
            for name, run in runs.items():                          # interleaved
                start = time.perf_counter()
                np.asarray(run(x))
                times[name].append(time.perf_counter() - start)
        row = {"T": T}
        for name, ts in times.items():
            ms = float(np.median(ts)) * 1e3
            row[f"{name}_ms"] = round(ms, 3)
            row[f"{name}_GBps"] = round(weight_bytes / ms / 1e6, 1)
        rows.append(row)
        print(row, flush=True)
    write_result(args.out, {"machine": machine(), "layers": args.layers, "k": args.k, "n": args.n,
                            "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
