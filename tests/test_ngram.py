"""NGram (prompt lookup) and Combined drafters: exact greedy output, whole copies accepted, plain steps when nothing
matches, adaptive depth, bad input. Their sampled losslessness is in test_speculative_sampling.py."""

import re

import jax
import numpy as np
import pytest

import spectax
from spectax import DraftTree
from spectax.drafters import Combined, DraftModel, Heads, NGram
from spectax.models import Model
from spectax.step_types import History
from test_heads import ForwardLog

NEW = 40


def prompts(vocab, lengths=(5, 17, 9, 30), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


@pytest.fixture(scope="module")
def bigram(tiny_llama):
    """tiny_llama with every attention output projection zeroed: each position's logits depend on its own token
    only, so greedy decoding follows a fixed map token -> next token, and text it wrote once is text it repeats."""
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 0 if "'o'" in jax.tree_util.keystr(path) else x, tiny_llama.params)
    return Model(config=tiny_llama.config, params=params)


def follow(model, start, n):
    """The bigram model's greedy chain from `start`: [start, g(start), g(g(start)), ...] of n tokens."""
    out = spectax.decode(model, [[start]], n - 1)
    return [start] + np.asarray(out.tokens[0]).tolist()


DRAFTERS = {
    "chain": lambda m: NGram(tree=DraftTree.chain(4)),
    "tree": lambda m: NGram(max_n=3, tree=DraftTree.kary((3, 2, 1)), occurrences=2),
    "adaptive": lambda m: NGram(tree=DraftTree.chain(6), depth_by_n=(0, 2, 6, 6)),
    "combined": lambda m: Combined((NGram(tree=DraftTree.chain(3)),
                                    Heads.create(m, num_heads=2, tree=DraftTree.kary((2, 1))))),
}


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_greedy_equals_plain_greedy(tiny_llama, bigram, name):
    """Ragged batch of 4: the same tokens as plain greedy decoding, on a random target (drafts mostly rejected) and
    on the bigram target (drafts mostly accepted), with real speculation in both."""
    for model in (tiny_llama, bigram):
        ps = prompts(model.config.vocab_size)
        plain = spectax.decode(model, ps, NEW)
        out = spectax.decode(model, ps, NEW, drafter=DRAFTERS[name](model))
        np.testing.assert_array_equal(out.tokens, plain.tokens)
        np.testing.assert_array_equal(out.lengths, plain.lengths)
        assert np.asarray(out.stats.speculated).sum() > 0
    assert np.asarray(out.stats.accepted_hist)[:, 1:].sum() > 0, "the bigram target accepts drafts"
    assert out.stats.tau > 1.2


def test_greedy_gpt2_tree(tiny_gpt2):
    """GPT-2 (learned positions, tied head), ragged batch of 4: the same tokens as plain greedy, with drafts proposed
    in every row; siblings of rank 1 accepted on the random model, whole drafts on its bigram version (attention
    outputs and the position table zeroed: each position's logits depend on its own token only)."""
    gpt2_bigram = Model(config=tiny_gpt2.config, params=jax.tree_util.tree_map_with_path(
        lambda path, x: x * 0 if re.search(r"'(o|wpe)'", jax.tree_util.keystr(path)) else x, tiny_gpt2.params))
    stats = {}
    for name, model in (("random", tiny_gpt2), ("bigram", gpt2_bigram)):
        ps = prompts(model.config.vocab_size, seed=1)
        plain = spectax.decode(model, ps, NEW)
        out = spectax.decode(model, ps, NEW, drafter=NGram(max_n=2, tree=DraftTree.kary((2, 2)), occurrences=3))
        np.testing.assert_array_equal(out.tokens, plain.tokens)
        np.testing.assert_array_equal(out.lengths, plain.lengths)
        assert np.asarray(out.stats.speculated).min() > 0, "every row must have proposed drafts"
        stats[name] = out.stats
    assert np.asarray(stats["random"].rank_hist)[:, 1:-1].sum() > 0, "a sibling of rank 1 was accepted"
    assert stats["bigram"].tau > 1.2


