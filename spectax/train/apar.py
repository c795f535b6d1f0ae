"""APAR fine-tuning: the target's own answers (the self-distillation shards), restructured by
`spectax.apar.format_answer`, teach a low-rank adapter and two new tokens ([Fork], [Child]) to fork.

    spectax train apar --data data/distill/v2/train --eval-data data/distill/v2/eval \\
        --out checkpoints/smollm2-135m-instruct/apar

Each answer gives its samples (the main stream, then one per child: the main stream up to the fork, [Fork][Child],
the child), each after the answer's chat-template prompt and ending with the model's end token. The loss is the
next-token cross-entropy over the answer for the main stream (and for an unstructured answer), over the child's
text only for a child sample. Training is the shared loop (`spectax.train.fit`: AdamW, warmup + cosine, a batch
order that is a function of (seed, step), resumable orbax checkpoints); the adapter is saved with
`spectax.io.loader.save_adapted`, so `spectax.load(OUT)` is the forking model.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from spectax.apar import CHILD, FORK, format_answer
from spectax.train.distill import examples_once, sequences
from spectax.train.fit import FitConfig, batch_rows, fit

TOKENS = (FORK, CHILD)


@dataclasses.dataclass(frozen=True)
class TrainConfig(FitConfig):
    steps: int = 2000
    batch: int = 4
    lr: float = 5e-4
    warmup: int = 50
    rank: int = 8
    scale: float = 1.0
    max_len: int = 512            # tokens per sample (prompt + answer), longer ones are cut
    checkpoint_every: int = 25


@dataclasses.dataclass
class Samples:
    """Training samples packed: tokens int32 [sum n], offsets [X + 1], loss_from int32 [X] (the first position whose
    token is a target), structured bool [X] (from an answer format_answer restructured)."""

    tokens: np.ndarray
    offsets: np.ndarray
    loss_from: np.ndarray
    structured: np.ndarray

    def __len__(self) -> int:
        return len(self.loss_from)

    def row(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def samples_of(prompt_ids, answer_text: str, tok, end_id: int, max_len: int) -> list[tuple[list[int], int]]:
    """(token ids, loss_from) of each training sample of one answer (see the module docstring)."""
    child_id = tok.token_to_id(CHILD)
    out = []
    for k, sample in enumerate(format_answer(answer_text)):
        ids = list(prompt_ids) + tok.encode(sample) + [end_id]
        loss_from = len(prompt_ids) if k == 0 else len(ids) - 1 - ids[::-1].index(child_id) + 1
        if loss_from < min(len(ids), max_len):
            out.append((ids[:max_len], loss_from))
    return out


def build(data_dirs, tok, end_id: int, max_len: int, progress: bool = True) -> Samples:
    """Every answer of the shards in `data_dirs` (each prompt once) as training samples; `tok` knows both tokens."""
    rows, loss_from, structured = [], [], []
    examples = list(examples_once(data_dirs))
    for _, shard, e in tqdm(examples, desc="apar samples", file=sys.stderr, disable=not progress):
        seq = sequences(shard)[e]
        p = int(shard["prompt_len"][e])
        answer = [int(t) for t in seq[p:] if int(t) != end_id]
        samples = samples_of(seq[:p], tok.decode(answer, skip_special_tokens=True), tok, end_id, max_len)
        for ids, start in samples:
            rows.append(np.asarray(ids, np.int32))
            loss_from.append(start)
            structured.append(len(samples) > 1)
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    return Samples(np.concatenate(rows), offsets, np.asarray(loss_from, np.int32), np.asarray(structured, bool))


def padded(samples: Samples, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens int32 [B, width] (0 after each row), lengths [B], loss_from [B] of the samples `rows`."""
    tokens = np.zeros((len(rows), width), np.int32)
    lengths = np.zeros(len(rows), np.int32)
    for i, r in enumerate(rows):
        seq = samples.row(int(r))[:width]
        tokens[i, :len(seq)], lengths[i] = seq, len(seq)
    return tokens, lengths, samples.loss_from[rows]


def width(samples: Samples, rows, max_len: int) -> int:
    """The padded width of a batch: the power of two >= its longest row (>= 64, <= max_len): a few programs, and
    no batch pays for the longest sample of the data (their mean is ~240 tokens, the cut 512)."""
    longest = int(max(samples.offsets[r + 1] - samples.offsets[r] for r in rows))
    return min(max_len, max(64, 1 << (longest - 1).bit_length()))


