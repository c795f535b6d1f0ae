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
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import spectax
from spectax import DraftTree
from spectax.drafters import Heads, NoDraft
from spectax.drafters.heads import head_logits, head_table
from spectax.io import hub

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, timed  # noqa: E402
from workload import add_tree_variants, load_workload, run_batches, verify_cost_curve, workload_arguments  # noqa: E402

PATHS = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 0, 0, 0)]   # a Medusa-style path list


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

    model, _, prompts, result = load_workload(args)
    previous = json.loads(args.reuse.read_text()) if args.reuse else {}
    curve = verify_cost_curve(model, previous, (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), result)

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


if __name__ == "__main__":
    main()
