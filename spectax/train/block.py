"""Training a block drafter (spectax.drafters.Block) by self-distillation, the target frozen.

Data: the feature shards of `spectax.train.distill features` (the target's own greedy answers, and the outputs of
the drafter's target layers at every position). A training example is an anchor: a response position p whose token
is the block's root, the context its features at positions < p, and labels tokens p + 1 .. p + k (masked past the
answer's end or outside the draft vocabulary). Each step takes `batch` sequences and `anchors` anchors in each; the
anchors of a sequence share its context K/V, and the block forward is the decoder's own (`block_logits`), each
anchor a row of the context with its own length. Loss: cross-entropy at the k positions, weighted by
exp(-(j - 1) / decay) at position j (early positions matter most: a miss there ends the accepted run).

Start: random weights (init_params). The shared loop (spectax.train.fit) makes a resumed run bit-exact with an
uninterrupted one.

    python -m spectax.train.distill features --data /work/data/d640 --layers 1 14 28
    spectax train block --data /work/data/d640 --out checkpoints/smollm2-135m-instruct/block
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectax.drafters.block import (
    Block,
    BlockConfig,
    block_inputs,
    fused_context,
    init_params,
    input_embedding,
    layer_module,
    rms_norm,
)
from spectax.drafters.heads import head_table
from spectax.train import cli_common
from spectax.train.distill import examples_once, features_dir, token_frequencies
from spectax.train.fit import FitConfig, batch_rows, fit
from spectax.train.heads import draft_vocabulary, to_draft_index
from spectax.tree import DraftTree


@dataclasses.dataclass(frozen=True)
class TrainConfig(FitConfig):
    """Everything that shapes a run (written next to its checkpoints); the optimiser fields are FitConfig's."""

    block_size: int = 8
    num_layers: int = 1
    target_layers: tuple[int, ...] = (1, 14, 28)
    draft_vocab: int = 4096
    steps: int = 1500
    batch: int = 4                 # sequences per step
    anchors: int = 32              # anchors per sequence
    decay: float = 4.0             # position weight exp(-(j - 1) / decay)
    checkpoint_every: int = 100


@dataclasses.dataclass
class BlockData:
    """X sequences padded to one width W: tokens_XW int32, features_XWLpE float16 (the L' target layers' outputs,
    width E), length_X, prompt_len_X."""

    tokens_XW: np.ndarray
    features_XWLpE: np.ndarray
    length_X: np.ndarray
    prompt_len_X: np.ndarray
    layers: tuple[int, ...]


