"""What `spectax bench` writes: one JSON schema for every method, a markdown table, and the summary statistics.

The JSON (`bench.json` in the output directory):

    {"schema": "spectax.bench/1", "machine": {...}, "model": str, "settings": {...}, "verify_cost": {...} | null,
     "device_report": {...} | null, "reference": {...} | null,
     "runs": [{"batch": int, "temperature": float, "prompts": int, "peak_rss_bytes": int,
               "methods": {name: METHOD}}]}

    METHOD = {"description", "reference", "tree": [[rank, ...], ...], "tau", "acceptance_per_depth": [...],
              "decode_tokens_per_s", "e2e_tokens_per_s", "speedup", "speedup_median", "speedup_ci95": [lo, hi],
              "decode_speedup", "eta", "compile_seconds", "compiles", "program_memory_bytes",
              "tokens_match_reference": bool | null, "batches": int,
              "by_category": {category: {"tau", "speedup_median"}}}

tau: new tokens per target call (the bonus token counted; plain = 1). speedup: the reference's summed end-to-end
seconds (prefill + decode) over the method's; speedup_median: the median over prompt batches of the per-batch
ratio, with a bootstrap 95% interval over batches; decode_speedup: the same ratio of totals for the decode loop
alone; eta = speedup / tau (how much of tau the step's cost leaves). tokens_match_reference: greedy only, every
batch's tokens equal to the reference's (null when sampled).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from spectax.bench.harness import MethodRecord
from spectax.bench.methods import METHODS
from spectax.loop import acceptance_per_depth

SCHEMA = "spectax.bench/1"
BOOTSTRAP = 2000


def machine() -> dict:
    """Where the measurement ran."""
    import jax

    device = jax.devices()[0]
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend(), "device": device.device_kind, "python": sys.version.split()[0]}


def bootstrap_median(values, seed: int = 0) -> tuple[float, float, float]:
    """(median, 2.5th and 97.5th percentile of the bootstrap medians) of `values` (BOOTSTRAP resamples, seeded)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    medians = np.median(v[rng.integers(0, v.size, (BOOTSTRAP, v.size))], axis=1)
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return float(np.median(v)), float(lo), float(hi)


def summarize(records: dict[str, MethodRecord]) -> dict[str, dict]:
    """The METHOD entries of the schema, for every measured method (references included)."""
    out = {}
    for name, r in records.items():
        ref = records[r.method.reference] if r.method.reference in records else r
        tot = lambda rec, f: sum(getattr(b, f) for b in rec.batches)   # noqa: E731
        calls, loop_tokens = tot(r, "target_calls"), tot(r, "loop_tokens")
        tau = loop_tokens / max(calls, 1)
        ratios = [rb.total_seconds / mb.total_seconds for rb, mb in zip(ref.batches, r.batches)]
        median, lo, hi = bootstrap_median(ratios)
        speedup = tot(ref, "total_seconds") / tot(r, "total_seconds")
        hist = np.sum([b.accepted_hist for b in r.batches], axis=0) if r.batches else []
        by_cat: dict[str, dict] = {}
        for rb, mb in zip(ref.batches, r.batches):
            if len(set(mb.categories)) == 1:
                c = by_cat.setdefault(mb.categories[0], {"ratios": [], "calls": 0, "tokens": 0})
                c["ratios"].append(rb.total_seconds / mb.total_seconds)
                c["calls"] += mb.target_calls
                c["tokens"] += mb.loop_tokens
        same = [b.same_as_reference for b in r.batches if b.same_as_reference is not None]
        out[name] = {
            "description": METHODS.get(name, f"plain decoding of {name.removeprefix('plain-')}"),
            "reference": r.method.reference if name != r.method.reference else None,
            "tree": [list(p) for p in r.method.drafter.tree.rank_paths],
            "tau": tau, "acceptance_per_depth": acceptance_per_depth(hist).tolist(),
            "decode_tokens_per_s": loop_tokens / max(tot(r, "decode_seconds"), 1e-12),
            "e2e_tokens_per_s": tot(r, "tokens") / max(tot(r, "total_seconds"), 1e-12),
            "speedup": speedup, "speedup_median": median, "speedup_ci95": [lo, hi],
            "decode_speedup": tot(ref, "decode_seconds") / max(tot(r, "decode_seconds"), 1e-12),
            "eta": speedup / tau if tau else float("nan"),
            "compile_seconds": r.compile_seconds, "compiles": r.compiles,
            "program_memory_bytes": r.program_memory_bytes,
            "tokens_match_reference": (all(same) if same else None),
            "batches": len(r.batches),
            "by_category": {k: {"tau": c["tokens"] / max(c["calls"], 1), "speedup_median": float(np.median(c["ratios"]))}
                            for k, c in sorted(by_cat.items())},
        }
    return out


def mismatches(result: dict) -> list[str]:
    """"method (batch b, T t)" for every greedy method whose tokens differed from its reference's."""
    return [f"{name} (batch {run['batch']}, temperature {run['temperature']:g})" for run in result["runs"]
            for name, m in run["methods"].items() if m["tokens_match_reference"] is False]


def markdown(result: dict) -> str:
    """A markdown table per run (the README's): method, tree size, tau, speedup with its interval, eta, tokens/s."""
    lines = []
    for run in result["runs"]:
        lines += [f"**{result['model']}**, batch {run['batch']}, temperature {run['temperature']:g}, "
                  f"{run['prompts']} prompts, {result['settings']['new_tokens']} new tokens "
                  f"({result['machine']['backend']}, {result['machine']['device']})", "",
                  "| method | nodes | tau | speedup (totals) | speedup (median, 95% CI) | eta | decode tokens/s | "
                  "end-to-end tokens/s | compile s | same tokens |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in run["methods"].items():
            lo, hi = m["speedup_ci95"]
            same = {True: "yes", False: "**NO**", None: "-"}[m["tokens_match_reference"]]
            lines.append(f"| {name} | {len(m['tree'])} | {m['tau']:.2f} | {m['speedup']:.2f}x | "
                         f"{m['speedup_median']:.2f}x [{lo:.2f}, {hi:.2f}] | {m['eta']:.2f} | "
                         f"{m['decode_tokens_per_s']:.1f} | {m['e2e_tokens_per_s']:.1f} | {m['compile_seconds']:.1f} | "
                         f"{same} |")
        lines.append("")
    ref = result.get("reference")
    if ref:
        lines += [f"Hugging Face transformers {ref['versions']['transformers']} (torch {ref['versions']['torch']}, "
                  f"{ref['threads']} threads), the same {ref['prompts']} prompts, batch 1, greedy:", "",
                  "| method | tau | tokens/s | speedup over its greedy | same tokens as spectax plain |",
                  "|---|---|---|---|---|"]
        for name, m in ref["methods"].items():
            same = "-" if m["same_tokens_as_spectax_plain"] is None else f"{m['same_tokens_as_spectax_plain']:.0%}"
            lines.append(f"| {name} | {m['tau']:.2f} | {m['tokens_per_s']:.1f} | {m['speedup']:.2f}x | {same} |")
        lines.append("")
    return "\n".join(lines)


def write(out_dir: Path, result: dict) -> None:
    """bench.json and bench.md into out_dir, each written whole (a temp file renamed into place)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("bench.json", json.dumps(result, indent=1)), ("bench.md", markdown(result))):
        tmp = out_dir / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)