@pytest.mark.parametrize("k", [3, 6])
def test_a_continuation_in_the_prompt_is_accepted_whole(bigram, k):
    """The prompt ends with the target's own greedy text (which has entered its cycle) after unrelated tokens: what
    follows is already in the prompt, so every step accepts the whole chain of k and each target call yields k + 1
    tokens."""
    V = bigram.config.vocab_size
    chain = follow(bigram, 7, 40)
    assert len(set(chain)) < 20, "the bigram text must cycle within the prompt"
    noise = [t for t in np.random.default_rng(5).integers(0, V, 30).tolist() if t not in chain][:20]
    new = 1 + (k + 1) * 5                                 # the prefill token, then 5 steps of k + 1
    out = spectax.decode(bigram, [noise + chain], new, drafter=NGram(tree=DraftTree.chain(k)))
    assert np.asarray(out.tokens[0]).tolist() == follow(bigram, chain[-1], new + 1)[1:]
    hist = np.asarray(out.stats.accepted_hist)[0]
    assert hist[k] == int(out.stats.target_calls) == 5 and hist[:k].sum() == 0
    assert out.stats.tau == k + 1


def test_no_match_costs_a_plain_step(tiny_llama, monkeypatch, fresh_trace):
    """A step where no active row matches runs as a plain step (T = 1); steps with a match run the tree.

    Rows: one whose prompt and output never repeat a token before `new` tokens (no match at all, so every step
    is plain), alone; then a batch where another row matches: the tree runs."""
    V = tiny_llama.config.vocab_size
    plain = np.asarray(spectax.decode(tiny_llama, [[t] for t in range(V)], 30).tokens)     # every 1-token prompt
    seqs = np.concatenate([np.arange(V)[:, None], plain], axis=1).tolist()
    fresh = [next((i for i in range(len(s)) if s[i] in s[:i]), len(s)) for s in seqs]  # first repeated position
    seq = seqs[int(np.argmax(fresh))]
    new = max(fresh) - 1                             # the root never repeats an earlier token in these steps
    assert new >= 4, "the test needs an output that does not repeat a token at once"
    drafter = NGram(tree=DraftTree.chain(4))
    log = ForwardLog(monkeypatch, tiny_llama)
    out = spectax.decode(tiny_llama, [seq[:1]], new, drafter=drafter)
    assert sorted(set(log.traced[1:])) == [1, 5], "the loop body holds a plain and a full branch"
    assert set(log.ran[1:]) == {1} and int(out.stats.speculated[0]) == 0
    log.ran.clear()
    out = spectax.decode(tiny_llama, [seq[:1], [3, 4, 3, 4, 3]], new, drafter=drafter)
    assert 5 in log.ran[1:] and int(out.stats.speculated[1]) > 0


def test_depth_follows_the_match_length(tiny_llama, bigram, monkeypatch, fresh_trace):
    """depth_by_n: the loop runs the shallowest cut covering every active row: T in {1, 1 + 2, 1 + 6} here."""
    drafter = NGram(tree=DraftTree.chain(6), depth_by_n=(0, 2, 6, 6))
    ps = prompts(bigram.config.vocab_size)
    plain = spectax.decode(bigram, ps, NEW)
    log = ForwardLog(monkeypatch, bigram)
    out = spectax.decode(bigram, ps, NEW, drafter=drafter)
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    assert sorted(set(log.traced[1:])) == [1, 3, 7]
    assert {3, 7} <= set(log.ran[1:]), "both cuts ran"
    assert np.asarray(out.stats.accepted_hist)[:, 3:].sum() > 0, "long matches speculate deeper than 2"


def test_tree_siblings_hold_distinct_matches():
    """Candidates fill the trie: the root's children are the distinct next tokens of the longest, latest matches;
    a missing sibling repeats the first; deeper nodes follow the candidate they agree with."""
    drafter = NGram(max_n=2, min_n=1, tree=DraftTree.from_paths([(0,), (1,), (2,), (0, 0), (1, 0)]), occurrences=2)
    history = [5, 1, 7, 2, 5, 1, 8, 3, 1, 9, 4, 5]     # then the root 1: "5 1" matched twice, "1" three times
    draft, _ = drafter.propose((), History.after(np.array([history]), np.array([len(history)]), np.array([1])),
                               None, None, None)
    # candidates: n=2 "5 1" -> ends 5 (then 8 3), 1 (then 7 2); n=1 "1" -> ends 8 (then 9 4), 5 (8 3)
    assert np.asarray(draft.tokens_BN[0]).tolist() == [8, 7, 9, 3, 2]
    assert int(draft.depth_B[0]) == 2
    draft, _ = drafter.propose((), History.after(np.array([[6, 2, 4]]), np.array([3]), np.array([9])), None, None,
                               None)
    assert int(draft.depth_B[0]) == 0, "no earlier 9: no match, no speculation"


