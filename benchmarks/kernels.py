"""Tree-attention kernels against the XLA reference, and decoding a 1B-class Llama with each, on this backend.

Attention: T new tokens in {1, 8, 32, 64} over a used cache of {512, 2K, 8K, 32K} slots, batch {1, 8}, 32 query
heads over 8 kv heads (GQA 4:1), head_dim {64, 128}, bf16. Each call reads every used K/V byte once: achieved
bandwidth = those bytes / time, reported against the device's bandwidth (a jitted sum over 1 GiB, measured here).
Decoding: a Llama-3.2-1B-shaped model (random bf16 weights), 128-token prompt, `--new` tokens, plain and with a
random 2-layer draft model on a (2, 2) tree (its acceptance is near 0: the point is the step's cost with T = 7),
attn_impl = the backend's kernel vs "xla"; step time against the bandwidth limit (weight bytes / bandwidth).
Medians over `--repeats`, kernel and XLA interleaved in one process, compile excluded.

The kernel is the backend's ("pallas_gpu" on GPU, "pallas_tpu" on TPU). On CPU there is no kernel to time: `--smoke`
runs the whole script at toy sizes with the kernels interpreted (a check that it works, not a measurement).
Writes JSON (default benchmarks/results/kernels_<backend>.json; --smoke: the temp dir's kernels_smoke.json). Run: python benchmarks/kernels.py
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import spectax
from pallas_kernels.tree_attention import AttnImpl, resolve_impl, tree_attention
from spectax import DraftTree
from spectax.drafters import DraftModel
from spectax.models import Model, ModelConfig

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, timed, write_result  # noqa: E402

LLAMA_1B = ModelConfig(arch="llama", vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32,
                       num_kv_heads=8, head_dim=64, intermediate_size=8192, max_position=4096, tie_embeddings=True,
                       rope_theta=500000.0)
TOY = ModelConfig(arch="llama", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=1,
                  head_dim=16, intermediate_size=128, max_position=512, tie_embeddings=True)


def device_bandwidth(nbytes: int, repeats: int) -> float:
    """Bytes/s of a jitted sum over `nbytes` of float32 (median of `repeats`)."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    timed(lambda: total(x))
    return nbytes / statistics.median(timed(lambda: total(x))[0] for _ in range(repeats))


def attention_case(impl: AttnImpl, B: int, T: int, L: int, H: int, K: int, D: int, repeats: int) -> float:
    """Median seconds of one tree-attention call: T new tokens (a chain) over L used slots per row."""
    rng = np.random.default_rng(0)
    dt = jnp.bfloat16
    q = jnp.asarray(rng.normal(size=(B, T, H, D)), dt)
    k_new, v_new = (jnp.asarray(rng.normal(size=(B, T, K, D)), dt) for _ in range(2))
    k_cache, v_cache = (jnp.asarray(rng.normal(size=(B, K, L + T, D)), dt) for _ in range(2))
    lengths, mask = jnp.full((B,), L, jnp.int32), jnp.tril(jnp.ones((T, T), bool))
    fn = jax.jit(lambda *a: tree_attention(*a, impl=impl.impl, interpret=impl.interpret,
                                           block_sizes=impl.block_sizes))
    args = (q, k_new, v_new, k_cache, v_cache, lengths, mask)
    timed(lambda: fn(*args))
    return statistics.median(timed(lambda: fn(*args))[0] for _ in range(repeats))


