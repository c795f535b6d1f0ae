"""Ensemble (collaborative decoding of r) and the CoS drafter: lossless with respect to r.

- The ensemble's log r equals a hand-computed mixture / contrastive combination of its members' logits, and its
  naive decode (every member every token, NaN-poisoned cache) is the greedy decoding of r computed by full forwards.
- Greedy CoS equals the naive greedy decoding of r token for token (mix over three members of two architectures and
  two padded vocabulary sizes; contrastive with an early-exit amateur), ragged batch, chain and tree.
- Sampled CoS follows the law of r over several steps (the conditional-law test of test_speculative_sampling, with
  Ensemble.logits as the full-forward oracle); a CoS that commits the bonus from the verifying member's own
  distribution (the paper's alternation without verifying that bonus) is rejected by the same test.
- Bad input: vocabularies that really differ, bad weights, bad alpha, bad proposer, bad manifests.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

import spectax
from conftest import TINY_GPT2, TINY_LLAMA
from law_matrix import law_settings
from spectax import DraftTree, Ensemble, api
from spectax.drafters import CoS
from spectax.models import Model
from spectax.models.ensemble import early_exit
from test_decode import greedy_by_full_forward
from test_speculative_sampling import LEVEL, SMALL, law_pvalue, sampled

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16]]
NEW = 40
PADDED = dataclasses.replace(TINY_LLAMA, vocab_size=100, num_layers=1, hidden_size=16, num_heads=2, num_kv_heads=1)


@pytest.fixture(scope="module")
def mix(tiny_llama, tiny_gpt2):
    """Three members: llama and gpt2 (97 tokens) and a one-layer llama padded to 100 tokens (the smallest)."""
    return Ensemble([tiny_llama, tiny_gpt2, Model.random(PADDED, seed=7, scale=3.0)], weights=(0.5, 0.3, 0.2))


@pytest.fixture(scope="module")
def contrastive(tiny_llama):
    return Ensemble((tiny_llama, early_exit(tiny_llama, 1)), mode="contrastive", alpha=0.5, plausibility=0.1)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_ensemble_logits_are_the_hand_computed_combination(mix, contrastive):
    tokens = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], np.int32)
    member = [_log_softmax(np.asarray(m.logits(tokens))[..., :97]) for m in mix.models]   # padding rows dropped
    r = sum(w * np.exp(lp) for w, lp in zip((0.5, 0.3, 0.2), member))
    np.testing.assert_allclose(np.exp(np.asarray(mix.logits(tokens), np.float64)), r, rtol=1e-4, atol=1e-7)

    expert, amateur = [_log_softmax(m.logits(tokens)) for m in contrastive.models]
    plausible = expert >= expert.max(-1, keepdims=True) + np.log(0.1)
    want = np.where(plausible, expert - 0.5 * amateur, -np.inf)
    got = np.asarray(contrastive.logits(tokens))
    np.testing.assert_array_equal(np.isfinite(got), plausible)
    assert plausible.sum(-1).max() > 1 and (~plausible).any(), "the cut must keep several tokens and drop some"
    np.testing.assert_allclose(got[plausible], want[plausible], rtol=1e-5, atol=1e-5)
    # the early-exit amateur is the expert's first layer read out through the expert's own final norm and head
    assert contrastive.models[1].config.num_layers == 1
    assert contrastive.models[1].params["final_norm"]["scale"] is contrastive.models[0].params["final_norm"]["scale"]


def _naive(ensemble):
    out = api.decode_with_poison(ensemble, PROMPTS, NEW, prompt_lengths=None, drafter=None, temperature=0.0, top_k=0,
                      top_p=1.0, rng=0, eos_id=None, pad_id=0, attn_impl="auto", cache_size=None, lossy=None,
                      poison_cache=True)
    return np.asarray(out.tokens)


@pytest.fixture(scope="module")
def naive_greedy(mix, contrastive):
    return {"mix": _naive(mix), "contrastive": _naive(contrastive)}


@pytest.mark.parametrize("mode", ["mix", "contrastive"])
def test_naive_ensemble_decoding_is_greedy_decoding_of_r(request, naive_greedy, mode):
    """The naive decode (cached, NaN-poisoned) picks argmax r at every position, r from full causal forwards."""
    ensemble, tokens = request.getfixturevalue(mode), naive_greedy[mode]
    seqs = np.zeros((len(PROMPTS), max(map(len, PROMPTS)) + NEW), np.int32)   # right-padded: causal, so harmless
    for b, (prompt, row) in enumerate(zip(PROMPTS, tokens)):
        seqs[b, :len(prompt) + NEW] = prompt + row.tolist()
    log_r = np.asarray(ensemble.logits(seqs))
    for b, prompt in enumerate(PROMPTS):
        np.testing.assert_array_equal(tokens[b], np.argmax(log_r[b, len(prompt) - 1:len(prompt) - 1 + NEW], -1))


@pytest.mark.parametrize("mode,tree,proposer", [("mix", DraftTree.kary((2, 2)), 1),
                                                 ("contrastive", DraftTree.chain(3), None)],
                         ids=["mix-tree-gpt2", "contrastive-chain-default"])
def test_greedy_cos_equals_naive_greedy(request, naive_greedy, mode, tree, proposer):
    """The gpt2 member drafts a tree for the mix; the default proposer (the fewest parameters: the early-exit
    amateur) a chain for the contrastive ensemble."""
    ensemble = request.getfixturevalue(mode)
    drafter = CoS(ensemble, proposer=proposer, tree=tree)
    assert CoS(ensemble).index == len(ensemble.models) - 1     # the padded one-layer llama; the early exit
    out = api.decode_with_poison(ensemble, PROMPTS, NEW, prompt_lengths=None, drafter=drafter, temperature=0.0, top_k=0,
                      top_p=1.0, rng=0, eos_id=None, pad_id=0, attn_impl="auto", cache_size=None, lossy=None,
                      poison_cache=True)
    np.testing.assert_array_equal(np.asarray(out.tokens), naive_greedy[mode])
    hist = np.asarray(out.stats.accepted_hist).sum(0)
    assert hist[0] > 0 and hist[1:].sum() > 0, "the proposals must be partly accepted, partly rejected"
    if tree.max_children > 1:
        assert np.asarray(out.stats.rank_hist)[:, 1:-1].sum() > 0, "a rank > 0 branch must be accepted"


@pytest.fixture(scope="module")
def small_members():
    return Model.random(SMALL, seed=11, scale=1.0), Model.random(SMALL, seed=12, scale=1.0)


def _small(mode, members):
    if mode == "mix":
        return Ensemble(members, weights=(0.7, 0.3))
    return Ensemble((members[0], early_exit(members[0], 1)), mode="contrastive", alpha=0.5, plausibility=0.05)


@pytest.mark.parametrize("temperature,top_k,top_p", law_settings("cos"))
@pytest.mark.parametrize("mode", ["mix", "contrastive"])
def test_sampled_cos_follows_the_law_of_r(small_members, mode, temperature, top_k, top_p):
    """Every one of the 6 sampled tokens follows r's conditional law (warped by the setting) given its prefix
    (several verification steps, the proposer drafting a chain of 2). Today's 3 of the 9 settings
    (tests/law_matrix.py)."""
    ensemble, settings = _small(mode, small_members), (temperature, top_k, top_p)
    tokens, st = sampled(ensemble, CoS(ensemble, proposer=1, tree=DraftTree.chain(2)), *settings)
    hist = np.asarray(st.accepted_hist).sum(0)
    assert hist[0] > 0 and hist[2] > 0, "drafts must be rejected at times and fully accepted (a bonus) at times"
    assert np.asarray(st.row_calls).min() >= 2, "every row verifies several times"
    assert law_pvalue(ensemble, tokens, *settings) > LEVEL


def test_a_bonus_from_the_verifying_member_is_caught(small_members, monkeypatch, fresh_trace):
    """The paper's bonus without its verification: after a fully accepted chain, commit a token drawn from the
    verifying member's own distribution p_0 instead of r. The same law test rejects it."""
    ensemble = _small("mix", small_members)
    combine = Ensemble.combine

    def bonus_from_member_0(self, member_logits):
        log_r = combine(self, member_logits)
        if log_r.ndim == 3 and log_r.shape[1] > 1:       # a verification pass: its last position is the bonus
            log_r = log_r.at[:, -1].set(jax.nn.log_softmax(member_logits[0][:, -1], axis=-1))
        return log_r

    monkeypatch.setattr(Ensemble, "combine", bonus_from_member_0)
    tokens, _ = sampled(ensemble, CoS(ensemble, proposer=1, tree=DraftTree.chain(2)), 1.0, 0, 1.0)
    monkeypatch.undo()
    assert law_pvalue(ensemble, tokens, 1.0, 0, 1.0) < LEVEL


