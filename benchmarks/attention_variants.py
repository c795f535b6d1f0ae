"""Decode attention on XLA:CPU: the shipped block loop against the layouts tried for issue 13 (none kept).

Per decode step (T = 1, batch 1), SmolLM2-135M's attention shapes (30 layers, 3 kv heads x 3 query heads, head_dim 64)
over a random fp32 cache, each layer's new K/V written after (or, where noted, before) its attention, iterated in a
jitted fori_loop with the caches donated, as in the decode loop. No weight products: this isolates the attention.
  * blocks: the shipped path (`tree_attention_threaded`: online softmax over dynamic-slice blocks of one
    [B, G, S, hd] cache per layer, then the in-place write);
  * segments: each layer's cache split into separately allocated [B, G, seg, hd] arrays that dots read whole, one
    lax.switch per segment (dead: skip, live for every row: plain, partly live: masked); the write goes first, so the
    switches only read (a switch that returned its segments made XLA copy every segment twice);
  * token_major: a [B, S, G * hd] cache whose blocks are contiguous, scores and values as plain 2-D dots against a
    block-diagonal query matrix (3x the flops, none of the batched dots' transposes);
  * reduce: the block loop with the products written as multiply + reduce, so that the dynamic slice fuses into
    its consumer instead of being copied out before a dot.
Outputs are checked against the blocks path. Writes JSON (default benchmarks/results/attention_variants.json).
Run: python benchmarks/attention_variants.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pallas_kernels.tree_attention.folding import fold_queries, unfold_out
from pallas_kernels.tree_attention.reference import NEG, online_update, scores, tree_attention_threaded
from spectax.cache import write_block

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, timed, write_result  # noqa: E402

LAYERS, G, H, hd = 30, 3, 9, 64   # layers, kv heads, query heads, head dim
MASK = np.ones((1, 1), bool)


def blocks(q, kn, vn, kc, vc, lengths_B):
    out, kc, vc = tree_attention_threaded(q, kn, vn, kc, vc, lengths_B, MASK)
    return out, write_block(kc, kn, lengths_B), write_block(vc, vn, lengths_B)


def _new_token(carry, q_BGQhd, kn, vn):
    m, l, acc = online_update(carry, scores(q_BGQhd, kn.transpose(0, 2, 1, 3), hd ** -0.5), vn.transpose(0, 2, 1, 3))
    return unfold_out(acc / l[..., None], 1)


def _empty(B, Q):
    return jnp.full((B, G, Q), NEG, jnp.float32), jnp.zeros((B, G, Q), jnp.float32), jnp.zeros((B, G, Q, hd))


def segments(q, kn, vn, ksegs, vsegs, lengths_B):
    ksegs, vsegs = _write_segments(ksegs, kn, lengths_B), _write_segments(vsegs, vn, lengths_B)
    q_BGQhd = fold_queries(q, G)
    carry, start = _empty(q.shape[0], H // G), 0
    shortest, longest = jnp.min(lengths_B), jnp.max(lengths_B)
    for ks, vs in zip(ksegs, vsegs):
        n = ks.shape[2]

        def part(c, ks, vs, start=start, n=n):
            valid = (start + jnp.arange(n))[None, :] < lengths_B[:, None]
            vs = jnp.where(valid[:, None, :, None], vs, 0)
            return online_update(c, scores(q_BGQhd, ks, hd ** -0.5), vs, valid[:, None, None, :])

        branches = (lambda c, ks, vs: c, lambda c, ks, vs: online_update(c, scores(q_BGQhd, ks, hd ** -0.5), vs), part)
        carry = lax.switch(jnp.where(longest <= start, 0, jnp.where(shortest >= start + n, 1, 2)), branches,
                           carry, ks, vs)
        start += n
    return _new_token(carry, q_BGQhd, kn, vn), ksegs, vsegs


def _write_segments(segs, new, lengths_B):
    out, start = [], 0
    for s in segs:
        n = s.shape[2]
        inside_B = (lengths_B >= start) & (lengths_B < start + n)
        out.append(write_block(s, new, jnp.where(inside_B, lengths_B - start, n)))  # slot n and beyond: dropped
        start += s.shape[2]
    return tuple(out)


def token_major(q, kn, vn, kc, vc, lengths_B, block=256):
    """Batch 1: kc, vc [1, S, G * hd]."""
    heads = jnp.asarray(np.kron(np.eye(G), np.ones((H // G, hd))), jnp.float32)   # [H, G * hd]: own kv head's block
    qbd = jnp.tile(q.reshape(H, hd) * hd ** -0.5, (1, G)) * heads
    S, used = kc.shape[1], lengths_B[0]

    def body(i, c):
        (m, l, acc), kc, vc = c
        start = jnp.minimum(i * block, S - block)
        kb, vb = (lax.dynamic_slice_in_dim(a[0], start, block, 0) for a in (kc, vc))   # [block, G * hd]
        slots = start + jnp.arange(block)
        valid = (slots >= i * block) & (slots < used)
        s = jnp.where(valid[None], lax.dot_general(qbd, kb, (((1,), (1,)), ((), ()))), NEG)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.where(valid[None], jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        pv = (p @ jnp.where(valid[:, None], vb, 0.0)) * heads
        return lax.optimization_barrier(((m_new, alpha * l + p.sum(-1), alpha[:, None] * acc + pv), kc, vc))

    init = ((jnp.full((H,), NEG), jnp.zeros((H,)), jnp.zeros((H, G * hd))), kc, vc)
    (m, l, acc), kc, vc = lax.fori_loop(0, (used + block - 1) // block, body, init)
    kn_, vn_ = kn.reshape(G * hd), vn.reshape(G * hd)
    s = qbd @ kn_
    m_new = jnp.maximum(m, s)
    p, alpha = jnp.exp(s - m_new), jnp.exp(m - m_new)
    acc = alpha[:, None] * acc + p[:, None] * vn_[None] * heads
    out = (acc / (alpha * l + p)[:, None]).reshape(G, H // G, G, hd)
    out = jnp.stack([out[g, :, g] for g in range(G)]).reshape(1, 1, H, hd)
    write = lambda c, new: lax.dynamic_update_slice_in_dim(c, new.reshape(1, 1, G * hd), used, 1)  # noqa: E731
    return out, write(kc, kn), write(vc, vn)


def reduce(q, kn, vn, kc, vc, lengths_B, block=256):
    q_BGQhd = fold_queries(q, G) * hd ** -0.5
    B, S = q.shape[0], kc.shape[2]

    def body(i, c):
        (m, l, acc), kc, vc = c
        start = jnp.minimum(i * block, S - block)
        kb, vb = (lax.dynamic_slice_in_dim(a, start, block, axis=2) for a in (kc, vc))
        slots = start + jnp.arange(block)
        valid = (slots[None, :] >= i * block) & (slots[None, :] < lengths_B[:, None])      # [B, block]
        s = jnp.where(valid[:, None, None], (kb[:, :, None] * q_BGQhd[:, :, :, None]).sum(-1), NEG)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.where(valid[:, None, None], jnp.exp(s - m_new[..., None]), 0.0)
        alpha = jnp.exp(m - m_new)
        pv = (p[..., None] * jnp.where(valid[:, None, :, None], vb, 0.0)[:, :, None]).sum(-2)
        return lax.optimization_barrier(((m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + pv), kc, vc))

    (m, l, acc), kc, vc = lax.fori_loop(0, (jnp.max(lengths_B) + block - 1) // block, body,
                                        (_empty(B, H // G), kc, vc))
    out = _new_token((m, l, acc), q_BGQhd / hd ** -0.5, kn, vn)
    return out, write_block(kc, kn, lengths_B), write_block(vc, vn, lengths_B)


def program(attend, steps: int):
    """`steps` decode steps of LAYERS layers of `attend` (queries and new K/V derived from a running state)."""
    def run(ks, vs, lengths_B, x):
        def step(_, c):
            ks, vs, x = c
            new_k, new_v = [], []
            for j in range(LAYERS):
                q = x.reshape(1, 1, H, hd) * (1 + 0.01 * j)
                kn = x[:, :G * hd].reshape(1, 1, G, hd)
                vn = x[:, G * hd:2 * G * hd].reshape(1, 1, G, hd) + j
                out, kc, vc = attend(q, kn, vn, ks[j], vs[j], lengths_B)
                new_k.append(kc)
                new_v.append(vc)
                x = x + 0.01 * out.reshape(1, -1)[:, :x.shape[1]]
            return tuple(new_k), tuple(new_v), x
        return lax.fori_loop(0, steps, step, (ks, vs, x))
    return jax.jit(run, donate_argnums=(0, 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--used", type=int, nargs="+", default=[128, 2048], help="committed context lengths")
    ap.add_argument("--size", type=int, default=2304, help="allocated cache slots")
    ap.add_argument("--segment", type=int, default=256)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attention_variants.json")
    args = ap.parse_args(argv)
    if args.size % args.segment:
        raise SystemExit("--size must be a multiple of --segment")

    rng = np.random.default_rng(0)
    S = args.size
    cache = [rng.standard_normal((2, 1, G, S, hd)).astype(np.float32) for _ in range(LAYERS)]   # [k | v] per layer
    forms = {
        "blocks": (blocks, lambda a: jnp.asarray(a)),
        "segments": (segments, lambda a: tuple(jnp.asarray(a[:, :, i:i + args.segment])
                                               for i in range(0, S, args.segment))),
        "token_major": (token_major, lambda a: jnp.asarray(a.transpose(0, 2, 1, 3).reshape(1, S, G * hd))),
        "reduce": (reduce, lambda a: jnp.asarray(a)),
    }
    x = jnp.asarray(rng.standard_normal((1, H * hd)), jnp.float32)
    result = {"benchmark": "attention_variants", "machine": machine(), "cache_slots": S, "segment": args.segment,
              "layers": LAYERS, "steps": args.steps, "repeats": args.repeats, "step_ms": {}, "max_abs_diff": {}}
    for used in args.used:
        lengths = jnp.array([used], jnp.int32)
        state, runs = {}, {}
        for name, (attend, layout) in forms.items():
            state[name] = (tuple(layout(c[0]) for c in cache), tuple(layout(c[1]) for c in cache))
            fn = program(attend, args.steps)

            def run(name=name, fn=fn):
                ks, vs, out = fn(*state[name], lengths, x)
                state[name] = (ks, vs)
                return out
            runs[name] = run
        outs = {name: np.asarray(timed(run)[1]) for name, run in runs.items()}   # compile + first run
        samples = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                samples[name].append(timed(run)[0])
        result["step_ms"][str(used)] = {n: 1e3 * statistics.median(v) / args.steps for n, v in samples.items()}
        result["max_abs_diff"][str(used)] = {n: float(np.abs(o - outs["blocks"]).max()) for n, o in outs.items()}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