def decode_seconds(model, drafter, impl, new: int, prompt_len: int, repeats: int) -> tuple[float, float]:
    """(median seconds per target call, tau) of `spectax.decode` over `new` tokens after a `prompt_len` prompt,
    prefill excluded: (t(new + 1 tokens) - t(1 token, the prefill's)) / the loop's target calls."""
    prompt = [list(np.random.default_rng(1).integers(0, model.config.vocab_size, prompt_len))]
    size = prompt_len + new + 64
    run = lambda n: spectax.decode(model, prompt, n, drafter=drafter, attn_impl=impl, cache_size=size)
    for n in (1, new + 1):
        timed(lambda: run(n).tokens)
    stats = run(new + 1).stats
    calls = int(stats.target_calls)
    per = [(timed(lambda: run(new + 1).tokens)[0] - timed(lambda: run(1).tokens)[0]) / calls
           for _ in range(repeats)]
    return statistics.median(per), stats.tau


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--smoke", action="store_true", help="toy sizes, kernels interpreted (CPU): checks the script")
    args = ap.parse_args(argv)
    backend = jax.default_backend()
    if args.smoke:
        kernel = AttnImpl("pallas_tpu" if backend == "tpu" else "pallas_gpu", interpret=backend == "cpu")
        Ts, Ls, Bs, Ds, model_cfg, heads = (1, 8), (64,), (1,), (64,), TOY, (4, 1)
        args.repeats, args.new = 2, 8
    else:
        if backend not in ("gpu", "tpu"):
            raise SystemExit(f"no tree-attention kernel runs on {backend!r} (use --smoke to check the script)")
        kernel = AttnImpl(resolve_impl("auto"))
        Ts, Ls, Bs, Ds, model_cfg, heads = (1, 8, 32, 64), (512, 2048, 8192, 32768), (1, 8), (64, 128), LLAMA_1B, \
            (32, 8)
    xla = AttnImpl("xla")
    bandwidth = device_bandwidth(2**24 if args.smoke else 2**30, args.repeats)
    H, K = heads

    rows = []
    for D in Ds:
        for B in Bs:
            for L in Ls:
                for T in Ts:
                    t_x = attention_case(xla, B, T, L, H, K, D, args.repeats)
                    t_k = attention_case(kernel, B, T, L, H, K, D, args.repeats)
                    kv = 2 * B * K * L * D * 2
                    rows.append({"head_dim": D, "batch": B, "cache_len": L, "T": T, "xla_us": t_x * 1e6,
                                 "kernel_us": t_k * 1e6, "speedup": t_x / t_k, "kernel_gbps": kv / t_k / 1e9,
                                 "kernel_frac_of_bandwidth": kv / t_k / bandwidth,
                                 "xla_frac_of_bandwidth": kv / t_x / bandwidth})
                    print(rows[-1], flush=True)

    model = Model.random(model_cfg, seed=0, dtype=jnp.bfloat16, scale=0.5)
    draft = Model.random(dataclasses.replace(model_cfg, num_layers=2), seed=1, dtype=jnp.bfloat16, scale=0.5)
    weight_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(model.params))
    limit_s = weight_bytes / bandwidth
    e2e = {}
    for name, drafter in (("plain", None), ("draft_tree_2x2", DraftModel(draft, tree=DraftTree.kary((2, 2))))):
        for label, impl in (("xla", xla), ("kernel", kernel)):
            step, tau = decode_seconds(model, drafter, impl, args.new, 128, args.repeats)
            e2e[f"{name}/{label}"] = {"step_ms": step * 1e3, "tau": tau, "tokens_per_s": tau / step,
                                      "frac_of_bandwidth_limit": limit_s / step}
            print(name, label, e2e[f"{name}/{label}"], flush=True)

    result = {"machine": machine(), "device": str(jax.devices()[0]), "kernel": dataclasses.asdict(kernel),
              "smoke": args.smoke, "bandwidth_gbps": bandwidth / 1e9, "gqa": f"{H}:{K}", "dtype": "bfloat16",
              "attention": rows, "decode": {"model": dataclasses.asdict(model_cfg), "weight_bytes": weight_bytes,
                                            "limit_ms": limit_s * 1e3, "new_tokens": args.new, "results": e2e}}
    default = (Path(tempfile.gettempdir()) / "kernels_smoke.json" if args.smoke
               else Path(__file__).parent / "results" / f"kernels_{backend}.json")
    write_result(args.out or default, result)


if __name__ == "__main__":
    main()
