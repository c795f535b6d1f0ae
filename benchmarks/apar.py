"""APAR against plain decoding of its base model (issue 24): decoding steps per generated token, wall-clock speedup at
each batch size, APAR + n-gram, the fork rate, and a quality check, on the 48 held-out structured prompts
(`data/prompts/apar_bench.jsonl`, never trained on) and the Spec-Bench sample (the first question of each category).

    python benchmarks/apar.py --model checkpoints/smollm2-135m-instruct/apar --out benchmarks/results/apar.json
    python benchmarks/apar.py --smoke --out /tmp/apar.json          # a tiny model made to fork: seconds

Per prompt batch, in one process: plain decoding of the base model, APAR, APAR + n-gram, in turn, each compiled by
a first call, then timed (its result blocked on). Quality rule: a base answer's list items are its "N. Title:" lines;
an APAR answer covers an item when it holds at least half the title's words (of 3+ letters); reported as the
fraction of items covered, with the length of the APAR answer over the base answer's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spectax  # noqa: E402
from spectax import apar  # noqa: E402
from spectax.bench.report import bootstrap_median, machine  # noqa: E402
from spectax.drafters import NGram  # noqa: E402
from spectax.tree import DraftTree  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STRUCTURED = ROOT / "data" / "prompts" / "apar_bench.jsonl"
ITEM = re.compile(r"^\s*\d{1,2}\.\s+\**([^:\n*]{1,80})", re.MULTILINE)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]{3,}", text.lower()))


def coverage(base_text: str, apar_text: str) -> float | None:
    """The fraction of the base answer's list items the APAR answer covers (None: the base answer has no list)."""
    titles = ITEM.findall(base_text)
    if not titles:
        return None
    words = _words(apar_text)
    return float(np.mean([2 * len(_words(t) & words) >= max(1, len(_words(t))) for t in titles]))


def timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def run(model, base, tok, prompts: list[list[int]], batch: int, new_tokens: int, streams: int, eos) -> dict:
    """Every method over `prompts` in batches of `batch` (the last batch wraps around), interleaved."""
    ngram = NGram(tree=DraftTree.chain(4))
    methods = {
        "plain": lambda p: spectax.decode(base, p, new_tokens, eos_id=eos),
        "apar": lambda p: apar.decode(model, p, new_tokens, max_streams=streams, eos_id=eos),
        "apar+ngram": lambda p: apar.decode(model, p, new_tokens, max_streams=streams, eos_id=eos, drafter=ngram),
    }
    rows = {name: [] for name in methods}
    for i in range(0, len(prompts), batch):
        group = [prompts[(i + k) % len(prompts)] for k in range(batch)]
        for name, fn in methods.items():
            jax.block_until_ready(fn(group))                                        # compile (or reuse) first
            seconds, out = timed(lambda: fn(group))
            if name == "plain":
                seqs = [[int(t) for t in np.asarray(out.tokens[b, :int(out.lengths[b])])] for b in range(batch)]
                steps, opened = int(out.stats.target_calls), [1] * batch
            else:
                seqs, steps, opened = out.sequences, out.stats.target_calls, [int(s) for s in out.streams]
            rows[name].append({"seconds": seconds, "steps": steps, "tokens": [len(s) for s in seqs],
                               "streams": opened, "texts": [tok.decode([t for t in s if t < tok.vocab_size], skip_special_tokens=True)
                                         for s in seqs]})
    result = {}
    for name, rs in rows.items():
        tokens = sum(sum(r["tokens"]) for r in rs)
        longest = sum(max(r["tokens"]) for r in rs)
        ratios = [p["seconds"] / r["seconds"] for p, r in zip(rows["plain"], rs)]
        median, lo, hi = bootstrap_median(ratios)
        result[name] = {"seconds": sum(r["seconds"] for r in rs), "tokens": tokens,
                        "steps": sum(r["steps"] for r in rs),
                        "steps_per_token": sum(r["steps"] for r in rs) / max(longest, 1),
                        "tokens_per_s": tokens / sum(r["seconds"] for r in rs),
                        "speedup": sum(p["seconds"] for p in rows["plain"]) / sum(r["seconds"] for r in rs),
                        "speedup_median": median, "speedup_ci95": [lo, hi],
                        "fork_rate": float(np.mean([s - 1 for r in rs for s in r["streams"]]))}
        if name != "plain":
            covered = [coverage(bt, at) for p, r in zip(rows["plain"], rs) for bt, at in zip(p["texts"], r["texts"])]
            covered = [c for c in covered if c is not None]
            result[name]["quality"] = {
                "items_covered": float(np.mean(covered)) if covered else None, "answers_with_lists": len(covered),
                "length_ratio": tokens / max(result["plain"]["tokens"], 1)}
    return result


def smoke_model():
    """A tiny random byte-level model whose LM head makes it fork (its [Fork] column is that of a token it writes
    early, which then never wins itself), its tokenizer, and its prompts."""
    from spectax.io.tokenizer import ByteTokenizer
    from spectax.models import Model, ModelConfig

    config = ModelConfig(arch="llama", vocab_size=261, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, intermediate_size=64, max_position=512, apar_ids=(259, 260), eos_id=257)
    model = Model.random(config, seed=5, scale=3.0)
    tok = ByteTokenizer()
    prompts = [list(t.encode()) for t in ("hello there", "list four tips", "how to bake", "compare two cars")]
    emitted = int(spectax.decode(model, prompts[:1], 8).tokens[0, 5])
    head = model.params["lm_head"]["kernel"]
    head = head.at[:, 259].set(head[:, emitted]).at[:, emitted].set(0.0)
    return model.replace(params={**model.params, "lm_head": {"kernel": head}}), tok, prompts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="checkpoints/smollm2-135m-instruct/apar")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--max-streams", type=int, default=4)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        model, tok, structured = smoke_model()
        base, workloads, eos = model, {"structured": structured}, (257,)
        args.new_tokens, args.batch = min(args.new_tokens, 32), [1, 2]
    else:
        from spectax.bench.workload import spec_bench
        from spectax.io.loader import adapted_tokenizer, load_adapted_base

        model, base, tok = spectax.load(args.model), load_adapted_base(args.model), adapted_tokenizer(args.model)
        chat = lambda text: tok.encode_chat([{"role": "user", "content": text}])  # noqa: E731
        structured = [chat(json.loads(line)["text"]) for line in STRUCTURED.read_text().splitlines()]
        workloads = {"structured": structured, "spec_bench": [list(p.tokens) for p in spec_bench(tok)]}
        eos = model.config.eos_ids
    result = {"machine": machine(), "model": args.model, "new_tokens": args.new_tokens,
              "max_streams": args.max_streams, "runs": []}
    for name, prompts in workloads.items():
        for batch in args.batch:
            result["runs"].append({"workload": name, "batch": batch, "prompts": len(prompts),
                                   "methods": run(model, base, tok, prompts, batch, args.new_tokens,
                                                  args.max_streams, eos)})
            print(json.dumps({k: v for k, v in result["runs"][-1].items() if k != "methods"}),
                  {m: round(v["speedup"], 2) for m, v in result["runs"][-1]["methods"].items()}, file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