def load_data(data_dirs, split: str, layers: tuple[int, ...], width_multiple: int = 64) -> BlockData:
    """Every example of the feature shards of `split` in `data_dirs` (one directory or several of the same prompt
    list: an example whose prompt index was already loaded is skipped)."""
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    seqs, feats, prompt_len = [], [], []
    for path, shard, e in examples_once([features_dir(d, layers) / split for d in dirs]):
        if tuple(shard["layers"]) != tuple(layers):
            raise ValueError(f"{path} holds features of layers {tuple(shard['layers'])}, not {layers}")
        o = shard["offsets"]
        seqs.append(shard["tokens"][o[e]:o[e + 1]])
        feats.append(shard["features_NLD"][o[e]:o[e + 1]])
        prompt_len.append(int(shard["prompt_len"][e]))
    if not seqs:
        raise ValueError(f"no feature shards for layers {layers} in {dirs} "
                         f"(run `python -m spectax.train.distill features`)")
    W = -(-max(map(len, seqs)) // width_multiple) * width_multiple
    Lp, E = feats[0].shape[1:]
    tokens, features = np.zeros((len(seqs), W), np.int32), np.zeros((len(seqs), W, Lp, E), np.float16)
    for e, (s, f) in enumerate(zip(seqs, feats)):
        tokens[e, :len(s)], features[e, :len(s)] = s, f
    return BlockData(tokens_XW=tokens, features_XWLpE=features, length_X=np.array([len(s) for s in seqs]),
                     prompt_len_X=np.asarray(prompt_len), layers=tuple(layers))


def anchors_for(data: BlockData, rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """int32 [len(rows), count]: root positions p in [prompt_len, length - 2] of each row (drawn uniformly)."""
    lo, hi = data.prompt_len_X[rows], data.length_X[rows] - 2
    return (lo[:, None] + np.floor(rng.random((len(rows), count)) * np.maximum(hi - lo + 1, 1)[:, None])
            ).astype(np.int32)


def block_labels(tokens_XW: np.ndarray, length_X: np.ndarray, anchors_XA: np.ndarray, depth: int) -> np.ndarray:
    """int32 [X, A, D] (D = depth): tokens p + 1 .. p + D after each anchor p, -1 past the sequence's end."""
    idx = anchors_XA[..., None] + 1 + np.arange(depth)
    rows = np.arange(len(tokens_XW))[:, None, None]
    return np.where(idx < length_X[:, None, None], tokens_XW[rows, np.minimum(idx, tokens_XW.shape[1] - 1)], -1)


def anchor_logits(config: BlockConfig, params, embed_VE, table_VpE, tokens_XW, features_XWLpE, anchors_XA):
    """float32 [X, A, D, V']: the block forward at A anchors of each of X sequences, in one differentiable pass:
    the decoder's computation (`block_logits` over a context cache) with the context as extra rows of the same
    layer call. Each layer sees [context c_0..c_W-1 ; every anchor's block]; context rows attend only to themselves
    (their keys and values are exactly the cached context entries, their outputs are dropped), and the rows of
    anchor p's block attend to context rows < p and to their own block."""
    c, D = config.layer, config.block_size
    X, W = tokens_XW.shape
    A = anchors_XA.shape[1]
    ctx = fused_context(config, params, features_XWLpE)                                        # [X, W, E]
    roots = jnp.take_along_axis(tokens_XW, anchors_XA, axis=1)                                # [X, A]
    last = jnp.take_along_axis(ctx, (anchors_XA - 1)[:, :, None], axis=1)                     # [X, A, E]
    x = block_inputs(params, embed_VE[roots], last).reshape(X, A * (1 + D), c.hidden_size)
    block_pos = (anchors_XA[:, :, None] + jnp.arange(1 + D, dtype=jnp.int32)).reshape(X, A * (1 + D))
    positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(W, dtype=jnp.int32), (X, W)), block_pos], axis=1)
    anchor_of = jnp.repeat(jnp.arange(A), 1 + D)                                              # [A (1 + D)]
    sees_ctx = jnp.arange(W)[None, None, :] < jnp.repeat(anchors_XA, 1 + D, axis=1)[:, :, None]
    sees_block = jnp.broadcast_to(anchor_of[:, None] == anchor_of[None, :], (X,) + (A * (1 + D),) * 2)
    mask = jnp.concatenate([
        jnp.concatenate([jnp.broadcast_to(jnp.eye(W, dtype=bool), (X, W, W)),
                         jnp.zeros((X, W, A * (1 + D)), bool)], axis=2),
        jnp.concatenate([sees_ctx, sees_block], axis=2)], axis=1)                             # [X, T, T]
    zero = jnp.zeros((X,), jnp.int32)
    for i in range(c.num_layers):
        out, _ = layer_module(config).apply({"params": params[f"layers_{i}"]}, jnp.concatenate([ctx, x], axis=1),
                                            positions, None, zero, mask)
        x = out[:, W:]
    h = rms_norm(x.reshape(X, A, 1 + D, c.hidden_size)[:, :, 1:], params["final_norm"], c.norm_eps)
    return jnp.einsum("xade,ve->xadv", h, table_VpE.astype(jnp.float32))


def loss_fn(params, config: BlockConfig, decay: float, embed_VE, table_VpE, tokens_XW, features_XWLpE, anchors_XA,
            target_XAD):
    """Position-weighted mean cross-entropy over the unmasked labels (target: draft-vocabulary indices, -1 masked)."""
    logits = anchor_logits(config, params, embed_VE, table_VpE, tokens_XW, features_XWLpE, anchors_XA)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(target_XAD, 0))
    w = jnp.where(target_XAD >= 0, jnp.exp(-jnp.arange(config.block_size) / decay), 0.0)
    return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-9)


