"""Roofline lower bounds for one sharded decode step of an 8B Llama (Llama-3.1-8B shapes), tensor parallel over 8.

Prints the markdown tables of benchmarks/README.md: bytes each device reads, its FLOPs, the bytes its all-reduces
move; per machine the strict lower bound max(memory, compute, all-reduce bandwidth, all-reduce latency) and an
estimate that keeps the all-reduces on the critical path (as tensor parallelism does: each waits for its matmul,
the next matmul waits for it): max(memory, compute) + bandwidth + latency. Plain (T = 1) and tree-speculative
(T = 64 positions: root + 63 nodes) steps at batch 1 and 8, 2K context, bf16. Pure arithmetic: no JAX.
    python benchmarks/roofline.py
"""

from __future__ import annotations

import dataclasses

L, D, H, K, HD, F, V = 32, 4096, 32, 8, 128, 14336, 128256     # Llama-3.1-8B
BYTES = 2                                                       # bf16 weights, cache and activations
CONTEXT = 2048
SHARDS = 8                                                      # mesh (1, 8): tensor parallel over all 8 chips
TREE_TAU = 3.5                                                  # assumed new tokens per tree step (for tokens / s)


@dataclasses.dataclass(frozen=True)
class Machine:
    name: str
    hbm: float          # bytes/s per device
    flops: float        # dense bf16 FLOP/s per device
    link: float         # bytes/s per device available to one all-reduce (one direction)
    latency: float      # s per small all-reduce over the 8 devices (assumed)


MACHINES = (
    Machine("v5e-8", hbm=819e9, flops=197e12, link=200e9, latency=10e-6),
    Machine("8 x H100 SXM", hbm=3.35e12, flops=989e12, link=450e9, latency=8e-6),
)


def per_layer_params() -> int:
    attn = D * H * HD + 2 * D * K * HD + H * HD * D             # q, k, v, o
    return attn + 3 * D * F + 2 * D                              # gate, up, down, two norms


def step(batch: int, tokens: int) -> dict:
    """Per device, one verification forward over `tokens` = 1 + N positions per row (plain: 1)."""
    n = batch * tokens
    weights = L * per_layer_params() + D * V + D                 # layers, LM head, final norm (embedding: n rows)
    kv_read = batch * CONTEXT * L * 2 * K * HD * BYTES           # every row reads its 2K-token cache
    read = (weights * BYTES + kv_read) / SHARDS + n * D * BYTES  # + the n embedding rows
    flops = (2 * weights + L * 4 * H * HD * CONTEXT) * n / SHARDS
    all_reduces = 2 * L + 1                                      # attention out-proj, MLP down-proj, embedding
    collective = all_reduces * 2 * (SHARDS - 1) / SHARDS * n * D * BYTES   # ring all-reduce of [n, D] activations
    return dict(n=n, read=read, flops=flops, all_reduces=all_reduces, collective=collective,
                full_logits=n * V * 4)


def main() -> None:
    cases = [(1, 1), (8, 1), (1, 64), (8, 64)]
    print(f"params {L * per_layer_params() + 2 * D * V + D:,}; KV cache per token {L * 2 * K * HD * BYTES:,} bytes")
    print("\n| step | B x T | read / device | FLOP / device | all-reduce bytes / device | logits a gather would move |")
    print("|---|---|---|---|---|---|")
    for b, t in cases:
        s = step(b, t)
        print(f"| {'plain' if t == 1 else 'tree'} | {b} x {t} | {s['read'] / 1e9:.3f} GB | {s['flops'] / 1e9:.1f} G |"
              f" {s['collective'] / 1e6:.2f} MB ({s['all_reduces']} all-reduces) | {s['full_logits'] / 1e6:.2f} MB |")
    for m in MACHINES:
        print(f"\n{m.name}: HBM {m.hbm / 1e9:.0f} GB/s, {m.flops / 1e12:.0f} TFLOP/s, all-reduce link "
              f"{m.link / 1e9:.0f} GB/s, {m.latency * 1e6:.0f} us per all-reduce (assumed)\n")
        print("| step | B x T | memory | compute | all-reduce bandwidth | all-reduce latency | lower bound | "
              "estimate | new tokens / s at the estimate |")
        print("|---|---|---|---|---|---|---|---|---|")
        for b, t in cases:
            s = step(b, t)
            mem, comp, coll = s["read"] / m.hbm, s["flops"] / m.flops, s["collective"] / m.link
            lat = s["all_reduces"] * m.latency
            bound, estimate = max(mem, comp, coll, lat), max(mem, comp) + coll + lat
            tau = 1.0 if t == 1 else TREE_TAU
            print(f"| {'plain' if t == 1 else 'tree'} | {b} x {t} | {mem * 1e3:.2f} ms | {comp * 1e3:.2f} ms | "
                  f"{coll * 1e3:.2f} ms | {lat * 1e3:.2f} ms | {bound * 1e3:.2f} ms | {estimate * 1e3:.2f} ms | "
                  f"{b * tau / estimate:,.0f} (tau {tau}) |")


if __name__ == "__main__":
    main()
