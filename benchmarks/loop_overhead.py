"""The decode loop's own overhead on SmolLM2-135M-Instruct (fp32, greedy), against spectax plain decoding.

Not a method benchmark (those are `spectax bench`): replay drafts, the plain greedy output replayed as a chain draft,
each token corrupted with probability p chosen for tau 2, 3, 4, 5, at batch 1 and batch 8: the loop's own overhead,
eta = speedup / tau. Also the bare target forward over T = 1 and k + 1 tokens (no verify / commit / draft), to split a
step's cost into the verification forward and the rest of the loop. The decode loop is timed from a prefilled state,
interleaved with plain decoding in one process. (Until 2026-12-03 this was the replay part of
benchmarks/speculative.py; its results are in results/speculative.json.)

Writes JSON (default benchmarks/results/loop_overhead.json). Run: python benchmarks/loop_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import spectax
from spectax import DraftTree
from spectax.cache import KVCache
from spectax.drafters import NoDraft, Replay
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
    ap.add_argument("--new", type=int, default=96, help="new tokens per row per measurement")
    ap.add_argument("--prompt-bucket", type=int, default=256, help="prompts are right-padded to this (<= it)")
    ap.add_argument("--taus", type=float, nargs="+", default=[2, 3, 4, 5])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spec-bench", type=Path, default=SPEC_BENCH)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loop_overhead.json")
    args = ap.parse_args(argv)

    model = spectax.load(MODEL)
    tok = hub.tokenizer(MODEL)
    questions = spec_bench_prompts(args.spec_bench)
    result = {"benchmark": "loop_overhead", "model": MODEL, "dtype": "float32", "sampling": "greedy",
              "machine": machine(), "replay": replay_part(model, tok, questions, args)}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
