"""`spectax train heads` and `spectax train block` end to end on a tiny model: flags parsed, trained, evaluated,
saved with a README, and an interrupted run (--stop-at) resumed from its orbax checkpoints."""

import numpy as np
import pytest

import spectax
from spectax import cli
from spectax.drafters import Block, Heads
from spectax.train import distill

LAYERS = ("0", "1")


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    """A saved tiny target and its self-distillation data: generations, hidden states, layer features."""
    root = tmp_path_factory.mktemp("train_cli")
    spectax.save(tiny_llama, root / "model")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 97, rng.integers(3, 8)).tolist() for _ in range(20)]
    for split, rows in (("train", prompts[:16]), ("eval", prompts[16:])):
        distill.generate_ids(tiny_llama, rows, root / "data" / split, eos_id=None, max_new_tokens=12, batch=8,
                             shard_size=8)
        distill.cache_hidden(tiny_llama, root / "data" / split, root / "data" / "hidden" / split)
        distill.cache_features(tiny_llama, root / "data" / split,
                               distill.features_dir(root / "data", (0, 1)) / split, (0, 1))
    return root


def train(run_dir, what, out, *flags):
    return cli.main(["train", what, "--data", str(run_dir / "data"), "--model", str(run_dir / "model"),
                     "--out", str(out), "--data-note", "tiny test data", "--steps", "6", "--warmup", "2",
                     "--checkpoint-every", "3", "--draft-vocab", "60", *flags])


def test_train_heads_cli(run_dir, tmp_path, capsys):
    out = tmp_path / "medusa"
    assert train(run_dir, "heads", out, "--kind", "medusa", "--num-heads", "2", "--batch", "16",
                 "--stop-at", "3") == 0
    assert "saved" in capsys.readouterr().out and (tmp_path / "medusa.train").is_dir()
    assert train(run_dir, "heads", out, "--kind", "medusa", "--num-heads", "2", "--batch", "16") == 0
    printed = capsys.readouterr().out
    assert "head 1 (token t+3): top-1" in printed and "resumed from step 3" in printed
    heads = Heads.load(out)
    assert heads.config.num_heads == 2 and heads.vocab_ids.shape == (60,)
    readme = (out / "README.md").read_text()
    assert "# medusa heads" in readme and "spectax train heads --data" in readme and "tiny test data" in readme
    assert "| 1 (token t+3) |" in readme and "6 steps of 16 positions" in readme


def test_train_block_cli(run_dir, tmp_path, capsys):
    out = tmp_path / "block"
    assert train(run_dir, "block", out, "--target-layers", *LAYERS, "--block-size", "3", "--batch", "2",
                 "--anchors", "4") == 0
    printed = capsys.readouterr().out
    assert "position 3: top-1" in printed and "saved" in printed
    block = Block.load(out)
    assert block.config.block_size == 3 and block.config.target_layers == (0, 1)
    readme = (out / "README.md").read_text()
    assert "# Block drafter" in readme and "target's layers [0, 1]" in readme and "| 3 (token p+3) |" in readme
