"""Plain (non-speculative) decoding speed on SmolLM2-135M-Instruct, fp32, against the machine's bandwidth limit.

Measured in one process, interleaved, medians over repeats:
  * the machine's read bandwidth: a jitted sum over a 256 MB array and a 128 MB matrix-vector product; the faster
    of the two is the bandwidth the limits below use;
  * the physical limit of a step: the bytes it must read (every weight once, plus the used K/V of every row) over that
    bandwidth; each step is reported as a fraction of it;
  * the XLA-matmul floor: only the step's weight products (q|k|v, o, gate|up, down per layer + LM head) on one token,
    iterated inside a jitted lax.scan like the decode loop: no attention, norms, RoPE or sampling;
  * step time at a used context of ~128 and ~2048 tokens: the prompt is ctx - new/2 tokens of real text (Spec-Bench
    prompts), `--new` tokens are generated, so the mean context over the steps is ctx. Three ways: the decode loop
    alone (spectax.loop.run, the while_loop decode() runs) from a prefilled state; the same with the KV cache
    allocated 8x larger (cost must follow the used length, not the allocation); and what a user of `spectax.decode`
    gets: (time of decode(new + 1 tokens) - time of decode(1 token)) / new, prefill included in both, compile in
    neither, the same cache_size for both, at the default cache size and at 8x;
  * batch 8 at the short context: eight different prompts of the same length, one step for all (weights read once);
  * end to end `spectax.decode` (prefill + loop, compile excluded);
  * when torch + transformers (+ accelerate, for GGUF) are installed: transformers' greedy `generate` on the same
    GGUF, same prompt, same thread count, end to end (prefill included), interleaved with spectax end to end.

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
import numpy as np

import spectax
from spectax.api import bucket
from spectax.drafters import NoDraft
from spectax.io import hub
from spectax.io.tokenizer import from_gguf

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


def loop_only(model, prompts: list[list[int]], new: int, cache_scale: int = 1):
    """A callable running just the greedy decode loop from a prefilled state (the state is built once)."""
    program = LoopProgram(model, NoDraft(), prompts, new, bucket(max(map(len, prompts))), cache_scale)
    return lambda: program().n_out


def decode_step(model, prompt: list[int], new: int, cache_scale: int = 1):
    """Two callables, spectax.decode of new + 1 tokens and of 1 token, with the same cache size (`cache_scale` times
    the default): their time difference over `new` is the step a user of decode() gets."""
    size = cache_scale * (bucket(len(prompt)) + bucket(new + 1) + 1)
    run = lambda n: spectax.decode(model, [prompt], max_new_tokens=n, cache_size=size).tokens  # noqa: E731
    return (lambda: run(new + 1)), (lambda: run(1))


def read_bandwidth():
    """Two callables reading large arrays once: a sum over 256 MB and a 128 MB matrix-vector product (the matrix
    contracted on its minor dim, as the model's tied LM head is); with the bytes each reads."""
    flat = jnp.ones((64 * 2**20,), jnp.float32)
    matrix, vector = jnp.ones((16384, 2048), jnp.float32), jnp.ones((2048,), jnp.float32)
    total, matvec = jax.jit(jnp.sum), jax.jit(lambda m, v: m @ v)
    return {"reduction": (lambda: total(flat), flat.nbytes), "matvec": (lambda: matvec(matrix, vector), matrix.nbytes)}


def kv_bytes(model, context: int, batch: int) -> int:
    """The K/V bytes one step reads at a used context (every layer, key and value)."""
    c = model.config
    return 2 * c.num_layers * context * c.num_kv_heads * c.head_dim * model.dtype.itemsize * batch


def weights_floor(model, steps: int):
    """A jitted loop of `steps` iterations doing only the decode step's weight products on one token."""
    params, cfg = model.params, model.config

    def one(x, _):
        for i in range(cfg.num_layers):
            a, m = params[f"layers_{i}"]["attn"], params[f"layers_{i}"]["mlp"]
            qkv = jnp.einsum("d,dkjh->kjh", x, a["qkv"]["kernel"])
            q = qkv[:, :-2].reshape(-1)
            gate_up = jnp.einsum("d,dcf->cf", x, m["gate_up"]["kernel"])
            h = jax.nn.silu(gate_up[0]) * gate_up[1]
            x = jnp.tanh(q @ a["o"]["kernel"] + h @ m["down"]["kernel"] + qkv[:, -2:].sum())
        logits = params["embed"]["embedding"] @ x  # [V]: the tied head, table contracted on its minor dim
        return x + logits[0], None

    run = jax.jit(lambda x: jax.lax.scan(one, x, None, length=steps)[0])
    return lambda: run(jnp.ones((cfg.hidden_size,), model.dtype))


def hf_generate_rate(gguf_path: Path, prompt: list[int], new: int, threads: int, repeats: int,
                     ours) -> dict | None:
    """transformers' greedy `generate` on the same GGUF, prompt and thread count, end to end, interleaved repeat by
    repeat with `ours` (spectax end to end, a callable returning the tokens); None without torch + transformers."""
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    torch.set_num_threads(threads)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                              dtype=torch.float32)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt])
    generate = lambda: hf.generate(ids, do_sample=False, max_new_tokens=new, min_new_tokens=new)  # noqa: E731
    times, our_times = [], []
    with torch.inference_mode():
        hf.generate(ids, do_sample=False, max_new_tokens=8)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            out = generate()
            times.append(time.perf_counter() - t)
            our_times.append(timed(ours)[0])
    assert out.shape[1] == len(prompt) + new
    hf_rate, our_rate = new / statistics.median(times), new / statistics.median(our_times)
    return {"median_s": statistics.median(times), "tokens_per_s": hf_rate, "threads": threads,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "spectax_end_to_end_tokens_per_s": our_rate, "speedup_spectax_end_to_end": our_rate / hf_rate,
            "same_tokens_as_spectax": out[0, len(prompt):].tolist() == np.asarray(ours()[0]).tolist()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 2048])
    ap.add_argument("--new", type=int, default=128, help="tokens generated per measurement")
    ap.add_argument("--batch", type=int, default=8, help="the batched measurement's rows (at the shortest context)")
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
    short = min(args.contexts)

    prompts = {ctx: prompt_of_length(tok, long_questions if ctx > 512 else questions, ctx - args.new // 2)
               for ctx in args.contexts}
    batch_prompts = [prompt_of_length(tok, questions[i:], short - args.new // 2) for i in range(args.batch)]
    reads = read_bandwidth()
    runs = {"weights_floor": weights_floor(model, args.new),
            **{f"bandwidth_{name}": fn for name, (fn, _) in reads.items()},
            f"batch{args.batch}_loop": loop_only(model, batch_prompts, args.new)}
    for ctx, prompt in prompts.items():
        long_run, one_token = decode_step(model, prompt, args.new)
        long_x8, one_x8 = decode_step(model, prompt, args.new, cache_scale=8)
        runs.update({f"{ctx}_decode_new_plus_1_cache_x8": long_x8, f"{ctx}_decode_1_cache_x8": one_x8,f"{ctx}_loop": loop_only(model, [prompt], args.new),
                     f"{ctx}_loop_cache_x8": loop_only(model, [prompt], args.new, cache_scale=8),
                     f"{ctx}_decode_new_plus_1": long_run, f"{ctx}_decode_1": one_token,
                     f"{ctx}_decode": lambda p=prompt: spectax.decode(model, [p], max_new_tokens=args.new).tokens})
    for fn in runs.values():
        timed(fn)  # compile, and a first run whose tail the next timing must not pay for

    samples = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved: every measurement sees the same machine state
        for name, fn in runs.items():
            samples[name].append(timed(fn)[0])
    med = {name: statistics.median(v) for name, v in samples.items()}

    bandwidth = {name: nbytes / med[f"bandwidth_{name}"] for name, (_, nbytes) in reads.items()}  # bytes / s
    limit_bw = max(bandwidth.values())
    weight_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(model.params))
    floor_step = med["weights_floor"] / args.new
    result = {
        "benchmark": "plain_decode", "model": MODEL, "dtype": "float32", "new_tokens": args.new,
        "machine": machine(), "repeats": args.repeats,
        "read_bandwidth_GBps": {name: bw / 1e9 for name, bw in bandwidth.items()},
        "weight_bytes": weight_bytes,
        "weights_limit_ms": 1e3 * weight_bytes / limit_bw,
        "xla_matmul_floor_ms_per_step": 1e3 * floor_step, "contexts": {},
    }
    for ctx in args.contexts:
        step = med[f"{ctx}_loop"] / (args.new - 1)  # the loop makes new - 1 target calls (the prefill made the first)
        limit = (weight_bytes + kv_bytes(model, ctx, 1)) / limit_bw
        result["contexts"][str(ctx)] = {
            "prompt_tokens": len(prompts[ctx]), "step_ms": 1e3 * step, "decode_tokens_per_s": 1 / step,
            "step_ms_cache_allocated_x8": 1e3 * med[f"{ctx}_loop_cache_x8"] / (args.new - 1),
            "step_ms_through_decode": 1e3 * (med[f"{ctx}_decode_new_plus_1"] - med[f"{ctx}_decode_1"]) / args.new,
            "step_ms_through_decode_cache_allocated_x8":
                1e3 * (med[f"{ctx}_decode_new_plus_1_cache_x8"] - med[f"{ctx}_decode_1_cache_x8"]) / args.new,
            "limit_ms": 1e3 * limit, "fraction_of_bandwidth_limit": limit / step,
            "fraction_of_xla_matmul_floor": floor_step / step,
            "end_to_end_s": med[f"{ctx}_decode"], "end_to_end_tokens_per_s": args.new / med[f"{ctx}_decode"],
        }
    step_b = med[f"batch{args.batch}_loop"] / (args.new - 1)
    limit_b = (weight_bytes + kv_bytes(model, short, args.batch)) / limit_bw
    result[f"batch{args.batch}"] = {
        "context": short, "step_ms": 1e3 * step_b, "tokens_per_s": args.batch / step_b, "limit_ms": 1e3 * limit_b,
        "fraction_of_bandwidth_limit": limit_b / step_b,
        "step_over_batch1_step": step_b / (med[f"{short}_loop"] / (args.new - 1))}
    if len(args.contexts) >= 2:
        lo, hi = str(min(args.contexts)), str(max(args.contexts))
        result["step_ratio_long_over_short"] = result["contexts"][hi]["step_ms"] / result["contexts"][lo]["step_ms"]

    write_result(args.out, result)   # kept whatever the comparison below does
    if not args.no_hf:
        hf = hf_generate_rate(gguf_path, prompts[short], args.new, threads=os.cpu_count(), repeats=args.repeats,
                              ours=runs[f"{short}_decode"])
        if hf is not None:
            result["transformers"] = {"context": short, **hf}
            write_result(args.out, result)


if __name__ == "__main__":
    main()
