"""Per-row randomness: a row's output depends only on its prompt and its seed, never on its batch position, the
batch size or the other rows; and `rng` takes an int, a jax key, or int [B] per-row seeds (bad values: ValueError)."""

import jax
import numpy as np
import pytest

import spectax
import spectax.api as api
import spectax.sampling as sampling
from conftest import TINY_LLAMA
from spectax import DraftTree
from spectax.drafters import DraftModel
from test_speculative import noisy_copy

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 11, [3], [40, 41], [5] * 20, [9, 8, 7, 6], [60] * 7]
SEEDS = np.array([101, 7, 2 ** 40 + 3, 0, 55, 9, 12345, 2 ** 32 + 1])
NEW = 12
SAMPLING = dict(temperature=1.0, top_k=20, top_p=0.95)


@pytest.fixture(scope="module")
def flat():
    """Small weights: spread-out distributions, so samples really vary."""
    return spectax.Model.random(TINY_LLAMA, seed=3, scale=1.0)


def drafters(model):
    draft = noisy_copy(model, 0.3, 2)
    return {"plain": None, "chain": DraftModel(draft, tree=DraftTree.chain(3)),
            "tree": DraftModel(draft, tree=DraftTree.kary((2, 2)))}


def decode_rows(model, rows, drafter, **kw):
    out = spectax.decode(model, [PROMPTS[i] for i in rows], NEW, drafter=drafter, rng=SEEDS[rows], **kw)
    return np.asarray(out.tokens), out.stats


@pytest.mark.parametrize("kind", ["plain", "chain", "tree"])
def test_a_row_depends_only_on_its_prompt_and_seed(flat, kind):
    drafter = drafters(flat)[kind]
    full, st = decode_rows(flat, np.arange(8), drafter, **SAMPLING)
    alone, _ = decode_rows(flat, np.array([5]), drafter, **SAMPLING)         # alone, a different prompt bucket
    np.testing.assert_array_equal(alone[0], full[5])
    perm = np.array([6, 0, 3, 2])                                            # other positions, batch of 4
    part, _ = decode_rows(flat, perm, drafter, **SAMPLING)
    np.testing.assert_array_equal(part, full[perm])
    if drafter is not None:
        assert 1.0 < st.tau, "the draft must be partly accepted, so rows really accept different amounts"


def test_greedy_rows_are_the_same_with_or_without_a_tree(flat):
    ds = drafters(flat)
    full, _ = decode_rows(flat, np.arange(8), None)
    alone, _ = decode_rows(flat, np.array([2]), ds["tree"])
    np.testing.assert_array_equal(alone[0], full[2])


def test_seeds_matter(flat):
    """Equal prompts with different seeds differ; an int seed gives the rows of one batch different streams."""
    same = [PROMPTS[0]] * 8
    by_seed = np.asarray(spectax.decode(flat, same, NEW, rng=np.arange(8), **SAMPLING).tokens)
    assert len({tuple(r) for r in by_seed}) >= 6
    by_int = np.asarray(spectax.decode(flat, same, NEW, rng=3, **SAMPLING).tokens)
    assert len({tuple(r) for r in by_int}) >= 6
    again = np.asarray(spectax.decode(flat, same, NEW, rng=jax.random.key(3), **SAMPLING).tokens)
    np.testing.assert_array_equal(again, by_int)                             # int seed s == key(s)


def test_batch_wide_draws_are_caught(flat, monkeypatch, fresh_trace):
    """Teeth: one key drawing the whole batch (the old behaviour) makes a row depend on its position."""
    batch_wide = lambda keys_B, logits: jax.random.categorical(keys_B[0], logits, axis=-1).astype(np.int32)
    monkeypatch.setattr(sampling, "categorical_rows", batch_wide)
    full, _ = decode_rows(flat, np.arange(8), None, **SAMPLING)
    alone, _ = decode_rows(flat, np.array([5]), None, **SAMPLING)
    assert (alone[0] != full[5]).any()


BAD_RNG = [(-1, ">= 0|2\\*\\*64"), (2 ** 64, "2\\*\\*64"), (1.5, "rng"), (True, "rng"), ("seed", "rng"),
           (np.array([1, 2]), "shape"), (np.array([1.0, 2.0, 3.0]), "int"), (np.array([1, -2, 3]), ">= 0"),
           (jax.random.split(jax.random.key(0), 2), "shape"), (None, "rng")]


@pytest.mark.parametrize("rng,word", BAD_RNG)
def test_bad_rng_raises_before_tracing(flat, rng, word, monkeypatch):
    monkeypatch.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    with pytest.raises(ValueError, match=word):
        spectax.decode(flat, PROMPTS[:3], 4, rng=rng, temperature=1.0)
