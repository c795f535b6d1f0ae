"""Training proposal heads (spectax.drafters.Heads) by self-distillation, the target frozen.

Data: the hidden-state shards of `spectax.train.distill` (the target's own greedy answers and its final hidden
states on them). At a response position t the target's hidden state x_t predicts token t + 1 through the LM head;
head h (0-based) learns token t + 2 + h: cross-entropy over the draft vocabulary V' (positions whose label is past
the end of the answer or outside V' are masked out of the loss; they still count as misses in the evaluation).

Optimiser: optax AdamW, linear warmup then cosine decay. The batch order is a function of (seed, step) only, and
orbax checkpoints hold params + optimiser state + step, so a resumed run follows the same trajectory, bit for bit,
as an uninterrupted one.

    spectax train heads --data /work/data/distill --kind medusa --out checkpoints/smollm2-135m-instruct/medusa
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectax.drafters.heads import Heads, HeadsConfig, head_logits, head_table, init_params
from spectax.train import cli_common
from spectax.train.distill import examples_once, token_frequencies
from spectax.train.fit import FitConfig, batch_rows, fit
from spectax.tree import DraftTree


@dataclasses.dataclass(frozen=True)
class TrainConfig(FitConfig):
    """Everything that shapes a run (written next to its checkpoints); the optimiser fields are FitConfig's."""

    kind: str = "medusa"
    num_heads: int = 4
    draft_vocab: int = 8192       # V': the most frequent response tokens of the training split
    steps: int = 2000
    batch: int = 256              # positions per step
    checkpoint_every: int = 200


@dataclasses.dataclass
class HeadsData:
    """Training rows: hidden_XE float16 [X, E] and labels_XD int32 [X, D] (head d - 1's label, the token at depth d;
    -1 past the answer's end)."""

    hidden_XE: np.ndarray
    labels_XD: np.ndarray


def load_data(hidden_dirs, num_heads: int) -> HeadsData:
    """Every response position of every hidden shard in `hidden_dirs` (one directory or several, of the same prompt
    list: an example whose prompt index was already loaded is skipped), with the H labels its heads learn."""
    hidden, labels = [], []
    for _, shard, e in examples_once(hidden_dirs):
        seq = shard["tokens"][shard["offsets"][e]:shard["offsets"][e + 1]]
        rows = slice(shard["hidden_offsets"][e], shard["hidden_offsets"][e + 1])
        t = shard["prompt_len"][e] - 1 + np.arange(rows.stop - rows.start)              # positions of the rows
        idx = t[:, None] + 2 + np.arange(num_heads)[None, :]                            # [n, D] label positions
        labels.append(np.where(idx < len(seq), seq[np.minimum(idx, len(seq) - 1)], -1).astype(np.int32))
        hidden.append(shard["hidden_ND"][rows])
    if not hidden:
        raise ValueError(f"no hidden-state shards in {hidden_dirs} (run `python -m spectax.train.distill hidden`)")
    return HeadsData(hidden_XE=np.concatenate(hidden), labels_XD=np.concatenate(labels))


def draft_vocabulary(freqs_V: np.ndarray, size: int) -> np.ndarray:
    """int32 [size]: the `size` most frequent token ids (ties by id), sorted by id."""
    if not 1 <= size <= freqs_V.size:
        raise ValueError(f"draft vocabulary size must be in [1, {freqs_V.size}], got {size}")
    order = np.lexsort((np.arange(freqs_V.size), -freqs_V))
    return np.sort(order[:size]).astype(np.int32)


