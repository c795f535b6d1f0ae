"""Self-distillation data for drafter heads: the target's own greedy answers, then its hidden states on them.

A data directory (`generate` CLI) holds two splits, each a folder of shards:

    DIR/train/shard-00000.npz ...   greedy generations for the first N training prompts
    DIR/eval/shard-00000.npz ...    the held-out last 5% of the prompt list (`prompt_files.split_prompts`)
    DIR/hidden/{train,eval}/...     final hidden states on the response positions (`hidden` CLI)
    DIR/features-L1-L2../{train,eval}/... chosen layers' outputs at every position (`features` CLI; Block drafters)

A generation shard holds X examples (prompt + response, the response cut after its EOS):
    tokens int32 [sum n_e] (all examples concatenated), offsets int64 [X + 1] (example e is
    tokens[offsets[e]:offsets[e + 1]]), prompt_len int32 [X], prompt_index int32 [X] (row in the split's prompt
    list), prompt_id int64 [X] (`prompt_id`: the prompt's identity across lists), category str [X], vocab_size
    int64 []. Each split's manifest.json lists, one line per shard, its prompt indices, new tokens and seconds.
A hidden shard adds, for example e with prompt length p_e and total length n_e, the target's final hidden state
(after the final norm) at the n_e - p_e positions t = p_e - 1 .. n_e - 2, i.e. the positions whose next token is a
response token: hidden_ND float16 [sum (n_e - p_e), E] (an on-disk key older than the README's shape letters: rows
x width), hidden_offsets int64 [X + 1]. Row hidden_offsets[e] + j is position t = p_e - 1 + j of example e; the
label "token t + 1 + i" for a head i is tokens[offsets[e] + t + 1 + i].

Shards are written to a temporary name and then renamed, so a shard either exists whole or not at all; a rerun
skips the shards that exist, so an interrupted run resumes where it stopped.

    python -m spectax.train.distill generate --out /work/data/distill --n 2400
    python -m spectax.train.distill hidden --data /work/data/distill
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm import tqdm

from spectax.api import Decoder, eos_ids
from spectax.io import hub
from spectax.io.loader import load
from spectax.loop import DecodeState, Loop
from spectax.models import Model
from spectax.train.prompt_files import DEFAULT_OUT as DEFAULT_PROMPTS
from spectax.train.prompt_files import read_prompts, split_prompts

SHARD_SIZE = 256
LENGTH_MULTIPLE = 64  # hidden-state batches are padded to a multiple of this many tokens
SPLITS = ("eval", "train")


# ---------------------------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------------------------


def shard_path(directory, index: int) -> Path:
    return Path(directory) / f"shard-{index:05d}.npz"


def shard_paths(directory) -> list[Path]:
    """The finished shards of a directory, in order."""
    return sorted(Path(directory).glob("shard-*.npz"))


def _replace_atomic(path: Path, write) -> None:
    """write(binary file) into a temporary sibling, synced, then renamed onto `path`: readers never see it partial."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_atomic(path: Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> None:
    """np.savez (np.savez_compressed) to `path`, atomically."""
    _replace_atomic(path, lambda f: (np.savez_compressed if compressed else np.savez)(f, **arrays))


def write_atomic_text(path: Path, text: str) -> None:
    """A text file (UTF-8) written atomically."""
    _replace_atomic(path, lambda f: f.write(text.encode()))


def load_shard(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def examples_once(directories) -> Iterator[tuple[Path, dict[str, np.ndarray], int]]:
    """(shard path, shard, example index) for every example of the shards of `directories` (one or several), in
    order; an example whose prompt (prompt_id) was already met is skipped."""
    dirs = [directories] if isinstance(directories, (str, Path)) else list(directories)
    seen = set()
    for path in [p for d in dirs for p in shard_paths(d)]:
        shard = load_shard(path)
        for e in range(len(shard["prompt_len"])):
            if int(shard["prompt_id"][e]) not in seen:
                seen.add(int(shard["prompt_id"][e]))
                yield path, shard, e


def pack_examples(sequences: Sequence[np.ndarray], prompt_len: Sequence[int], **columns) -> dict[str, np.ndarray]:
    """Concatenates X token sequences into tokens int32 [sum n_e] + offsets int64 [X + 1] (+ per-example columns)."""
    offsets = np.zeros(len(sequences) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s in sequences])
    arrays = {"tokens": np.concatenate(sequences).astype(np.int32), "offsets": offsets,
              "prompt_len": np.asarray(prompt_len, np.int32)}
    arrays.update({k: np.asarray(v) for k, v in columns.items()})
    return arrays


