"""The Spec-Bench workload the drafter benchmarks share (heads.py, block.py, ngram.py, cos.py): the options, the
stratified prompt sample, the target and its c(N) curve, and the interleaved timing of decode-loop variants at batch
1 and 8 (each greedy run's tokens checked against plain decoding's) with its summary."""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np

import spectax
from spectax import calibrate
from spectax.io import hub
from spectax.io.tokenizer import from_gguf

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, SPEC_BENCH, LoopProgram, machine, spec_bench_prompts, timed, write_result  # noqa: E402


def workload_arguments(ap: argparse.ArgumentParser, per_category: int = 1) -> None:
    """The Spec-Bench workload options (prompts, new tokens, bucket, repeats)."""
    ap.add_argument("--spec-bench", type=Path, default=SPEC_BENCH)
    ap.add_argument("--per-category", type=int, default=per_category)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--bucket", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1)


def stratified(path: Path, per_category: int, tok) -> list[tuple[str, list[int]]]:
    """(category, prompt ids) for the first `per_category` questions of every category."""
    seen = defaultdict(int)
    out = []
    for q in spec_bench_prompts(path):
        if seen[q["category"]] < per_category:
            seen[q["category"]] += 1
            out.append((q["category"], tok.encode_chat([{"role": "user", "content": q["turns"][0]}])))
    return out


def load_workload(args) -> tuple:
    """(target model, tokenizer, stratified prompts, the result dict's header) for the options of
    `workload_arguments`."""
    model = spectax.load(MODEL)
    tok = from_gguf(hub.resolve(MODEL))
    prompts = stratified(args.spec_bench, args.per_category, tok)
    result = {"machine": machine(), "model": MODEL, "new_tokens": args.new, "prompt_bucket": args.bucket,
              "prompts": len(prompts), "categories": sorted({c for c, _ in prompts}), "repeats": args.repeats}
    return model, tok, prompts, result


def verify_cost_curve(model, previous: dict, node_counts: tuple[int, ...], result: dict) -> np.ndarray:
    """The c(N) curve up to max(node_counts) nodes, from `previous["verify_cost_batch1"]` when a previous result
    has it, else measured (batch 1, context 256); recorded as result["verify_cost_batch1"]."""
    t0 = time.perf_counter()
    cost = previous.get("verify_cost_batch1") or calibrate.verify_cost(model, node_counts=node_counts, batch=1,
                                                                         context=256, repeats=5)
    curve = calibrate.cost_curve(cost, max(node_counts))
    result["verify_cost_batch1"] = {**cost, "curve": curve.tolist()}
    print(f"c(N) in {time.perf_counter() - t0:.0f} s: {np.round(curve[:9], 2).tolist()}", flush=True)
    return curve


def run_variants(model, variants: dict, prompts, batch: int, new: int, bucket: int, repeats: int) -> dict:
    """Interleaved loop timings: {name: {"seconds": [...], "tau": ..., "stats": [...], "categories": [...]}}."""
    results = {name: {"seconds": 0.0, "calls": 0, "tokens": 0, "speculated": 0, "hist": None, "per_prompt": []}
               for name in variants}
    if len(prompts) % batch:                     # whole batches only (one compile per variant): wrap around
        prompts = prompts + prompts[:batch - len(prompts) % batch]
    for i in range(0, len(prompts), batch):
        group = prompts[i:i + batch]
        ids = [p[-bucket:] for _, p in group]
        programs = {name: LoopProgram(model, d, ids, new, bucket) for name, d in variants.items()}
        jax.block_until_ready([prog.state for prog in programs.values()])   # the prefills, before any clock starts
        if i == 0:
            for prog in programs.values():      # compile and warm up (the first call after a compile is slow)
                jax.block_until_ready(prog())
        reference = None
        times = defaultdict(list)
        for _ in range(repeats):
            for name, prog in programs.items():
                seconds, state = timed(prog)
                times[name].append(seconds)
                if reference is None:
                    reference = np.asarray(state.history.tokens_BW)
                elif not (np.asarray(state.history.tokens_BW) == reference).all():
                    raise SystemExit(f"{name}: tokens differ from plain decoding")
                results[name]["last"] = state
        for name in variants:
            st = results[name].pop("last").stats
            r = results[name]
            sec = float(np.median(times[name]))
            r["seconds"] += sec
            r["calls"] += int(np.asarray(st.row_calls).sum())
            r["tokens"] += int(np.asarray(st.new_tokens).sum())
            r["speculated"] += int(np.asarray(st.speculated).sum())
            hist = np.asarray(st.accepted_hist).sum(0)
            r["hist"] = hist if r["hist"] is None else r["hist"] + hist
            tau = float(np.asarray(st.new_tokens).sum() / max(np.asarray(st.row_calls).sum(), 1))
            r["per_prompt"].append({"categories": [c for c, _ in group], "seconds": sec, "tau": tau})
    return results


def summarize(results: dict) -> dict:
    """Per variant of `run_variants`' results: tau, speedup over "plain", eta, acceptance per depth, per category."""
    base = results["plain"]["seconds"]
    out = {}
    for name, r in results.items():
        tau = r["tokens"] / max(r["calls"], 1)
        at_least = np.cumsum(r["hist"][::-1])[::-1]
        speedup = base / r["seconds"]
        cats = {}
        for mine, plain in zip(r["per_prompt"], results["plain"]["per_prompt"]):
            if len(mine["categories"]) == 1:
                cats.setdefault(mine["categories"][0], []).append(plain["seconds"] / mine["seconds"])
        out[name] = {"tau": tau, "speedup": speedup, "eta": speedup / tau, "loop_seconds": r["seconds"],
                     "speculating_fraction": r["speculated"] / max(r["calls"], 1),
                     "acceptance_per_depth": (at_least[1:] / np.maximum(at_least[:-1], 1)).tolist(),
                     "speedup_by_category": {c: float(np.median(v)) for c, v in cats.items()}}
    return out


def add_tree_variants(variants: dict, trees: dict, prefix: str, drafter, options: dict) -> None:
    """Adds `drafter` with each tree of `options` ({name: DraftTree}) as variant "prefix/name", recording the trees'
    rank paths in `trees`; a tree already measured under this prefix is noted as "= its name", not run twice."""
    for name, tree in options.items():
        same = [n for n, v in variants.items() if n.startswith(prefix + "/") and v.tree == tree]
        if same:                                       # e.g. the optimal tree is one of the chains: measured once
            trees[f"{prefix}/{name}"] = f"= {same[0]}"
            continue
        variants[f"{prefix}/{name}"] = drafter.replace(tree=tree)
        trees[f"{prefix}/{name}"] = [list(p) for p in tree.rank_paths]


def run_batches(model, variants: dict, prompts, args, result: dict) -> None:
    """Runs the variants at each of args.batches and writes the result JSON to args.out after each batch size."""
    for b in args.batches:
        t0 = time.perf_counter()
        res = run_variants(model, variants, prompts, b, args.new, args.bucket, args.repeats)
        result[f"batch{b}"] = summarize(res)
        print(f"batch {b} done in {time.perf_counter() - t0:.0f} s", flush=True)
        write_result(args.out, result)                                # checkpoint after each batch size