def loss_fn(base, apar_ids):
    """loss(adapter, tokens [B, W], lengths [B], loss_from [B]): the mean next-token cross-entropy over each row's
    positions loss_from .. length - 1 (targets) of the adapted model."""
    from spectax.models.adapter import merge

    def loss(adapter, tokens_BW, lengths_B, loss_from_B):
        logits = merge(base, adapter, apar_ids=apar_ids).logits(tokens_BW)[:, :-1]          # [B, W - 1, V]
        targets = tokens_BW[:, 1:]
        t = jnp.arange(1, tokens_BW.shape[1])[None, :]
        mask = (t >= loss_from_B[:, None]) & (t < lengths_B[:, None])
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
        return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1)

    return loss


def held_out_loss(base, adapter, apar_ids, samples: Samples, batch: int, max_len: int) -> float:
    """The loss over every sample of `samples` (token-weighted), in batches."""
    loss = jax.jit(loss_fn(base, apar_ids))
    total, count = 0.0, 0
    for i in range(0, len(samples), batch):
        rows = np.arange(i, min(i + batch, len(samples)))
        tokens, lengths, start = padded(samples, rows, width(samples, rows, max_len))
        n = int(np.sum(np.maximum(lengths - np.maximum(start, 1), 0)))
        total += float(loss(adapter, tokens, lengths, start)) * n
        count += n
    return total / max(count, 1)


def train(base, samples: Samples, cfg: TrainConfig, ckpt_dir, stop_at: int | None = None, progress: bool = True):
    """The adapter (rank cfg.rank, two new tokens) trained on `samples` for cfg.steps; resumes from ckpt_dir."""
    from spectax.models.adapter import Adapter

    v = base.config.vocab_size
    adapter = Adapter.init(base, new_tokens=len(TOKENS), rank=cfg.rank, seed=cfg.seed, scale=cfg.scale)

    def batch_fn(step):
        rows = batch_rows(len(samples), cfg, step)
        return padded(samples, rows, width(samples, rows, cfg.max_len))

    return fit(adapter, loss_fn(base, (v, v + 1)), batch_fn, cfg, ckpt_dir, "apar", progress=progress,
               stop_at=stop_at)


def main(argv: Sequence[str] | None = None) -> None:
    """`spectax train apar`: build the samples, train (resumable), report the held-out loss before and after,
    save the adapter with its training record."""
    from spectax.cli import use_compile_cache
    from spectax.io import hub
    from spectax.io.loader import load, save_adapted
    from spectax.models.adapter import Adapter
    from spectax.train.cli_common import config_from_args, training_parser

    prog = "spectax train apar"
    ap = training_parser(prog, "Fine-tune a low-rank APAR adapter (+ [Fork], [Child]) on the target's own answers, "
                               "restructured by spectax.apar.format_answer.",
                         "self-distillation shard directories (`spectax.train.distill generate`)", "adapter",
                         TrainConfig)
    ap.add_argument("--eval-data", nargs="+", required=True, help="held-out shard directories (the held-out loss)")
    args = ap.parse_args(argv)
    if args.model not in hub.REGISTRY:
        ap.error(f"--model must be a registered model (the adapter names its base), got {args.model!r}")
    use_compile_cache(args)
    cfg = config_from_args(TrainConfig, args)
    base = load(args.model)
    tok = hub.tokenizer(args.model).with_special_tokens(TOKENS)
    end_id, v = int(base.config.eos_ids[0]), base.config.vocab_size
    t0 = time.perf_counter()
    samples = build(args.data, tok, end_id, cfg.max_len)
    held_out = build(args.eval_data, tok, end_id, cfg.max_len)
    print(f"{len(samples)} training samples ({int(samples.structured.sum())} from restructured answers), "
          f"{len(held_out)} held out")
    adapter = train(base, samples, cfg, args.ckpt_dir or str(args.out).rstrip("/") + ".train", args.stop_at)
    seconds = time.perf_counter() - t0
    fresh = Adapter.init(base, new_tokens=len(TOKENS), rank=cfg.rank, seed=cfg.seed, scale=cfg.scale)
    losses = {name: held_out_loss(base, a, (v, v + 1), held_out, cfg.batch, cfg.max_len)
              for name, a in (("before", fresh), ("after", adapter))}
    print(f"held-out loss: {losses['before']:.4f} before, {losses['after']:.4f} after")
    info = {"command": f"{prog} " + shlex.join(list(argv) if argv is not None else sys.argv[1:]),
            "config": dataclasses.asdict(cfg), "samples": len(samples),
            "structured_samples": int(samples.structured.sum()), "held_out_samples": len(held_out),
            "held_out_loss": losses, "seconds": round(seconds, 1)}
    out = save_adapted(adapter, args.out, args.model, list(TOKENS), {"apar_ids": [v, v + 1]}, info, overwrite=True)
    print(f"saved {out}")
