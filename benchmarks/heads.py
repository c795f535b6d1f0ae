"""Heads (blockwise / Medusa / Cerberus) on SmolLM2-135M-Instruct (fp32, greedy) against spectax plain decoding.

Prompts: a stratified sample of the Spec-Bench questions (`--per-category` of each of the 13 categories, first
turn, chat template, truncated to the prompt bucket). For every heads kind (shipped checkpoints) and tree, and for
plain decoding, the decode loop (spectax.loop.run, the jitted while_loop that decode() runs) is timed from a
prefilled state; variants are interleaved prompt by prompt in one process and every result is blocked on before the
clock stops; each greedy run's tokens are checked against plain decoding's. Batch 1: per prompt, then per category;
batch 8: the same prompts in batches of 8.

Reported per kind and tree: tau (new tokens per target call, bonus counted), acceptance per depth (= per head for a
chain), speedup over plain (ratio of summed loop times), eta = speedup / tau, per-category speedup at batch 1; the
heads' own cost per step (ms, with the reduced and the full draft vocabulary); and the c(N) curve measured by
spectax.calibrate on this backend, which the "optimal" tree (DraftTree.optimal(..., cost=c)) is chosen with.

    python benchmarks/heads.py                      # writes benchmarks/results/heads.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import spectax
from spectax import DraftTree, calibrate
from spectax.io import hub
from spectax.drafters import Heads, NoDraft
from spectax.drafters.heads import head_logits, head_table
from spectax.tokenizer import from_gguf

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, SPEC_BENCH, LoopProgram, machine, spec_bench_prompts, timed, write_result  # noqa: E402

PATHS = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 0, 0, 0)]   # a Medusa-style path list


def stratified(path: Path, per_category: int, tok) -> list[tuple[str, list[int]]]:
    """(category, prompt ids) for the first `per_category` questions of every category."""
    seen = defaultdict(int)
    out = []
    for q in spec_bench_prompts(path):
        if seen[q["category"]] < per_category:
            seen[q["category"]] += 1
            out.append((q["category"], tok.encode_chat([{"role": "user", "content": q["turns"][0]}])))
    return out


def heads_cost_ms(model, heads: Heads, batch: int, repeats: int = 50) -> float:
    """Median ms of one proposal's head work (head_logits + top-k) for `batch` rows."""
    table = head_table(model)[heads.vocab_ids]
    fn = jax.jit(lambda x: jax.lax.top_k(head_logits(heads.config, heads.params, table, x), 4)[1])
    x = jnp.ones((batch, model.config.hidden_size), jnp.float32)
    jax.block_until_ready(fn(x))
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        times.append(timed(lambda: fn(x))[0])
    return 1e3 * float(np.median(times))


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
                    reference = np.asarray(state.tokens)
                elif not (np.asarray(state.tokens) == reference).all():
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
            r["per_prompt"].append({"categories": [c for c, _ in group], "seconds": sec,
                                    "tau": float(np.asarray(st.new_tokens).sum() / max(np.asarray(st.row_calls).sum(), 1))})
    return results


def summarize(results: dict) -> dict:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workload_arguments(ap)
    ap.add_argument("--kinds", nargs="+", default=["blockwise", "medusa", "cerberus"])
    ap.add_argument("--main-kind", default="medusa", help="the kind measured with every chain and a path list")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--reuse", type=Path, help="a previous result JSON: reuse its c(N), heads cost and rank "
                                               "acceptance instead of measuring them again")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "heads.json")
    args = ap.parse_args()

    model = spectax.load(MODEL)
    tok = from_gguf(hub.resolve(MODEL))
    prompts = stratified(args.spec_bench, args.per_category, tok)
    result = {"machine": machine(), "model": MODEL, "new_tokens": args.new, "prompt_bucket": args.bucket,
              "prompts": len(prompts), "categories": sorted({c for c, _ in prompts}), "repeats": args.repeats}

    previous = json.loads(args.reuse.read_text()) if args.reuse else {}
    t0 = time.perf_counter()
    cost = previous.get("verify_cost_batch1") or calibrate.verify_cost(
        model, node_counts=(0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), batch=1, context=256, repeats=5)
    curve = calibrate.cost_curve(cost, 64)
    result["verify_cost_batch1"] = {**cost, "curve": curve.tolist()}
    print(f"c(N) in {time.perf_counter() - t0:.0f} s: {np.round(cost['cost'], 2).tolist()}", flush=True)

    heads = {k: Heads.load(hub.shipped_drafter(MODEL, k)) for k in args.kinds}
    result["heads_cost_ms"] = previous.get("heads_cost_ms", {})
    for k, h in heads.items():
        if k in result["heads_cost_ms"]:
            continue
        full = h.replace(vocab_ids=jnp.arange(model.config.vocab_size, dtype=jnp.int32))
        result["heads_cost_ms"][k] = {f"batch{b}": {"draft_vocab": heads_cost_ms(model, h, b),
                                                    "full_vocab": heads_cost_ms(model, full, b)}
                                      for b in args.batches}
    print("heads cost (ms):", result["heads_cost_ms"], flush=True)

    # trees: chains of 1..num_heads, a path list, and the optimal tree for the measured rank acceptance and c(N)
    probe = {k: h.replace(tree=DraftTree.kary((4, 3, 2, 1)[:h.config.num_heads])) for k, h in heads.items()}
    calib_prompts = prompts[::3]
    acc = {k: np.asarray(v) for k, v in previous.get("rank_acceptance", {}).items()}
    for k, h in probe.items():
        if k not in acc:
            st = spectax.decode(model, [p[-args.bucket:] for _, p in calib_prompts], args.new, drafter=h).stats
            acc[k] = st.rank_acceptance
    result["rank_acceptance"] = {k: v.tolist() for k, v in acc.items()}
    variants = {"plain": NoDraft()}
    trees = {}
    for k, h in heads.items():
        H = h.config.num_heads
        options = {f"chain{d}": DraftTree.chain(d) for d in range(1, min(H, 3) + 1)} if k == args.main_kind else {}
        if k == args.main_kind:
            options["paths"] = DraftTree.from_paths([p for p in PATHS if len(p) <= H])
        options["optimal"] = DraftTree.optimal(acc[k], budget=16, max_depth=H, cost=curve)
        if options["optimal"].num_nodes == 0:
            del options["optimal"]                                  # nothing pays at this cost curve
        add_tree_variants(variants, trees, k, h, options)
    result["trees"] = trees
    run_batches(model, variants, prompts, args, result)


def workload_arguments(ap: argparse.ArgumentParser) -> None:
    """The Spec-Bench workload options the heads and block benchmarks share (prompts, new tokens, bucket, repeats)."""
    ap.add_argument("--spec-bench", type=Path, default=SPEC_BENCH)
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--bucket", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1)


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


if __name__ == "__main__":
    main()
