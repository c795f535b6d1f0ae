"""`spectax bench`: the driver. Loads the model and prompts, builds the methods (their trees as `--tree` says),
measures every (batch, temperature) run, and writes bench.json, bench.md and the PNGs into `--out`."""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path

import numpy as np

from spectax.bench import harness, methods, plots, reference, report, workload
from spectax.io.hub import REGISTRY, resolve

SMOKE_CONFIG = dict(arch="llama", vocab_size=320, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, intermediate_size=64, max_position=512)
SMOKE_METHODS = ("draft-chain",)
OPTIMAL_BUDGET = 16


@dataclasses.dataclass
class Subject:
    """What is benchmarked: the model, its registry name (None for others), its tokenizer and end tokens."""

    model: object
    registered: str | None
    tok: object
    eos: tuple[int, ...]


def _subject(args: argparse.Namespace) -> Subject:
    import spectax
    from spectax.io import hub
    from spectax.io.tokenizer import load_tokenizer

    if args.smoke:
        model = spectax.Model.random(spectax.ModelConfig(**SMOKE_CONFIG), seed=0, scale=3.0)
        return Subject(model, None, load_tokenizer("byte"), ())
    from spectax.cli import pick_tokenizer, stop_ids

    model = spectax.load(args.model)
    tok = pick_tokenizer(args.model, args.tokenizer)
    return Subject(model, args.model if args.model in hub.REGISTRY else None, tok, stop_ids(tok, model.config))


def verify_cost(model, largest: int, smoke: bool) -> dict:
    """c(N) on this backend at batch 1 (spectax.calibrate.verify_cost), up to `largest` nodes."""
    from spectax import calibrate

    nodes = tuple(n for n in (0, 1, 2, 4, 8, 16, 32) if n <= max(largest, 1)) if not smoke else (0, 1, 2)
    return calibrate.verify_cost(model, node_counts=nodes, batch=1, context=64 if smoke else 256,
                                 repeats=3 if smoke else 5)


def optimal_trees(ms: dict, subject: Subject, cost: dict, args) -> dict:
    """Every drafted method with the Sequoia-optimal tree for its rank acceptance, measured on held-out prompts (never
    Spec-Bench) with a k-ary probe tree, and for the c(N) curve `cost`."""
    import spectax
    from spectax import calibrate
    from spectax.tree import DraftTree

    prompts = workload.smoke(subject.tok) if args.smoke else workload.held_out(subject.tok, 8)
    ids = [list(p.ids[-args.prompt_bucket:]) for p in prompts]
    curve = calibrate.cost_curve(cost, min(OPTIMAL_BUDGET, max(cost["nodes"])))
    out = {}
    for name, m in ms.items():
        if name == "combined" or m.max_depth < 1:                         # plain, combined: no tree of their own
            out[name] = m
            continue
        depth = min(m.max_depth, 4)
        probe = methods.with_tree(m, DraftTree.kary((4, 3, 2, 1)[:depth]))
        st = spectax.decode(probe.target, ids, args.max_new_tokens, drafter=probe.drafter,
                            eos_id=subject.eos or None).stats
        tree = DraftTree.optimal(st.rank_acceptance, budget=len(curve) - 1, max_depth=depth, cost=curve)
        if tree.num_nodes:
            out[name] = methods.with_tree(m, tree)
        else:
            print(f"[spectax bench] {name}: no tree pays at this c(N); measured with its default tree",
                  file=sys.stderr)
            out[name] = m
    return out


def device_report(model, result: dict) -> dict:
    """The memory-bandwidth limit: weight bytes / measured bandwidth (a device-to-device copy of 256 MiB, median of
    5), and each method's decode tokens/s against tau x batch x that limit."""
    import jax
    import jax.numpy as jnp

    weight_bytes = int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(model.params)))
    x = jnp.ones((64 * 1024 * 1024,), jnp.float32)
    copy = jax.jit(lambda a: a + 1)
    jax.block_until_ready(copy(x))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(copy(x))
        times.append(time.perf_counter() - t)
    bandwidth = 2 * x.nbytes / float(np.median(times))        # read + write
    plain_limit = bandwidth / weight_bytes                     # target calls per second if weights dominate
    runs = []
    for run in result["runs"]:
        entry = {}
        for name, m in run["methods"].items():
            limit = plain_limit * run["batch"] * m["tau"]
            entry[name] = {"decode_tokens_per_s": m["decode_tokens_per_s"], "limit_tokens_per_s": limit,
                           "fraction_of_limit": m["decode_tokens_per_s"] / limit}
        runs.append({"batch": run["batch"], "temperature": run["temperature"], "methods": entry})
    return {"weight_bytes": weight_bytes, "bandwidth_bytes_per_s": bandwidth,
            "plain_limit_steps_per_s": plain_limit, "runs": runs}


