"""CoS (speculative collaborative decoding) against the naive ensemble on SmolLM2-135M-Instruct (CPU, fp32).

Ensembles: contrastive, the shipped `smollm2-135m-instruct/cos-contrastive` (the model against its own first L
layers); mix, the same two members with weights `--weights`. For each, the naive ensemble (every member every token)
and CoS variants (proposer: the early-exit member or the full model; chains of several lengths) are timed on the
decode loop (spectax.loop.run, the jitted while_loop decode() runs) from a prefilled state, interleaved prompt by
prompt in one process, each result blocked on before the clock stops, compiles warmed up first. Greedy CoS tokens
are checked against the naive ensemble's. Prompts: a stratified Spec-Bench sample (`--per-category` of each of the
13 categories, the first `--prompts` of them, first turn, chat template, the last `--bucket` tokens), batch 1;
benchmark only, nothing was tuned on them. Greedy measures every variant; T = 1 sampling measures the naive ensemble
and each mode's fastest greedy variant.

Reported per mode, temperature and variant: median over prompts of the speedup over the naive ensemble (and the
ratio of summed loop times), tau (new tokens per target call, bonus counted) and acceptance per depth.

    python benchmarks/cos.py                         # writes benchmarks/results/cos.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

import spectax
from spectax import DraftTree, Ensemble
from spectax.drafters import CoS, NoDraft
from spectax.io import hub
from spectax.io.tokenizer import from_gguf

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, SPEC_BENCH, LoopProgram, machine, timed, write_result  # noqa: E402
from workload import stratified  # noqa: E402


def run_variants(ensemble, variants: dict, prompts, new: int, bucket: int, temperature: float) -> dict:
    """Interleaved batch-1 loop timings per prompt: {name: {"seconds": [...], "calls", "tokens", "hist", "same"}}."""
    out = {name: {"seconds": [], "calls": 0, "tokens": 0, "hist": 0, "same": 0} for name in variants}
    for i, (_, ids) in enumerate(prompts):
        programs = {name: LoopProgram(ensemble, d, [ids[-bucket:]], new, bucket, temperature=temperature)
                    for name, d in variants.items()}
        jax.block_until_ready([p.state for p in programs.values()])     # the prefills, before any clock starts
        if i == 0:
            for p in programs.values():                                  # compile and warm up
                jax.block_until_ready(p())
        reference = None
        for name, p in programs.items():
            seconds, state = timed(p)
            st, r = state.stats, out[name]
            tokens = np.asarray(state.history.tokens_BW)
            reference = tokens if reference is None else reference
            r["seconds"].append(seconds)
            r["calls"] += int(np.asarray(st.row_calls).sum())
            r["tokens"] += int(np.asarray(st.new_tokens).sum())
            r["hist"] = r["hist"] + np.asarray(st.accepted_hist).sum(0)
            r["same"] += int((tokens == reference).all())
    return out


def summarize(results: dict, greedy: bool) -> dict:
    """Per variant: median and total speedup over "naive", tau, acceptance per depth (and greedy equality)."""
    base = np.asarray(results["naive"]["seconds"])
    summary = {}
    for name, r in results.items():
        sec = np.asarray(r["seconds"])
        hist = np.atleast_1d(r["hist"])
        at_least = np.cumsum(hist[::-1])[::-1]
        summary[name] = {"speedup_median": float(np.median(base / sec)), "speedup_total": float(base.sum() / sec.sum()),
                         "tau": r["tokens"] / max(r["calls"], 1), "loop_seconds": float(sec.sum()),
                         "acceptance_per_depth": (at_least[1:] / np.maximum(at_least[:-1], 1)).tolist()}
        if greedy:
            summary[name]["prompts_equal_to_naive"] = f"{r['same']}/{len(sec)}"
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec-bench", type=Path, default=SPEC_BENCH)
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=13, help="the first N of the stratified sample")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--bucket", type=int, default=256)
    ap.add_argument("--ensemble", default=f"{MODEL}/cos-contrastive")
    ap.add_argument("--weights", type=float, nargs=2, default=[0.5, 0.5], help="mix: (full model, early exit)")
    ap.add_argument("--amateur-chains", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--expert-chains", type=int, nargs="+", default=[2])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cos.json")
    args = ap.parse_args()

    contrastive = spectax.load(args.ensemble)
    ensembles = {"contrastive": contrastive, "mix": Ensemble(contrastive.models, weights=tuple(args.weights))}
    tok = from_gguf(hub.resolve(MODEL))
    prompts = stratified(args.spec_bench, args.per_category, tok)[:args.prompts]
    result = {"machine": machine(), "model": MODEL, "ensemble": args.ensemble,
              "amateur_layers": contrastive.models[1].config.num_layers, "alpha": contrastive.alpha,
              "plausibility": contrastive.plausibility, "mix_weights": args.weights, "new_tokens": args.new,
              "prompt_bucket": args.bucket, "prompts": len(prompts),
              "categories": [c for c, _ in prompts], "batch": 1}
    for mode, ensemble in ensembles.items():
        variants = {"naive": NoDraft()}
        variants |= {f"amateur/chain{d}": CoS(ensemble, proposer=1, tree=DraftTree.chain(d))
                     for d in args.amateur_chains}
        variants |= {f"expert/chain{d}": CoS(ensemble, proposer=0, tree=DraftTree.chain(d))
                     for d in args.expert_chains}
        t0 = time.perf_counter()
        greedy = summarize(run_variants(ensemble, variants, prompts, args.new, args.bucket, 0.0), greedy=True)
        best = max((k for k in greedy if k != "naive"), key=lambda k: greedy[k]["speedup_median"])
        t1 = time.perf_counter()
        sampled_variants = {"naive": variants["naive"], best: variants[best]}
        sampled = summarize(run_variants(ensemble, sampled_variants, prompts, args.new, args.bucket, 1.0),
                            greedy=False)
        result[mode] = {"greedy": greedy, "T=1": sampled, "fastest_greedy_variant": best,
                        "minutes": {"greedy": (t1 - t0) / 60, "T=1": (time.perf_counter() - t1) / 60}}
        write_result(args.out, result)                                   # checkpoint after each mode


if __name__ == "__main__":
    main()
