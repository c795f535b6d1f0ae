"""Speculative decoding speed on SmolLM2-135M-Instruct (fp32, greedy), against spectax plain decoding.

Two parts, each measured in one process with plain decoding interleaved, the decode loop (spectax.loop.run, the
jitted while_loop decode() runs) timed from a prefilled state:
  (a) draft model: drafts made of the target's own layers (with its final norm and tied head, no training): its
      first `--draft-layers` layers, and all its layers but one. Each as a DraftModel with a chain, a k-ary tree and
      the Sequoia-optimal tree (DraftTree.optimal) for the per-rank acceptance the k-ary tree measured; over
      `--prompts` Spec-Bench prompts spread over the categories, batch 1. Reports tau, acceptance per depth,
      tokens/s and speedup.
  (b) replay drafts: the plain greedy output replayed as a chain draft, each token corrupted with probability p
      chosen for tau 2, 3, 4, 5, at batch 1 and batch 8: the loop's own overhead, eta = speedup / tau. Also the bare
      target forward over T = 1 and k + 1 tokens (no verify / commit / draft), to split a step's cost into the
      verification forward and the rest of the loop.

Writes JSON (default benchmarks/results/speculative.json). Run: python benchmarks/speculative.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import spectax
from spectax import DraftTree
from spectax.cache import KVCache
from spectax.drafters import DraftModel, NoDraft, Replay
from spectax.io import hub
from spectax.models import Model

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, SPEC_BENCH, LoopProgram, machine, spec_bench_prompts, timed, write_result  # noqa: E402


def forward_floor(model: Model, batch: int, context: int, T: int, steps: int):
    """A callable timing `steps` bare target forwards over T tokens per row at a used context of `context` (no draft,
    verify or commit): the part of a speculative step that is the verification forward itself."""
    size = context + T + 1
    mask = jnp.tril(jnp.ones((T, T), bool))
    lengths = jnp.full((batch,), context, jnp.int32)
    positions = context + jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (batch, T))

    @jax.jit
    def run_floor(model, kv):
        def one(kv, _):
            out = model.forward(jnp.ones((batch, T), jnp.int32), positions, kv, lengths, mask)
            return out.kv, out.logits_BTV[0, 0, 0]
        return jax.lax.scan(one, kv, None, length=steps)[1]

    kv = KVCache.create(model.config, batch, size, model.dtype).layers
    return lambda: run_floor(model, kv)


def layer_subset(model: Model, layers: list[int]) -> Model:
    """A draft made of some of the target's layers (with its final norm and tied head), no training needed."""
    config = dataclasses.replace(model.config, num_layers=len(layers))
    params = {k: v for k, v in model.params.items() if not k.startswith("layers_")}
    params.update({f"layers_{i}": model.params[f"layers_{layer}"] for i, layer in enumerate(layers)})
    return Model(config=config, params=params)


def chat_prompts(tok, questions, n: int, max_tokens: int) -> list[dict]:
    """n chat-formatted first turns spread evenly over the Spec-Bench file (so over its categories)."""
    picked = []
    for i in np.linspace(0, len(questions) - 1, 4 * n).astype(int):
        ids = tok.encode(tok.chat([{"role": "user", "content": questions[i]["turns"][0]}]))
        if len(ids) <= max_tokens and len(picked) < n:
            picked.append({"question_id": questions[i]["question_id"], "category": questions[i]["category"],
                           "ids": ids})
    return picked


def loop_tokens(out) -> int:
    return int(np.sum(np.asarray(out.n_out) - 1))   # the loop's tokens (the prefill made each row's first)