def train(target, data: BlockData, vocab_ids: np.ndarray, cfg: TrainConfig, ckpt_dir, log=print,
          progress: bool = True, stop_at: int | None = None) -> Block:
    """Trains a block drafter for `target` on `data`; resumes from the newest checkpoint in `ckpt_dir` if any.
    Returns it with a chain of block_size (pick a tree with block.replace(tree=...))."""
    config = BlockConfig.for_target(target.config, cfg.block_size, cfg.num_layers, cfg.target_layers)
    if data.layers != config.target_layers:
        raise ValueError(f"data holds features of layers {data.layers}, the config asks for {config.target_layers}")
    embed = jnp.asarray(input_embedding(target), jnp.float32)
    table = jnp.asarray(head_table(target), jnp.float32)[jnp.asarray(vocab_ids)]

    def batch(step):
        rows = batch_rows(len(data.length_X), cfg, step)
        anchors = anchors_for(data, rows, cfg.anchors, np.random.default_rng((cfg.seed, step, 1)))
        labels = block_labels(data.tokens_XW[rows], data.length_X[rows], anchors, cfg.block_size)
        W = min(-(-int(data.length_X[rows].max()) // 128) * 128, data.tokens_XW.shape[1])   # a few shapes, less padding
        return (embed, table, jnp.asarray(data.tokens_XW[rows, :W]), jnp.asarray(data.features_XWLpE[rows, :W]),
                jnp.asarray(anchors), jnp.asarray(to_draft_index(labels, vocab_ids, target.config.vocab_size)))

    params = fit(init_params(config, cfg.seed), lambda p, *b: loss_fn(p, config, cfg.decay, *b), batch, cfg,
                 ckpt_dir, "train block", log, progress, stop_at)
    return Block(config=config, params=params, vocab_ids=jnp.asarray(vocab_ids, jnp.int32),
                 tree=DraftTree.chain(cfg.block_size))


def evaluate(block: Block, target, data: BlockData, top: int = 5, anchors: int = 16, seed: int = 1,
             batch: int = 8) -> np.ndarray:
    """float [D, M] (M = top): per block position, the fraction of held-out anchors whose label (the target's own token,
    full vocabulary) is among the drafter's top-j candidates, j = 1..top (labels outside V' count as misses)."""
    embed = jnp.asarray(input_embedding(target), jnp.float32)
    table = jnp.asarray(head_table(target), jnp.float32)[block.vocab_ids]
    D = block.config.block_size
    topk = jax.jit(lambda *a: jax.lax.top_k(anchor_logits(block.config, block.params, embed, table, *a), top)[1])
    rng = np.random.default_rng(seed)
    hits, counts, ids = np.zeros((D, top)), np.zeros(D), np.asarray(block.vocab_ids)
    for i in range(0, len(data.length_X), batch):
        rows = np.arange(i, min(i + batch, len(data.length_X)))
        rows = np.concatenate([rows, np.full(batch - len(rows), rows[0])])      # one compiled shape
        real = np.arange(batch) < min(batch, len(data.length_X) - i)
        a = anchors_for(data, rows, anchors, rng)
        labels = block_labels(data.tokens_XW[rows], data.length_X[rows], a, D)                   # [X, A, D]
        cand = ids[np.asarray(topk(jnp.asarray(data.tokens_XW[rows]), jnp.asarray(data.features_XWLpE[rows]),
                                   jnp.asarray(a)))]                                          # [X, A, D, M]
        h, c = cli_common.top_k_hits(cand, labels, (labels >= 0) & real[:, None, None], axis=(0, 1))
        hits, counts = hits + h, counts + c
    return hits / np.maximum(counts, 1)[:, None]


def write_readme(path: Path, cfg: TrainConfig, command: str, data_note: str, seconds: float, acc_DM: np.ndarray,
                 coverage: float, n_train: int) -> None:
    """The shipped checkpoint's README: command, data, time, machine, per-position accuracy."""
    table = cli_common.accuracy_table("position", [f"{j + 1} (token p+{j + 1})" for j in range(len(acc_DM))], acc_DM)
    path.write_text(f"""# Block drafter for SmolLM2-135M-Instruct

Load with `spectax.drafters.Block.load(path)`; decode with `spectax.decode(model, prompts, drafter=block)`.

- {cfg.num_layers} draft layer(s) of the target's width, block of {cfg.block_size} mask slots, context from the
  target's layers {list(cfg.target_layers)} (fused).
- Command: `{command}`
- Data: {data_note} ({n_train} training sequences).
- Draft vocabulary: the {cfg.draft_vocab} most frequent response tokens of the training split; they cover
  {coverage:.1%} of the held-out response tokens.
- Training: {cfg.steps} steps of {cfg.batch} sequences x {cfg.anchors} anchors x {cfg.block_size} positions, loss
  weight exp(-(j - 1) / {cfg.decay}) at position j, AdamW lr {cfg.lr} (warmup {cfg.warmup}, cosine), weight decay
  {cfg.weight_decay}, seed {cfg.seed}, random start; target frozen;
  {seconds / 60:.1f} min on {cli_common.machine_note()}.
- Held-out accuracy (the target's own greedy token, full vocabulary; top-j = the label is among the drafter's j
  best at that block position):

{table}
""")


def main(argv=None) -> None:
    """`spectax train block`: train, evaluate and save a block drafter (see the module docstring)."""
    prog = "spectax train block"
    args, cfg, target, dirs = cli_common.parse_and_load(
        argv, prog, "Train a block drafter by self-distillation.",
        "distill data dirs (train/, eval/ and their features-... dirs)", "drafter", TrainConfig)
    data = load_data(dirs, "train", cfg.target_layers)
    held_out = load_data(dirs[:1], "eval", cfg.target_layers)
    vocab_ids = draft_vocabulary(sum(token_frequencies(d / "train") for d in dirs), cfg.draft_vocab)
    response = np.concatenate([t[p:n] for t, p, n in zip(held_out.tokens_XW, held_out.prompt_len_X,
                                                          held_out.length_X)])
    coverage = float(np.isin(response, vocab_ids).mean())
    print(f"{len(data.length_X)} training sequences, {len(held_out.length_X)} held out; draft vocabulary "
          f"{cfg.draft_vocab} covers {coverage:.1%} of held-out tokens", flush=True)
    cli_common.train_evaluate_save(
        prog, argv, args,
        train=lambda ckpt_dir, stop_at: train(target, data, vocab_ids, cfg, ckpt_dir, stop_at=stop_at),
        evaluate=lambda block: evaluate(block, target, held_out),
        row_name=lambda j: f"position {j + 1}",
        write_readme=lambda path, command, seconds, acc: write_readme(path, cfg, command, args.data_note, seconds,
                                                                      acc, coverage, len(data.length_X)))
