"""The sharded code path at mesh (1, 1) against no mesh: decode() end to end, same model and prompts, same process.

At mesh (1, 1) decode() places the params and inputs with NamedShardings and pins the cache and loop state with
with_sharding_constraint; on one device all of that should compile to the same program. Run it on the device to
check (`python benchmarks/sharded_overhead.py`); writes results/sharded_overhead.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import spectax
from common import machine, timed, write_result
from spectax.models import Model, ModelConfig
from spectax.sharding import Layout, make_mesh

CONFIG = ModelConfig(arch="llama", vocab_size=4096, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                     head_dim=32, intermediate_size=768, max_position=1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sharded_overhead.json")
    args = ap.parse_args()
    model = Model.random(CONFIG, seed=0)
    mesh = make_mesh(1, 1)
    runs = {"no mesh": (model, {}), "mesh (1, 1)": (Layout(mesh).place(model), {"mesh": mesh})}
    prompts = [[1, 2, 3, 4] * 8] * args.batch
    for m, kw in runs.values():                                       # compile both first
        timed(lambda: spectax.decode(m, prompts, args.new, **kw).tokens)
    seconds = {name: [] for name in runs}
    for _ in range(args.reps):                                        # interleaved, so drift hits both alike
        for name, (m, kw) in runs.items():
            seconds[name].append(timed(lambda: spectax.decode(m, prompts, args.new, **kw).tokens)[0])
    medians = {name: float(np.median(s)) for name, s in seconds.items()}
    write_result(args.out, {"config": str(CONFIG), "batch": args.batch, "new_tokens": args.new,
                            "median_s": medians, "ratio": medians["mesh (1, 1)"] / medians["no mesh"],
                            "seconds": seconds, "machine": machine()})


if __name__ == "__main__":
    main()