def draft_model_part(model, tok, questions, args) -> dict:
    """Part (a): SmolLM2 target; drafts made of its own layers; chain / k-ary / optimal trees; batch 1."""
    L = model.config.num_layers
    drafts = {f"first{args.draft_layers}": layer_subset(model, list(range(args.draft_layers))),
              f"skip_layer{L // 2}": layer_subset(model, [i for i in range(L) if i != L // 2])}
    prompts = chat_prompts(tok, questions, args.prompts, args.prompt_bucket)
    trees = {"chain": DraftTree.chain(args.chain), "kary": DraftTree.kary(tuple(args.kary))}
    result = {"drafts": {"first%d" % args.draft_layers: f"the target's first {args.draft_layers} of {L} layers",
                         f"skip_layer{L // 2}": f"the target without layer {L // 2}"},
              "prompts": [{k: p[k] for k in ("question_id", "category")} | {"tokens": len(p["ids"])}
                          for p in prompts], "new_tokens": args.new, "configs": {}}

    def measure(drafters: dict) -> dict:
        """Per prompt, every drafter in turn (interleaved): loop seconds, loop tokens, summed stats."""
        totals = {name: {"s": 0.0, "tokens": 0, "stats": None} for name in drafters}
        for p in prompts:
            for name, drafter in drafters.items():
                program = LoopProgram(model, drafter, [p["ids"]], args.new, args.prompt_bucket)
                program()  # compile (once per drafter) / warm
                s, out = timed(program)
                totals[name]["s"] += s
                totals[name]["tokens"] += loop_tokens(out)
                # the prompts' counters summed: one DecodeStats over all of them (batch-1 shapes are equal)
                prev = totals[name]["stats"]
                totals[name]["stats"] = out.stats if prev is None else jax.tree.map(jnp.add, prev, out.stats)
        return totals

    drafters = {"plain": NoDraft()}
    drafters.update({f"{d}/{t}": DraftModel(draft, tree=tree) for d, draft in drafts.items()
                     for t, tree in trees.items()})
    measured = measure(drafters)
    for d, draft in drafts.items():   # Sequoia: the optimal tree for the per-rank acceptance the k-ary tree measured
        acceptance = measured[f"{d}/kary"]["stats"].rank_acceptance
        optimal = DraftTree.optimal(acceptance, budget=trees["kary"].num_nodes, max_depth=args.optimal_depth)
        result.setdefault("measured_rank_acceptance", {})[d] = acceptance.tolist()
        if optimal.num_nodes:
            drafters[f"{d}/optimal"] = DraftModel(draft, tree=optimal)
            measured.update(measure({f"{d}/optimal": drafters[f"{d}/optimal"]}))
    plain_rate = measured["plain"]["tokens"] / measured["plain"]["s"]
    result["plain_tokens_per_s"] = plain_rate
    for name, m in measured.items():
        if name == "plain":
            continue
        tree, stats, rate = drafters[name].tree, m["stats"], m["tokens"] / m["s"]
        result["configs"][name] = {
            "tree_parents": list(tree.parents), "nodes": tree.num_nodes, "depth": tree.max_depth,
            "tau": stats.tau, "acceptance_per_depth": stats.acceptance_per_depth.tolist(),
            "tokens_per_s": rate, "speedup": rate / plain_rate, "eta": rate / plain_rate / stats.tau}
    return result


def replay_corruption(tau: float, k: int) -> float:
    """The corruption p at which a k-chain's expected tau = sum_{i<=k} (1 - p)^i is `tau`, by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        a = (lo + hi) / 2
        lo, hi = (a, hi) if sum(a ** i for i in range(k + 1)) < tau else (lo, a)
    return 1 - (lo + hi) / 2


def replay_part(model, tok, questions, args) -> dict:
    """Part (b): replayed greedy output as a chain draft at chosen tau, batch 1 and 8, interleaved repeats."""
    prompts = [p["ids"] for p in chat_prompts(tok, questions, max(args.batches), args.prompt_bucket)]
    result = {"new_tokens": args.new, "repeats": args.repeats, "batches": {}}
    for batch in args.batches:
        rows = prompts[:batch]
        plain = LoopProgram(model, NoDraft(), rows, args.new, args.prompt_bucket)
        reference = np.asarray(spectax.decode(model, rows, max_new_tokens=args.new + 8).tokens)
        programs = {"plain": plain}
        for tau in args.taus:
            k = int(round(tau))
            p = replay_corruption(tau, k) if tau < k + 1 else 0.0
            drafter = Replay.create(reference, p, DraftTree.chain(k))
            programs[f"tau{tau:g}"] = LoopProgram(model, drafter, rows, args.new, args.prompt_bucket)
        for program in programs.values():
            program()   # compile
            program()   # the first run after compiling is slow on this machine
        times = {name: [] for name in programs}
        outs = {}
        for _ in range(args.repeats):
            for name, program in programs.items():
                s, outs[name] = timed(program)
                times[name].append(s)
        context = int(np.mean([len(r) for r in rows])) + args.new // 2
        floors = {T: forward_floor(model, batch, context, T, 32) for T in sorted({1, *[int(round(t)) + 1
                                                                                     for t in args.taus]})}
        floor_ms = {}
        for T, floor in floors.items():
            floor(), floor()
            floor_ms[T] = 1e3 * statistics.median(timed(floor)[0] for _ in range(args.repeats)) / 32
        plain_rate = loop_tokens(outs["plain"]) / statistics.median(times["plain"])
        entry = {"plain_tokens_per_s": plain_rate, "plain_step_ms": 1e3 * statistics.median(times["plain"]) /
                 int(outs["plain"].stats.target_calls), "forward_only_ms_by_tokens": floor_ms, "configs": {}}
        for name in programs:
            if name == "plain":
                continue
            tau = outs[name].stats.tau
            rate = loop_tokens(outs[name]) / statistics.median(times[name])
            entry["configs"][name] = {
                "chain": programs[name].drafter.tree.num_nodes, "corrupt": float(programs[name].drafter.corrupt),
                "tau": tau, "tokens_per_s": rate, "speedup": rate / plain_rate, "eta": rate / plain_rate / tau,
                "step_ms": 1e3 * statistics.median(times[name]) / int(outs[name].stats.target_calls),
                "forward_only_ms": floor_ms[programs[name].drafter.tree.num_nodes + 1],
                "same_tokens_as_plain": bool((np.asarray(outs[name].tokens) == np.asarray(outs["plain"].tokens)).all())}
        result["batches"][str(batch)] = entry
    if len(args.batches) >= 2:
        lo, hi = str(min(args.batches)), str(max(args.batches))
        result["speedup_ratio_batch_hi_over_lo"] = {
            name: result["batches"][hi]["configs"][name]["speedup"] / result["batches"][lo]["configs"][name]["speedup"]
            for name in result["batches"][lo]["configs"]}
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["replay", "draft"], choices=["replay", "draft"])
    ap.add_argument("--new", type=int, default=96, help="new tokens per row per measurement")
    ap.add_argument("--prompt-bucket", type=int, default=256, help="prompts are right-padded to this (<= it)")
    ap.add_argument("--prompts", type=int, default=6, help="Spec-Bench prompts for the draft-model part")
    ap.add_argument("--draft-layers", type=int, default=4)
    ap.add_argument("--chain", type=int, default=3)
    ap.add_argument("--kary", type=int, nargs="+", default=[3, 2, 1])
    ap.add_argument("--optimal-depth", type=int, default=5)
    ap.add_argument("--taus", type=float, nargs="+", default=[2, 3, 4, 5])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spec-bench", type=Path, default=SPEC_BENCH)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speculative.json")
    args = ap.parse_args(argv)

    model = spectax.load(MODEL)
    tok = hub.tokenizer(MODEL)
    questions = spec_bench_prompts(args.spec_bench)
    result = {"benchmark": "speculative", "model": MODEL, "dtype": "float32", "sampling": "greedy",
              "machine": machine()}
    if args.out.is_file():   # a run of some parts keeps the other parts' last results
        result = json.loads(args.out.read_text()) | result
    if "replay" in args.parts:
        result["replay"] = replay_part(model, tok, questions, args)
    if "draft" in args.parts:
        result["draft_model"] = draft_model_part(model, tok, questions, args)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