def test_bad_input(tiny_llama, tiny_gpt2):
    other = Model.random(dataclasses.replace(TINY_LLAMA, vocab_size=200), seed=3)
    cases = [
        (lambda: Ensemble([tiny_llama, other]), "vocabulary"),
        (lambda: Ensemble([tiny_llama, other], mode="contrastive", alpha=1.0), "vocabulary"),
        (lambda: Ensemble([tiny_llama]), ">= 2 models"),
        (lambda: Ensemble(tiny_llama), ">= 2 models"),
        (lambda: Ensemble([tiny_llama, "gpt2"]), "member 1"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], weights=(1.5, -0.5)), "weights"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], weights=(0.5, 0.6)), "sum to 1"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], weights=(1.0,)), "weights"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], weights=(np.nan, 1.0)), "weights"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], alpha=0.5), "alpha"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], mode="contrastive", alpha=-0.1), "alpha"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], mode="contrastive", alpha=float("inf")), "alpha"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], mode="contrastive"), "alpha"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], mode="contrastive", alpha=0.5, weights=(0.5, 0.5)), "weights"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2, tiny_llama], mode="contrastive", alpha=0.5), "exactly 2"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], mode="product"), "mode"),
        (lambda: Ensemble([tiny_llama, tiny_gpt2], mode="contrastive", alpha=1.0, plausibility=1.5), "plausibility"),
        (lambda: early_exit(tiny_llama, 2), "num_layers"),
        (lambda: early_exit(tiny_llama, 0), "num_layers"),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match):
            make()
    ensemble = Ensemble([tiny_llama, tiny_gpt2])
    assert ensemble.weights == (0.5, 0.5) and ensemble.config.max_position == TINY_GPT2.max_position
    for proposer in (2, -1, True):
        with pytest.raises(ValueError, match="proposer"):
            spectax.decode(ensemble, [[1, 2]], 4, drafter=CoS(ensemble, proposer=proposer))
    with pytest.raises(ValueError, match="context"):      # the smallest member context (gpt2's 256) bounds decoding
        spectax.decode(ensemble, [[1] * 250], 10)
    # CoS verifies against its own ensemble: decoding any other target with it is refused before tracing
    others = [tiny_llama, Ensemble([tiny_llama, tiny_gpt2], weights=(0.3, 0.7)),
              Ensemble([tiny_llama, Model.random(TINY_GPT2, seed=9)])]
    for target in others:
        with pytest.raises(ValueError, match="its own ensemble"):
            spectax.decode(target, [[1, 2]], 4, drafter=CoS(ensemble))
    spectax.decode(Ensemble([tiny_llama, tiny_gpt2]), [[1, 2]], 4, drafter=CoS(ensemble))   # an equal ensemble: fine


