"""Plain (non-speculative) decoding speed on SmolLM2-135M-Instruct, fp32, batch 1, against its weights floor.

Measured in one process, interleaved, medians over repeats:
  * step time at a used context of ~128 and ~2048 tokens: the prompt is ctx - new/2 tokens of real text (Spec-Bench
    prompts), `--new` tokens are generated, so the mean context over the steps is ctx. The decode loop
    (spectax.loop.run, the same jitted while_loop decode() runs) is timed on its own from a prefilled state;
  * the same step time with the KV cache allocated 8x larger (cost must follow the used length, not the allocation);
  * end to end `spectax.decode` (prefill + loop, compile excluded);
  * the weights floor: every weight matmul of one decode step (q, k, v, o, gate, up, down per layer + LM head) on one
    token, iterated inside a jitted lax.scan like the decode loop — no attention, norms, RoPE or sampling;
  * when torch + transformers are installed: transformers' greedy `generate` on the same GGUF, same prompt, same
    thread count, end to end (prefill included), against spectax end to end.

Writes JSON (default benchmarks/results/plain_decode.json). Run: python benchmarks/plain_decode.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import spectax
from spectax import hub
from spectax.api import bucket
from spectax.drafters import NoDraft
from spectax.tokenizer import from_gguf

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, SPEC_BENCH, LoopProgram, machine, spec_bench_prompts, timed, write_result  # noqa: E402

def prompt_of_length(tok, questions, n_tokens: int) -> list[int]:
    """Exactly n_tokens of chat-formatted real text: Spec-Bench first turns concatenated until long enough."""
    text, ids = "", []
    for q in questions:
        text += q["turns"][0] + "\n\n"
        ids = tok.encode(tok.chat([{"role": "user", "content": text}]))
        if len(ids) >= n_tokens:
            break
    if len(ids) < n_tokens:
        raise SystemExit(f"not enough prompt text for {n_tokens} tokens")
    return ids[-n_tokens:]


def loop_only(model, prompt: list[int], new: int, cache_scale: int = 1):
    """A callable running just the greedy decode loop from a prefilled state (the state is built once)."""
    program = LoopProgram(model, NoDraft(), [prompt], new, bucket(len(prompt)), cache_scale)
    return lambda: program().n_out


def weights_floor(model, steps: int):
    """A jitted loop of `steps` iterations doing only the decode step's weight matmuls on one token."""
    params, cfg = model.params, model.config

    def one(x, _):
        for i in range(cfg.num_layers):
            a, m = params[f"layers_{i}"]["attn"], params[f"layers_{i}"]["mlp"]
            q = x @ a["q"]["kernel"]
            kv = (x @ a["k"]["kernel"]).sum() + (x @ a["v"]["kernel"]).sum()
            h = jax.nn.silu(x @ m["gate"]["kernel"]) * (x @ m["up"]["kernel"])
            x = jnp.tanh(q @ a["o"]["kernel"] + h @ m["down"]["kernel"] + kv)
        table = params["embed"]["embedding"]
        logits = jax.lax.dot_general(table, x, (((1,), (1,)), ((), ())))  # [V, 1], as the model's tied head
        return x + logits[:1, 0], None

    run = jax.jit(lambda x: jax.lax.scan(one, x, None, length=steps)[0])
    return lambda: run(jnp.ones((1, cfg.hidden_size), model.dtype))


def hf_generate_rate(gguf_path: Path, prompt: list[int], new: int, threads: int, repeats: int) -> dict | None:
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    torch.set_num_threads(threads)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                              dtype=torch.float32)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt])
    times = []
    with torch.inference_mode():
        hf.generate(ids, do_sample=False, max_new_tokens=8)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            out = hf.generate(ids, do_sample=False, max_new_tokens=new, min_new_tokens=new)
            times.append(time.perf_counter() - t)
    assert out.shape[1] == len(prompt) + new
    import transformers
    return {"median_s": statistics.median(times), "tokens_per_s": new / statistics.median(times),
            "threads": threads, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokens": out[0, len(prompt):].tolist()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 2048])
    ap.add_argument("--new", type=int, default=128, help="tokens generated per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--spec-bench", type=Path, default=SPEC_BENCH)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "plain_decode.json")
    args = ap.parse_args(argv)

    model = spectax.load(MODEL)
    gguf_path = hub.resolve(MODEL)
    tok = from_gguf(gguf_path)
    questions = spec_bench_prompts(args.spec_bench)
    long_questions = sorted(questions, key=lambda q: -len(q["turns"][0]))
    floor = weights_floor(model, args.new)

    prompts = {ctx: prompt_of_length(tok, long_questions if ctx > 512 else questions, ctx - args.new // 2)
               for ctx in args.contexts}
    runs = {}
    for ctx, prompt in prompts.items():
        runs[ctx] = {"loop": loop_only(model, prompt, args.new),
                     "loop_cache_x8": loop_only(model, prompt, args.new, cache_scale=8),
                     "decode": lambda p=prompt: spectax.decode(model, [p], max_new_tokens=args.new).tokens}
        for fn in runs[ctx].values():
            fn()  # compile
    floor()

    samples = {ctx: {name: [] for name in runs[ctx]} for ctx in args.contexts}
    floor_s = []
    for _ in range(args.repeats):  # interleaved: every measurement sees the same machine state
        floor_s.append(timed(floor)[0])
        for ctx, fns in runs.items():
            for name, fn in fns.items():
                samples[ctx][name].append(timed(fn)[0])

    floor_step = statistics.median(floor_s) / args.new
    result = {
        "benchmark": "plain_decode", "model": MODEL, "dtype": "float32", "batch": 1, "new_tokens": args.new,
        "machine": machine(),
        "weights_floor_ms_per_step": 1e3 * floor_step, "contexts": {},
    }
    for ctx in args.contexts:
        med = {name: statistics.median(v) for name, v in samples[ctx].items()}
        step = med["loop"] / (args.new - 1)  # the loop makes new - 1 target calls (the prefill made the first)
        result["contexts"][str(ctx)] = {
            "prompt_tokens": len(prompts[ctx]), "step_ms": 1e3 * step, "decode_tokens_per_s": 1 / step,
            "step_ms_cache_allocated_x8": 1e3 * med["loop_cache_x8"] / (args.new - 1),
            "end_to_end_s": med["decode"], "end_to_end_tokens_per_s": args.new / med["decode"],
            "fraction_of_weights_floor": floor_step / step,
        }
    if len(args.contexts) >= 2:
        lo, hi = str(min(args.contexts)), str(max(args.contexts))
        result["step_ratio_long_over_short"] = result["contexts"][hi]["step_ms"] / result["contexts"][lo]["step_ms"]

    if not args.no_hf:
        ctx = min(args.contexts)
        hf = hf_generate_rate(gguf_path, prompts[ctx], args.new, threads=os.cpu_count(), repeats=3)
        if hf is not None:
            ours = spectax.decode(model, [prompts[ctx]], max_new_tokens=args.new).tokens[0].tolist()
            hf["same_tokens_as_spectax"] = hf.pop("tokens") == ours
            hf["context"] = ctx
            hf["speedup_spectax_end_to_end"] = result["contexts"][str(ctx)]["end_to_end_tokens_per_s"] / \
                hf["tokens_per_s"]
            result["transformers"] = hf

    write_result(args.out, result)


if __name__ == "__main__":
    main()
