"""Useful tokens/s of the self-distillation generator: static batches (every row waits for its batch's longest
answer) against refilled rows (`spectax.train.distill.greedy_refilled`), on the training prompts (never
Spec-Bench), at several batch sizes. Useful = response tokens kept (up to and including the end token).

    python benchmarks/distill_throughput.py --prompts 64 --batch 16 32 64 --max-new 512
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import spectax
from spectax.io import hub
from spectax.train import distill
from spectax.train.prompt_files import read_prompts, split_prompts

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, machine, write_result  # noqa: E402


def static_batches(model, prompts, max_new: int, eos, batch: int) -> int:
    """Consecutive batches of `batch` prompts through spectax.decode; returns the useful tokens."""
    useful = 0
    for b in range(0, len(prompts), batch):
        rows = prompts[b:b + batch]
        out = spectax.decode(model, rows + [rows[0]] * (batch - len(rows)), max_new, eos_id=eos)
        useful += int(np.asarray(out.lengths)[:len(rows)].sum())
    return useful


def refilled(model, prompts, max_new: int, eos, batch: int) -> int:
    return sum(len(r) for _, r in distill.greedy_refilled(model, prompts, max_new, eos, batch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--max-new", type=int, default=512)
    ap.add_argument("--modes", nargs="+", default=["static", "refill"])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distill_throughput.json"))
    args = ap.parse_args()
    model, tok = spectax.load(MODEL), hub.tokenizer(MODEL)
    train, _ = split_prompts(read_prompts())
    prompts = distill.encode_prompts(tok, train[:args.prompts])
    eos = model.config.eos_ids
    rows = []
    for batch in args.batch:
        for mode in args.modes:
            run = {"static": static_batches, "refill": refilled}[mode]
            run(model, prompts, args.max_new, eos, batch)                 # compiles every program the run needs
            start = time.perf_counter()
            useful = run(model, prompts, args.max_new, eos, batch)        # every result is read back to the host
            seconds = time.perf_counter() - start
            rows.append({"mode": mode, "batch": batch, "useful_tokens": useful, "seconds": round(seconds, 2),
                         "useful_tok_s": round(useful / seconds, 1)})
            print(rows[-1], flush=True)
    write_result(args.out, {"machine": machine(), "prompts": args.prompts, "max_new_tokens": args.max_new,
                            "note": "the second of two identical runs (the first compiles)",
                            "rows": rows})


if __name__ == "__main__":
    main()
