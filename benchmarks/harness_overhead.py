"""What `spectax bench`'s timing adds: one method timed alone through `spectax.decode()` against the harness's timed
path (the Decoder's prefill, loop and result programs, each blocked on), alternately on the same prompts, same
shapes (each prompt padded to its power of two, as decode() does; 64 new tokens, batch 1), SmolLM2-135M-Instruct, plain and the shipped Medusa heads.

    python benchmarks/harness_overhead.py          # writes benchmarks/results/harness_overhead.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

import spectax
from spectax.api import bucket
from spectax.bench import harness, methods, workload
from spectax.cli import stop_ids
from spectax.io import hub

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, machine, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--bucket", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "harness_overhead.json")
    args = ap.parse_args()

    model = spectax.load(MODEL)
    tok = hub.tokenizer(MODEL)
    eos = stop_ids(tok, model.config)
    prompts = workload.spec_bench(tok, per_category=1)[:args.prompts]
    ms = methods.build(model, MODEL, ["medusa"])
    result = {"machine": machine(), "model": MODEL, "new_tokens": args.new, "prompt_bucket": args.bucket,
              "prompts": len(prompts), "repeats": args.repeats, "methods": {}}
    for name, m in ms.items():
        alone, timed = [], []
        for p in prompts:
            ids = p.ids[-args.bucket:]
            prompt = np.zeros((1, bucket(len(ids))), np.int32)
            prompt[0, :len(ids)] = ids
            lengths = np.array([len(ids)], np.int32)
            dec = spectax.Decoder(m.target, m.drafter, max_new_tokens=args.new, max_prompt_len=prompt.shape[1],
                                  eos_id=list(eos))
            call_args = dec.program_args(m.target, prompt, lengths, 0, None, None, dec.max_new_tokens, dec.eos_ids)
            prog = harness.Programs(dec, call_args)

            def direct():
                return jax.block_until_ready(spectax.decode(m.target, prompt, args.new, prompt_lengths=lengths,
                                                            drafter=m.drafter, eos_id=list(eos)))
            direct(), prog.run(call_args)                                 # compile / warm up both paths
            for _ in range(args.repeats):
                t = time.perf_counter()
                a = direct()
                alone.append(time.perf_counter() - t)
                total, b = prog.run(call_args)[2:]
                timed.append(total)
                assert (np.asarray(a.tokens) == np.asarray(b.tokens)).all()
        ratios = np.asarray(timed) / np.asarray(alone)
        result["methods"][name] = {"alone_seconds": float(np.sum(alone)), "harness_seconds": float(np.sum(timed)),
                                   "ratio_of_totals": float(np.sum(timed) / np.sum(alone)),
                                   "median_ratio": float(np.median(ratios))}
        print(name, result["methods"][name], flush=True)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
