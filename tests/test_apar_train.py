"""spectax.train.apar: samples from restructured answers, and a tiny model trained in the test to fork."""

import dataclasses

import numpy as np
import pytest

from spectax import apar
from spectax.io.tokenizer import ByteTokenizer
from spectax.models import Model
from spectax.models.adapter import Adapter, merge
from spectax.train import apar as train_apar
from spectax.train.distill import pack_examples, write_atomic

FORK_ID, CHILD_ID = 259, 260


class ControlBytes(ByteTokenizer):
    """Bytes, then [Fork] = 259 and [Child] = 260 (spelled in text, they encode to their ids)."""

    def encode(self, text, add_bos=False):
        ids = []
        for i, part in enumerate(text.split(apar.FORK)):
            if i:
                ids.append(FORK_ID)
            for j, piece in enumerate(part.split(apar.CHILD)):
                if j:
                    ids.append(CHILD_ID)
                ids += list(piece.encode("utf-8"))
        return ids

    def decode(self, ids, skip_special_tokens=False):
        return super().decode([i for i in ids if i < 259], skip_special_tokens)

    def token_to_id(self, token):
        return {apar.FORK: FORK_ID, apar.CHILD: CHILD_ID}.get(token)


def answer(k: int) -> str:
    words = ["sun", "rain", "wind", "snow", "mist", "hail"]
    a, b, c = (words[(k + i) % 6] for i in range(3))
    return f"Tips:\n1. {a}: the {a} is warm today.\n2. {b}: the {b} is cold today.\n3. {c}: the {c} is wet today."


def test_samples_of_an_answer():
    tok = ControlBytes()
    prompt = [1, 2, 3]
    samples = train_apar.samples_of(prompt, answer(0), tok, 257, 512)
    assert len(samples) == 4                                         # the main stream and three children
    (main, start), *children = samples
    assert start == 3 and main[:3] == prompt and main[-1] == 257 and main.count(FORK_ID) == 3
    for k, (ids, start) in enumerate(children):
        assert ids[start - 1] == CHILD_ID and ids[start - 2] == FORK_ID and ids.count(FORK_ID) == k + 1
        assert tok.decode(ids[start:-1]) in answer(0) and ids[-1] == 257
    assert train_apar.samples_of(prompt, "no structure here.", tok, 257, 512) == [
        (prompt + list(b"no structure here.") + [257], 3)]
    assert train_apar.samples_of(prompt, answer(0), tok, 257, 40)[0][0] == main[:40]    # cut at max_len


@pytest.mark.slow
def test_a_tiny_model_learns_to_fork(tmp_path):
    """An adapter trained on restructured answers makes a random tiny model fork where its answers list items:
    the held-out loss falls, and greedy APAR decoding of a training prompt opens streams."""
    from conftest import TINY_LLAMA

    base = Model.random(dataclasses.replace(TINY_LLAMA, vocab_size=259, eos_id=257), seed=0)
    tok = ControlBytes()
    prompts = [list(f"Q{k}?".encode()) for k in range(12)]
    seqs = [np.asarray(p + list(answer(k).encode()) + [257], np.int32) for k, p in enumerate(prompts)]
    for split, rows in (("train", range(10)), ("eval", range(10, 12))):
        (tmp_path / split).mkdir()
        write_atomic(tmp_path / split / "shard-00000.npz", pack_examples(
            [seqs[k] for k in rows], [len(prompts[k]) for k in rows], prompt_id=np.asarray(list(rows)),
            prompt_index=np.asarray(list(rows)), category=np.zeros(len(rows), np.int32),
            vocab_size=np.int32(259)))
    samples = train_apar.build([tmp_path / "train"], tok, 257, 128, progress=False)
    held_out = train_apar.build([tmp_path / "eval"], tok, 257, 128, progress=False)
    assert len(samples) == 40 and samples.structured.all()
    cfg = train_apar.TrainConfig(steps=300, batch=8, lr=1e-2, warmup=10, rank=8, max_len=128, checkpoint_every=300)
    adapter = train_apar.train(base, samples, cfg, tmp_path / "ckpt", progress=False)
    before = train_apar.held_out_loss(base, Adapter.init(base, 2, 8), (259, 260), held_out, 8, 128)
    after = train_apar.held_out_loss(base, adapter, (259, 260), held_out, 8, 128)
    assert after < 0.5 * before
    model = merge(base, adapter, apar_ids=(FORK_ID, CHILD_ID))
    out = apar.decode(model, [prompts[0]], 120, max_streams=4, eos_id=257)
    assert out.streams[0] >= 3, out.forks