def sequences(shard: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The shard's examples as a list of int32 token arrays [n_e] (prompt + response)."""
    o = shard["offsets"]
    return [shard["tokens"][o[e]:o[e + 1]] for e in range(len(o) - 1)]


# ---------------------------------------------------------------------------------------------------------------
# Generation: greedy decoding with refilled rows
# ---------------------------------------------------------------------------------------------------------------


def _loop(dec: Decoder, model, end_ids) -> Loop:
    return Loop(model=model, drafter=dec.drafter, spec=dec.spec, sampling=dec.sampling.params(),
                max_new=jnp.int32(dec.max_new_tokens), eos_ids=end_ids)


def _prompt_width(dec: Decoder, n: int) -> int:
    """The prefill width for prompts of up to n tokens: a multiple of 64 (of the prefill chunk past one chunk)."""
    chunk = dec.spec.prefill_chunk
    return _round_up(n, LENGTH_MULTIPLE) if n <= chunk else _round_up(n, chunk)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _empty_state(dec: Decoder, model, batch: int, end_ids) -> DecodeState:
    """A state of `batch` finished rows, each with room for a prompt of dec.max_prompt_len tokens."""
    P = _prompt_width(dec, dec.max_prompt_len)
    state = _loop(dec, model, end_ids).prefill(jnp.zeros((batch, P), jnp.int32), jnp.ones((batch,), jnp.int32),
                                               jax.random.split(jax.random.key(0), batch),
                                               model.create_cache(batch, dec.cache_size))
    return state.replace(done=jnp.ones((batch,), bool))


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=3)
def _steps(dec: Decoder, n_steps: int, model, state: DecodeState, end_ids) -> DecodeState:
    """n_steps plain greedy steps over every row (finished rows commit nothing)."""
    loop = _loop(dec, model, end_ids)
    return lax.fori_loop(0, n_steps, lambda _, s: loop.step(s), state)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _refill(dec: Decoder, model, state: DecodeState, prompt_MP, prompt_len_M, slot_M, end_ids) -> DecodeState:
    """Prefills M new right-padded prompts (int32 [M, P'], P' no wider than the state's prompts) and puts them in
    rows slot_M (int32 [M]; a slot >= B is dropped: the padding of a group smaller than M)."""
    M = prompt_MP.shape[0]
    new = _loop(dec, model, end_ids).prefill(prompt_MP, prompt_len_M, jax.random.split(jax.random.key(0), M),
                                             model.create_cache(M, dec.cache_size))
    pad = state.history.tokens_BW.shape[1] - new.history.tokens_BW.shape[1]
    new = new.replace(history=new.history.replace(
        tokens_BW=jnp.pad(new.history.tokens_BW, ((0, 0), (0, pad)), constant_values=-1)))
    put = lambda old, x: old.at[slot_M].set(x, mode="drop")   # noqa: E731
    return state.replace(**{f: jax.tree_util.tree_map(put, getattr(state, f), getattr(new, f))
                            for f in ("history", "prompt_len_B", "n_out", "done", "cache", "rng")})