def main(args: argparse.Namespace) -> int:
    """Runs the benchmark the parsed `spectax bench` flags describe; returns the exit status (1 when a greedy
    method's tokens differed from its reference's)."""
    from tqdm import tqdm

    if args.reference and not reference.available():
        raise ValueError("--reference needs torch, transformers and accelerate: pip install -e '.[bench]'")
    if args.reference and (args.smoke or args.model not in REGISTRY or not str(resolve(args.model)).endswith(".gguf")):
        raise ValueError("--reference loads the model's GGUF file into transformers: it needs a registered model")
    names = list(args.methods or (SMOKE_METHODS if args.smoke else methods.DEFAULT_METHODS))
    if args.smoke:                     # the tiny model's context is 512 positions
        args.prompt_bucket, args.max_new_tokens = min(args.prompt_bucket, 64), min(args.max_new_tokens, 32)
    batches = args.batch or ([1] if args.smoke else [1, 8])
    tree = methods.parse_tree(args.tree) if args.tree else None
    subject = _subject(args)
    if args.smoke:
        prompts = workload.smoke(subject.tok)
    else:
        prompts = workload.spec_bench(subject.tok, args.spec_bench, None if args.full else args.per_category)
    ms = methods.build(subject.model, subject.registered, names)
    if tree is not None and tree != "optimal":
        ms = {n: m if n in ("plain", "combined") else methods.with_tree(m, tree) for n, m in ms.items()}
    largest = max(m.drafter.tree.num_nodes for m in ms.values())
    cost = verify_cost(subject.model, OPTIMAL_BUDGET if tree == "optimal" else largest, args.smoke)
    if tree == "optimal":
        ms = optimal_trees(ms, subject, cost, args)
    result = {"schema": report.SCHEMA, "machine": report.machine(), "model": "smoke" if args.smoke else args.model,
              "settings": {"new_tokens": args.max_new_tokens, "prompt_bucket": args.prompt_bucket,
                           "prompts": "smoke" if args.smoke else ("all" if args.full else
                                                                  f"{args.per_category} per category"),
                           "categories": sorted({p.category for p in prompts}), "repeats": args.repeats,
                           "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "tree": args.tree},
              "verify_cost": cost, "device_report": None, "reference": None, "runs": []}
    out = Path(args.out)
    plain_rows = None                       # spectax's plain greedy tokens at batch 1, for the reference
    for temperature in args.temperature:
        for batch in batches:
            with tqdm(total=len(prompts), desc=f"batch {batch}, T={temperature:g}", unit="prompt",
                      file=sys.stderr, disable=args.quiet) as bar:
                records = harness.measure(ms, prompts, batch=batch, new_tokens=args.max_new_tokens,
                                          prompt_bucket=args.prompt_bucket, temperature=temperature,
                                          seed=args.seed, eos_ids=subject.eos, repeats=args.repeats,
                                          top_k=args.top_k, top_p=args.top_p, progress=bar.update)
            if args.reference and batch == 1 and temperature == 0:
                plain_rows = {i: b.rows[0] for i, b in enumerate(records["plain"].batches)}
            result["runs"].append({"batch": batch, "temperature": temperature, "prompts": len(prompts),
                                   "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                                   "methods": report.summarize(records)})
            report.write(out, result)                            # a checkpoint after every run
    if args.reference:
        with tqdm(total=len(prompts), desc="transformers", unit="prompt", file=sys.stderr, disable=args.quiet) as bar:
            result["reference"] = reference.measure(
                resolve(subject.registered), prompts, args.max_new_tokens, args.prompt_bucket,
                methods.DRAFT_LAYERS, methods.DRAFT_CHAIN, spectax_plain=plain_rows,
                progress=bar.update)
    if args.device_report:
        result["device_report"] = device_report(subject.model, result)
    report.write(out, result)
    plots.write_plots(out, result)
    print(report.markdown(result))
    bad = report.mismatches(result)
    if bad:
        print(f"spectax bench: greedy tokens differ from plain decoding for {', '.join(bad)}: a lossless method "
              f"changed the output", file=sys.stderr)
        return 1
    print(f"[spectax bench] wrote {out / 'bench.json'}, {out / 'bench.md'} and the plots", file=sys.stderr)
    return 0
