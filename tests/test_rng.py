"""Per-row randomness: a row's output depends only on its prompt and its seed, never on its batch position, the
batch size or the other rows; and `rng` takes an int, a jax key, or int [B] per-row seeds (bad values: ValueError)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectax
import spectax.api as api
import spectax.sampling as sampling
from conftest import TINY_LLAMA
from spectax import DraftTree
from spectax.drafters import Block, Combined, CoS, DraftModel, Heads, NGram
from spectax.loop import Loop
from spectax.sampling import fold_rows
from test_speculative import noisy_copy

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 11, [3], [40, 41], [5] * 20, [9, 8, 7, 6], [60] * 7]
SEEDS = np.array([101, 7, 2 ** 40 + 3, 0, 55, 9, 12345, 2 ** 32 + 1])
NEW = 12
SAMPLING = dict(temperature=1.0, top_k=20, top_p=0.95)


@pytest.fixture(scope="module")
def flat():
    """Small weights: spread-out distributions, so samples really vary."""
    return spectax.Model.random(TINY_LLAMA, seed=3, scale=1.0)


@pytest.fixture(scope="module")
def flat_drafters(flat):
    """Every drafter kind for the flat model, built once (creating them runs eager JAX ops)."""
    return drafters(flat)


def drafters(model):
    draft = noisy_copy(model, 0.3, 2)
    ngram_tree = NGram(max_n=3, tree=DraftTree.kary((2, 2)), occurrences=2)
    heads = Heads.create(model, kind="medusa", num_heads=2, tree=DraftTree.kary((2, 2)), seed=1)
    return {"plain": None, "chain": DraftModel(draft, tree=DraftTree.chain(3)),
            "tree": DraftModel(draft, tree=DraftTree.kary((2, 2))),
            "ngram-chain": NGram(max_n=3, tree=DraftTree.chain(3), depth_by_n=(1, 2, 3)),
            "ngram-tree": ngram_tree,
            "cerberus-gated": Heads.create(model, kind="cerberus", num_heads=2, tree=DraftTree.kary((2, 2)),
                                           gate=GATE, seed=2),
            "heads": heads,
            "block": Block.create(model, block_size=3, tree=DraftTree.kary((2, 1, 1)), target_layers=(0, 1)),
            "combined": Combined((ngram_tree, Heads.create(model, kind="cerberus", num_heads=2,
                                                            tree=DraftTree.kary((2, 1)), gate=GATE, seed=3)))}


GATE = 4.15   # nats: the flat model's entropies straddle it, so the Cerberus gate opens for some steps, not all


def decode_rows(model, rows, drafter, **kw):
    out = spectax.decode(model, [PROMPTS[i] for i in rows], NEW, drafter=drafter, rng=SEEDS[rows], **kw)
    return np.asarray(out.tokens), out.stats


KINDS = ["plain", "chain", "tree", "ngram-chain", "ngram-tree", "cerberus-gated", "heads", "block", "combined"]


def rows_agree(model, drafter, **sampling_kw):
    """Whether rows 6, 0, 3, 2 decode in a batch of 4 (other positions, another batch size, another prompt bucket:
    16 slots, not 32) as they do in the batch of all 8; and the batch of 8's stats. Two programs per drafter."""
    full, stats = decode_rows(model, np.arange(8), drafter, **sampling_kw)
    perm = np.array([6, 0, 3, 2])
    part, _ = decode_rows(model, perm, drafter, **sampling_kw)
    return bool((part == full[perm]).all()), stats


@pytest.mark.parametrize("kind", KINDS)
def test_a_row_depends_only_on_its_prompt_and_seed(flat, flat_drafters, kind):
    drafter = flat_drafters[kind]
    agree, st = rows_agree(flat, drafter, **SAMPLING)
    assert agree
    if drafter is not None:
        if kind != "ngram-chain":   # (its sampled chains are rarely accepted on this flat model; it truncates)
            assert 1.0 < st.tau, "the draft must be partly accepted, so rows really accept different amounts"
        speculated, calls = int(np.sum(st.speculated)), int(np.sum(st.row_calls))
        if kind in ("ngram-chain", "ngram-tree", "cerberus-gated", "combined"):
            assert 0 < speculated < calls, "rows must offer different depths, so the loop truncates the tree"


def test_a_row_of_an_ensemble_depends_only_on_its_prompt_and_seed(flat):
    ensemble = spectax.Ensemble((flat, noisy_copy(flat, 0.3, 4)), weights=(0.7, 0.3))
    assert rows_agree(ensemble, CoS(ensemble, tree=DraftTree.kary((2, 1))), **SAMPLING)[0]


def test_truncation_dependent_draws_are_caught(flat, flat_drafters, monkeypatch, fresh_trace):
    """Teeth: draws that depend on the depth the batch's forward was cut to (the bug of verifying each truncation
    with its own draw shapes) make a row depend on its neighbours, and the check above sees it."""
    verify = Loop._verify

    def cut_dependent(self, logits_BTV, draft, keys_B):
        if draft.depth_B is not None:
            keys_B = fold_rows(keys_B, jnp.max(draft.depth_B))
        return verify(self, logits_BTV, draft, keys_B)

    monkeypatch.setattr(Loop, "_verify", cut_dependent)
    assert not rows_agree(flat, flat_drafters["ngram-tree"], temperature=1.0)[0]


def test_greedy_rows_are_the_same_with_or_without_a_tree(flat, flat_drafters):
    ds = flat_drafters
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