def test_periodic_continuation():
    """A match that runs into the present continues with the text's period."""
    drafter = NGram(max_n=3, tree=DraftTree.chain(5))
    history = History.after(np.array([[4, 6, 4, 6]]), np.array([4]), np.array([4]))    # 4 6 4 6, root 4
    draft, _ = drafter.propose((), history, None, None, None)
    assert np.asarray(draft.tokens_BN[0]).tolist() == [6, 4, 6, 4, 6]


@pytest.mark.parametrize("kw,match", [
    (dict(max_n=2, min_n=3), "max_n"), (dict(min_n=0), "min_n"), (dict(occurrences=0), "occurrences"),
    (dict(max_n=2.0), "max_n"), (dict(tree=DraftTree.none()), "non-empty"),
    (dict(depth_by_n=(1, 2)), "depth_by_n"), (dict(depth_by_n=(1, 2, -1, 4)), "depth_by_n"),
    (dict(tree=DraftTree((-1, -1, 0, -1)), depth_by_n=(1, 1, 2, 2)), "ordered by depth")])
def test_bad_ngram_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        NGram(**kw)


def test_bad_combinations(tiny_llama):
    with pytest.raises(ValueError, match=">= 2 drafters"):
        spectax.decode(tiny_llama, [[1, 2]], 4, drafter=Combined((NGram(),)))
    with pytest.raises(ValueError, match="DraftModel cannot be combined"):
        spectax.decode(tiny_llama, [[1, 2]], 4, drafter=Combined((NGram(), DraftModel(tiny_llama))))


def test_depth_calibration(bigram):
    """calibrate.ngram_acceptance on the bigram target's cycling text: long matches there are always right, so a
    cheap enough verification makes ngram_depths offer the whole chain after them, and nothing after a match
    that is never accepted."""
    from spectax import calibrate

    measured = calibrate.ngram_acceptance(bigram, [follow(bigram, 7, 12), [3, 9]], 16, max_n=3, max_depth=4)
    n, acc = np.asarray(measured["n"]), np.asarray(measured["accepted"])
    assert n.size == acc.size == 2 * 15
    left = np.tile(np.minimum(4, 15 - np.arange(15)), 2)                # continuation tokens known at each position
    assert (acc[n == 3] == left[n == 3]).all() and (n == 3).sum() >= 8, "cycling text: 3-gram matches are right"
    cost = np.array([1.0, 1.3, 1.5, 1.7, 1.9])
    depths, table = calibrate.ngram_depths({"n": [1, 1, 2, 3, 3], "accepted": [0, 0, 1, 4, 4], "max_n": 3,
                                            "max_depth": 4}, cost)
    assert depths == (0, 1, 4)
    assert table[3]["expected_speedup_at_depth"][4] == pytest.approx(5 / 1.9)
    with pytest.raises(ValueError, match="cost"):
        calibrate.ngram_depths(measured, cost[:3])


def test_ngram_drafts_for_an_ensemble(tiny_llama, bigram):
    """Any target works: prompt lookup on a contrastive Ensemble (the gated switch path over every member's cache)
    gives the naive ensemble's greedy tokens."""
    from spectax import Ensemble

    cd = Ensemble([bigram, tiny_llama], mode="contrastive", alpha=0.5)
    ps = prompts(bigram.config.vocab_size)
    naive = spectax.decode(cd, ps, NEW)
    out = spectax.decode(cd, ps, NEW, drafter=NGram(tree=DraftTree.chain(4), depth_by_n=(0, 2, 4, 4)))
    np.testing.assert_array_equal(out.tokens, naive.tokens)
    assert np.asarray(out.stats.speculated).sum() > 0