def to_draft_index(labels: np.ndarray, vocab_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """int32, the shape of `labels` (token ids, -1 masked): each label's index in the draft vocabulary V', -1 where
    masked (past the end, or not in V')."""
    index_V = np.full(vocab_size, -1, np.int32)
    index_V[vocab_ids] = np.arange(vocab_ids.size, dtype=np.int32)
    return np.where(labels >= 0, index_V[np.maximum(labels, 0)], -1)


def loss_fn(params, config: HeadsConfig, table_VpE, x_BE, target_BD):
    """Mean cross-entropy over the unmasked (row, head) pairs; target_BD: draft-vocabulary indices, -1 masked."""
    logits = head_logits(config, params, table_VpE, x_BE)                              # [B, D, V']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(target_BD, 0))
    valid = target_BD >= 0
    return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def train(target, data: HeadsData, vocab_ids: np.ndarray, cfg: TrainConfig, ckpt_dir, log=print,
          progress: bool = True, stop_at: int | None = None) -> Heads:
    """Trains heads for `target` on `data`; resumes from the newest checkpoint in `ckpt_dir` if there is one.
    `stop_at`: end this call after that step (checkpointed), e.g. to split a run over sessions.

    Returns the trained Heads (a chain of num_heads; pick a tree with heads.replace(tree=...))."""
    c = target.config
    config = HeadsConfig(kind=cfg.kind, num_heads=cfg.num_heads, hidden_size=c.hidden_size, vocab_size=c.vocab_size)
    if data.labels_XD.shape[1] != cfg.num_heads:
        raise ValueError(f"data has labels for {data.labels_XD.shape[1]} heads, config asks for {cfg.num_heads}")
    table = jnp.asarray(head_table(target))[jnp.asarray(vocab_ids)]
    target_XD = to_draft_index(data.labels_XD, vocab_ids, c.vocab_size)

    def batch(step):
        rows = batch_rows(len(target_XD), cfg, step)
        return table, jnp.asarray(data.hidden_XE[rows], jnp.float32), jnp.asarray(target_XD[rows])

    params = fit(init_params(config, cfg.seed), lambda p, *b: loss_fn(p, config, *b), batch, cfg, ckpt_dir,
                 f"train {cfg.kind}", log, progress, stop_at)
    return Heads(config=config, params=params, vocab_ids=jnp.asarray(vocab_ids, jnp.int32),
                 tree=DraftTree.chain(cfg.num_heads))


def evaluate(heads: Heads, target, data: HeadsData, top: int = 5, batch: int = 1024) -> np.ndarray:
    """float [D, M] (M = top): per head (depth), the fraction of held-out positions whose label (a full-vocabulary
    token id) is among the head's top-m candidates, m = 1..top (labels outside the draft vocabulary count as misses)."""
    table = jnp.asarray(head_table(target))[heads.vocab_ids]
    topk = jax.jit(lambda x: jax.lax.top_k(head_logits(heads.config, heads.params, table, x), top)[1])
    hits = np.zeros((heads.config.num_heads, top))
    counts = np.zeros(heads.config.num_heads)
    ids = np.asarray(heads.vocab_ids)
    for i in range(0, len(data.hidden_XE), batch):
        cand = ids[np.asarray(topk(jnp.asarray(data.hidden_XE[i:i + batch], jnp.float32)))]   # [b, D, M]
        labels = data.labels_XD[i:i + batch]
        h, c = cli_common.top_k_hits(cand, labels, labels >= 0, axis=0)
        hits, counts = hits + h, counts + c
    return hits / np.maximum(counts, 1)[:, None]


def write_readme(path: Path, cfg: TrainConfig, command: str, data_note: str, seconds: float, acc_DM: np.ndarray,
                 coverage: float) -> None:
    """The shipped checkpoint's README: command, data, time, machine, per-head accuracy."""
    table = cli_common.accuracy_table("head", [f"{h} (token t+{h + 2})" for h in range(len(acc_DM))], acc_DM)
    path.write_text(f"""# {cfg.kind} heads for SmolLM2-135M-Instruct

Load with `spectax.drafters.Heads.load(path)`; decode with `spectax.decode(model, prompts, drafter=heads)`.

- Command: `{command}`
- Data: {data_note}
- Draft vocabulary: the {cfg.draft_vocab} most frequent response tokens of the training split; they cover
  {coverage:.1%} of the held-out response tokens.
- Training: {cfg.steps} steps of {cfg.batch} positions, AdamW lr {cfg.lr} (warmup {cfg.warmup}, cosine),
  weight decay {cfg.weight_decay}, seed {cfg.seed}; target frozen; {seconds / 60:.1f} min on
  {cli_common.machine_note()}.
- Held-out accuracy (the target's own greedy token, full vocabulary; top-k = the label is among the head's k best):

{table}
""")


def main(argv=None) -> None:
    """`spectax train heads`: train, evaluate and save heads (see the module docstring)."""
    prog = "spectax train heads"
    args, cfg, target, dirs = cli_common.parse_and_load(
        argv, prog, "Train proposal heads by self-distillation.",
        "distill data dirs (each with hidden/train, hidden/eval and train/)", "heads", TrainConfig)
    data = load_data([d / "hidden" / "train" for d in dirs], cfg.num_heads)
    held_out = load_data([dirs[0] / "hidden" / "eval"], cfg.num_heads)
    vocab_ids = draft_vocabulary(sum(token_frequencies(d / "train") for d in dirs), cfg.draft_vocab)
    eval_tokens = held_out.labels_XD[:, 0][held_out.labels_XD[:, 0] >= 0]
    coverage = float(np.isin(eval_tokens, vocab_ids).mean())
    print(f"{len(data.hidden_XE)} training positions, {len(held_out.hidden_XE)} held out; draft vocabulary "
          f"{cfg.draft_vocab} covers {coverage:.1%} of held-out tokens", flush=True)
    cli_common.train_evaluate_save(
        prog, argv, args,
        train=lambda ckpt_dir, stop_at: train(target, data, vocab_ids, cfg, ckpt_dir, stop_at=stop_at),
        evaluate=lambda heads: evaluate(heads, target, held_out),
        row_name=lambda h: f"head {h} (token t+{h + 2})",
        write_readme=lambda path, command, seconds, acc: write_readme(path, cfg, command, args.data_note, seconds,
                                                                      acc, coverage))


def choose_gate(heads: Heads, target, data: HeadsData, cost, depth: int, batch: int = 512) -> tuple[float, dict]:
    """The Cerberus gate for a chain of `depth` heads: the entropy threshold (nats) that maximises the expected tokens
    per unit time over held-out positions, where a speculating position yields 1 + (its run of correct heads) tokens
    for cost[depth] and a gated one 1 token for 1. Returns (gate, {"rate", "rate_always", "open_fraction"}); the
    gate is 0.0 (closed but for certain positions) when speculating never pays."""
    full = jnp.asarray(head_table(target), jnp.float32)
    table = full[heads.vocab_ids]

    @jax.jit
    def score(x_BE):
        logp = jax.nn.log_softmax(x_BE @ full.T, axis=-1)
        ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        top1 = heads.vocab_ids[jnp.argmax(head_logits(heads.config, heads.params, table, x_BE), axis=-1)]
        return ent, top1

    ents, tops = [], []
    for i in range(0, len(data.hidden_XE), batch):
        e, t = score(jnp.asarray(data.hidden_XE[i:i + batch], jnp.float32))
        ents.append(np.asarray(e))
        tops.append(np.asarray(t))
    ent, top = np.concatenate(ents), np.concatenate(tops)
    right = (top[:, :depth] == data.labels_XD[:, :depth]) & (data.labels_XD[:, :depth] >= 0)
    tokens = 1 + np.cumprod(right, axis=1).sum(1)
    order = np.argsort(ent)
    n, c = len(ent), float(cost[depth])
    i = np.arange(n + 1)
    spec_tokens = np.concatenate([[0], np.cumsum(tokens[order])])
    rate = (spec_tokens + (n - i)) / (i * c + (n - i))
    best = int(np.argmax(rate))
    gate = float(ent[order[best - 1]]) if best else 0.0
    return gate, {"rate": float(rate[best]), "rate_always": float(rate[-1]), "open_fraction": best / n}