def greedy_refilled(model: Model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id, batch: int = 32,
                    refill_rows: int = 4, chunk_steps: int = 32,
                    max_prompt_len: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Plain greedy answers to ragged token-id prompts, yielded as (prompt index, response int32 [n]) in the order
    they finish; each response is cut after its end token (kept) or at max_new_tokens.

    `batch` rows decode together; every `chunk_steps` steps the finished rows are handed out and refilled with the
    next prompts, `refill_rows` at a time (one prefill of that many rows, the prompt width rounded up), so a
    row that ends early does not idle until the longest answer of its batch ends. The answers equal plain greedy
    decoding of each prompt alone up to floating-point ties (the batch a row shares does not enter its math).
    max_prompt_len (default: the longest prompt's) sizes the rows' caches: calls with the same value share their
    compiled programs."""
    if not prompts:
        return
    if min(len(p) for p in prompts) < 1:
        raise ValueError("every prompt needs at least one token")
    for name, value in (("batch", batch), ("refill_rows", refill_rows), ("chunk_steps", chunk_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    dec = Decoder(model, max_new_tokens=max_new_tokens, eos_id=eos_id,
                  max_prompt_len=max_prompt_len or max(len(p) for p in prompts))
    end_ids = jnp.asarray(dec.eos_ids or (-1,), jnp.int32)
    queue = list(range(len(prompts)))[::-1]
    slot_prompt = [-1] * batch

    def refill(state, slots):
        group = [queue.pop() for _ in slots[:refill_rows] if queue]
        rows = slots[:len(group)]
        prompt_MP = np.zeros((refill_rows, _prompt_width(dec, max(len(prompts[i]) for i in group))), np.int32)
        prompt_len_M = np.ones(refill_rows, np.int32)
        slot_M = np.full(refill_rows, batch, np.int32)
        for m, (i, r) in enumerate(zip(group, rows)):
            prompt_MP[m, :len(prompts[i])], prompt_len_M[m], slot_M[m] = prompts[i], len(prompts[i]), r
            slot_prompt[r] = i
        return _refill(dec, model, state, prompt_MP, prompt_len_M, slot_M, end_ids)

    state = _empty_state(dec, model, batch, end_ids)
    while True:
        free = [r for r in range(batch) if slot_prompt[r] < 0]
        while free and queue:
            state = refill(state, free)
            free = [r for r in range(batch) if slot_prompt[r] < 0]
        if all(i < 0 for i in slot_prompt):
            return
        state = _steps(dec, chunk_steps, model, state, end_ids)
        done, n_out, start = (np.asarray(a) for a in (state.done, state.n_out, state.prompt_len_B))
        finished = [r for r in range(batch) if slot_prompt[r] >= 0 and done[r]]
        if finished:
            tokens_BW = np.asarray(state.history.tokens_BW)
            for r in finished:
                yield slot_prompt[r], tokens_BW[r, start[r]:start[r] + n_out[r]].astype(np.int32)
                slot_prompt[r] = -1


def _check_meta(out_dir: Path, meta: dict) -> None:
    """Records the run's settings in out_dir/meta.json; a rerun with other settings would mix data, so it fails."""
    path = out_dir / "meta.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != meta:
            raise ValueError(f"{out_dir} holds shards from a run with other settings ({old}, now {meta}); "
                             f"use another directory or delete it")
        return
    write_atomic_text(path, json.dumps(meta, indent=1))


def _prompts_digest(prompt_ids: Sequence[Sequence[int]]) -> str:
    h = hashlib.sha256()
    for ids in prompt_ids:
        h.update(np.asarray(ids, np.int32).tobytes() + b"|")
    return h.hexdigest()[:16]


def prompt_id(ids: Sequence[int]) -> int:
    """A prompt's identity across prompt lists: the first 8 bytes of the sha256 of its int32 token ids, as int64."""
    return int.from_bytes(hashlib.sha256(np.asarray(ids, np.int32).tobytes()).digest()[:8], "little", signed=True)


def _width_class(n: int) -> int:
    """The cache class of a prompt of n tokens: the power of two >= max(n, 128)."""
    return max(128, 1 << (n - 1).bit_length())


def _width_groups(lengths: Sequence[int], block: int) -> list[list[int]]:
    """Positions 0..len(lengths)-1 in blocks of `block` consecutive prompts, each block split by `_width_class`
    (narrow first): rows decode with caches sized for their class, and a run stopped early has covered the prompt
    list's order, not only its short prompts."""
    groups = []
    for start in range(0, len(lengths), block):
        by_class = {}
        for i in range(start, min(start + block, len(lengths))):
            by_class.setdefault(_width_class(lengths[i]), []).append(i)
        groups += [by_class[c] for c in sorted(by_class)]
    return groups


def generate_ids(model: Model, prompt_ids: Sequence[Sequence[int]], out_dir, eos_id, max_new_tokens: int = 160,
                 batch: int = 32, shard_size: int = SHARD_SIZE, categories: Sequence[str] | None = None,
                 refill_rows: int = 4, chunk_steps: int = 32) -> list[Path]:
    """Greedy generations for token-id prompts (`greedy_refilled`, blocks of 8 shards' prompts in order, each
    decoded by prompt-width class: `_width_groups`), written as resumable shards of `shard_size` examples in the
    order the answers finish; each records its prompts' indices in `prompt_ids` (prompt_index) and
    identities (prompt_id). out_dir/manifest.json lists, per shard, its prompt indices, new tokens and seconds.

    A rerun skips the prompts of the existing shards: an interrupted run loses at most the answers not yet in a
    shard. Returns the shard paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eos = list(eos_ids(eos_id, model.config.vocab_size))
    _check_meta(out_dir, {"n_prompts": len(prompt_ids), "prompts_sha256": _prompts_digest(prompt_ids),
                          "max_new_tokens": max_new_tokens, "shard_size": shard_size, "eos_id": eos})
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    done = {int(i) for p in shard_paths(out_dir) for i in load_shard(p)["prompt_index"]}
    todo = [i for i in range(len(prompt_ids)) if i not in done]
    bar = tqdm(total=len(prompt_ids), initial=len(done), unit="prompt", desc=out_dir.name, mininterval=30,
               file=sys.stderr)
    answers, start = [], time.perf_counter()

    def write_shard():
        nonlocal answers, start
        idx = np.asarray([i for i, _ in answers], np.int32)
        seqs = [np.concatenate([np.asarray(prompt_ids[i], np.int32), r]) for i, r in answers]
        cats = [categories[i] for i in idx] if categories is not None else [""] * len(idx)
        path = shard_path(out_dir, len(shard_paths(out_dir)))
        write_atomic(path, pack_examples(seqs, [len(prompt_ids[i]) for i in idx], prompt_index=idx,
                                         prompt_id=np.asarray([prompt_id(prompt_ids[i]) for i in idx], np.int64),
                                         category=cats, vocab_size=np.int64(model.config.vocab_size)),
                     compressed=True)
        n_new, seconds = sum(len(r) for _, r in answers), time.perf_counter() - start
        manifest[path.name] = {"prompts": idx.tolist(), "new_tokens": n_new, "seconds": round(seconds, 1)}
        write_atomic_text(manifest_path, "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}"
                                                           for k, v in manifest.items()) + "\n}\n")
        bar.write(f"{path}: {len(idx)} examples, {n_new} new tokens, {n_new / seconds:.1f} tok/s")
        answers, start = [], time.perf_counter()

    for group in _width_groups([len(prompt_ids[i]) for i in todo], block=8 * shard_size):
        width = _width_class(max(len(prompt_ids[todo[g]]) for g in group))
        for j, response in greedy_refilled(model, [prompt_ids[todo[g]] for g in group], max_new_tokens, eos, batch,
                                           refill_rows, chunk_steps, max_prompt_len=width):
            answers.append((todo[group[j]], response))
            bar.update(1)
            if len(answers) == shard_size:
                write_shard()
    if answers:
        write_shard()
    bar.close()
    return shard_paths(out_dir)


def encode_prompts(tok, prompts: Sequence[dict]) -> list[list[int]]:
    """Each `{"text": ...}` prompt as a one-turn user conversation in the chat template."""
    return [tok.encode_chat([{"role": "user", "content": p["text"]}]) for p in prompts]


def generate(model: Model, tok, prompts: Sequence[dict], out_dir, max_new_tokens: int = 160, batch: int = 32,
             shard_size: int = SHARD_SIZE) -> list[Path]:
    """Greedy self-distillation of `{"category", "text"}` chat prompts into shards in out_dir (see generate_ids)."""
    return generate_ids(model, encode_prompts(tok, prompts), out_dir, model.config.eos_ids, max_new_tokens, batch,
                        shard_size, categories=[p.get("category", "") for p in prompts])


# ---------------------------------------------------------------------------------------------------------------
# Hidden states
# ---------------------------------------------------------------------------------------------------------------


@jax.jit
def final_hidden(model: Model, tokens_BT):
    """Causal forward without a cache: int32 [B, T] -> float16 hidden [B, T, E] after the final norm.

    The LM head runs on one dummy position per row (logits_at_BI), so the [B, T, V] logits never exist.
    """
    B, T = tokens_BT.shape
    positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    mask_TT = jnp.tril(jnp.ones((T, T), bool))
    out = model.forward(tokens_BT, positions_BT, None, jnp.zeros((B,), jnp.int32), mask_TT,
                        logits_at_BI=jnp.zeros((B, 1), jnp.int32))
    return out.hidden_BTE.astype(jnp.float16)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def per_example(shard: dict[str, np.ndarray], forward, batch: int = 8,
                length_multiple: int = LENGTH_MULTIPLE) -> list[np.ndarray]:
    """forward(int32 [batch, T]) -> [batch, T, ...] run over a generation shard's examples; returns per example its
    rows [n_e, ...]. Examples are batched in length order, right-padded to a multiple of `length_multiple` tokens
    (causal, so the padding never reaches a real position), and every batch is filled up to `batch` rows."""
    seqs = sequences(shard)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = [None] * len(seqs)
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        tokens_BT = np.zeros((batch, _round_up(max(len(seqs[e]) for e in idx), length_multiple)), np.int32)
        for row, e in enumerate(idx):
            tokens_BT[row, :len(seqs[e])] = seqs[e]
        values = np.asarray(forward(tokens_BT))
        for row, e in enumerate(idx):
            out[e] = values[row, :len(seqs[e])]
    return out


def response_hidden(model: Model, shard: dict[str, np.ndarray], batch: int = 8) -> dict[str, np.ndarray]:
    """hidden_ND float16 [sum (n_e - p_e), E] and hidden_offsets int64 [X + 1] for a generation shard."""
    rows = per_example(shard, lambda t: final_hidden(model, t), batch)
    prompt_len = shard["prompt_len"]
    hidden_offsets = np.zeros(len(rows) + 1, np.int64)
    hidden_offsets[1:] = np.cumsum([len(r) - p for r, p in zip(rows, prompt_len)])
    return {"hidden_ND": np.concatenate([r[p - 1:len(r) - 1] for r, p in zip(rows, prompt_len)]),
            "hidden_offsets": hidden_offsets}


def cache_shards(shards_dir, out_dir, desc: str, compute) -> list[Path]:
    """For every generation shard in shards_dir, writes out_dir/<same name> with its arrays plus compute(shard)'s;
    existing output shards are skipped. Returns the output paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = shard_paths(shards_dir)
    for path in tqdm(paths, desc=f"{desc} {Path(shards_dir).name}", unit="shard", file=sys.stderr):
        target = out_dir / path.name
        if not target.exists():
            shard = load_shard(path)
            write_atomic(target, {**shard, **compute(shard)})
    return [out_dir / p.name for p in paths]


def cache_hidden(model: Model, shards_dir, out_dir, batch: int = 8) -> list[Path]:
    """Each generation shard of shards_dir plus its response hidden states (see the module docstring)."""
    return cache_shards(shards_dir, out_dir, "hidden", lambda shard: response_hidden(model, shard, batch))


@functools.partial(jax.jit, static_argnums=2)
def layer_features(model: Model, tokens_BT, layers: tuple[int, ...]):
    """Causal forward without a cache: int32 [B, T] -> float16 [B, T, L', E], the residual stream after each of
    `layers` (what a Block drafter reads); the LM head runs on one dummy position per row."""
    B, T = tokens_BT.shape
    positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    mask_TT = jnp.tril(jnp.ones((T, T), bool))
    out = model.forward(tokens_BT, positions_BT, None, jnp.zeros((B,), jnp.int32), mask_TT,
                        logits_at_BI=jnp.zeros((B, 1), jnp.int32), features_at=layers)
    return out.features_BTLpE.astype(jnp.float16)


def cache_features(model: Model, shards_dir, out_dir, layers: tuple[int, ...], batch: int = 8) -> list[Path]:
    """Each generation shard of shards_dir plus features_NLD float16 [sum n_e, L', E], the outputs of `layers` at
    every position (in the shard's token order), and layers int32 [L']."""
    def compute(shard):
        rows = per_example(shard, lambda t: layer_features(model, t, layers), batch)
        return {"features_NLD": np.concatenate(rows), "layers": np.asarray(layers, np.int32)}
    return cache_shards(shards_dir, out_dir, "features", compute)


def features_dir(data, layers: tuple[int, ...]) -> Path:
    """Where `features` caches a data directory's features for `layers`: DATA/features-1-14-28."""
    return Path(data) / ("features-" + "-".join(str(i) for i in layers))


def token_frequencies(shards_dir) -> np.ndarray:
    """int64 [V]: how often each token id occurs in the responses (EOS included) of a directory's shards."""
    counts = None
    for path in shard_paths(shards_dir):
        shard = load_shard(path)
        if counts is None:
            counts = np.zeros(int(shard["vocab_size"]), np.int64)
        for seq, p in zip(sequences(shard), shard["prompt_len"]):
            counts += np.bincount(seq[p:], minlength=len(counts))
    if counts is None:
        raise ValueError(f"no shards in {shards_dir}")
    return counts


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def _model_and_tokenizer(name: str):
    return load(name), hub.tokenizer(name)


def _generate_cli(args) -> None:
    train, held_out = split_prompts(read_prompts(args.prompts), args.eval_fraction)
    model, tok = _model_and_tokenizer(args.model)
    for split, prompts in (("eval", held_out), ("train", train[:args.n])):
        print(f"{split}: {len(prompts)} prompts -> {Path(args.out) / split}", flush=True)
        generate(model, tok, prompts, Path(args.out) / split, args.max_new_tokens, args.batch, args.shard_size)


def _hidden_cli(args) -> None:
    model, _ = _model_and_tokenizer(args.model)
    for split in SPLITS:
        cache_hidden(model, Path(args.data) / split, Path(args.data) / "hidden" / split, args.batch)


def _features_cli(args) -> None:
    model, _ = _model_and_tokenizer(args.model)
    layers = tuple(args.layers)
    for split in SPLITS:
        if (Path(args.data) / split).is_dir():
            cache_features(model, Path(args.data) / split, features_dir(args.data, layers) / split, layers, args.batch)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="greedy generations for the training prompts (eval split included)")
    gen.add_argument("--out", required=True, help="data directory (gets train/ and eval/)")
    gen.add_argument("--n", type=int, default=None, help="training prompts to use (default: all)")
    gen.add_argument("--prompts", default=str(DEFAULT_PROMPTS))
    gen.add_argument("--eval-fraction", type=float, default=0.05)
    gen.add_argument("--max-new-tokens", type=int, default=160)
    gen.add_argument("--batch", type=int, default=32)
    gen.add_argument("--shard-size", type=int, default=SHARD_SIZE)
    hid = sub.add_parser("hidden", help="cache the target's hidden states on the responses of a data directory")
    hid.add_argument("--data", required=True)
    hid.add_argument("--batch", type=int, default=8)
    feat = sub.add_parser("features", help="cache the outputs of chosen target layers at every position (Block)")
    feat.add_argument("--data", required=True)
    feat.add_argument("--layers", type=int, nargs="+", required=True)
    feat.add_argument("--batch", type=int, default=8)
    for p in (gen, hid, feat):
        p.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args(argv)
    {"generate": _generate_cli, "hidden": _hidden_cli, "features": _features_cli}[args.command](args)


if __name__ == "__main__":
    main()