def test_load_manifest(tmp_path, tiny_llama):
    spectax.save(tiny_llama, tmp_path / "expert")
    manifest = {"mode": "contrastive", "alpha": 0.5, "plausibility": 0.1,
                "members": [{"model": "expert"}, {"model": "expert", "early_exit": 1}]}
    (tmp_path / "ensemble.json").write_text(json.dumps(manifest))
    loaded = spectax.load(tmp_path)
    reference = Ensemble((tiny_llama, early_exit(tiny_llama, 1)), mode="contrastive", alpha=0.5)
    tokens = np.array([[3, 1, 4, 1, 5]], np.int32)
    np.testing.assert_array_equal(np.asarray(loaded.logits(tokens)), np.asarray(reference.logits(tokens)))
    bad = [{"mode": "contrastive"}, {"members": [{"model": "expert", "exit": 1}]},
           {"members": [{"model": "expert"}], "beta": 1}, {"members": [{"model": "expert"}, {"model": "expert"}],
                                                          "weights": [0.2, 0.2]}]
    for manifest in bad:
        (tmp_path / "ensemble.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError):
            spectax.load(tmp_path)
    (tmp_path / "ensemble.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest"):
        spectax.load(tmp_path)
    with pytest.raises(ValueError, match="manifest"):
        spectax.load(tmp_path / "nowhere")


@pytest.mark.slow
def test_shipped_contrastive_ensemble_on_smollm2():
    """The shipped ensemble loads (SmolLM2 and its early exit), and greedy CoS (the full model proposing: the early
    exit predicts r badly, see benchmarks/results/cos.json) is the greedy decoding of r, computed by full forwards
    of the ensemble (no cache, no loop: one forward program instead of a second decode program)."""
    ensemble = spectax.load("smollm2-135m-instruct/cos-contrastive")
    assert ensemble.mode == "contrastive" and ensemble.models[1].config.num_layers < 30
    prompts, new = [[1, 9690, 198, 2683, 314], [1, 4093, 28, 1]], 16
    cos = spectax.decode(ensemble, prompts, new, drafter=CoS(ensemble, proposer=0, tree=DraftTree.chain(2)))
    for row, prompt in zip(np.asarray(cos.tokens), prompts):
        assert row.tolist() == greedy_by_full_forward(ensemble, prompt, new, width=len(prompts[0]) + new)
    assert cos.stats.tau > 1.0
