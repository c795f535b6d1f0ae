"""Speculative decoding through the loop: exact greedy equivalence, dead-slot independence, one compile, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectax
import spectax.api as api
import spectax.drafters.draft_model as draft_model_mod
import spectax.loop as loop_mod
from spectax import DraftTree
from spectax.api import _decode
from spectax.cache import commit_path
from spectax.drafters import DraftModel
from spectax.models import Model
from spectax.verify import TopKMatch, Typical
from conftest import TINY_LLAMA

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 11, [3]]
TREES = {
    "chain1": DraftTree.chain(1),
    "chain4": DraftTree.chain(4),
    "kary22": DraftTree.kary((2, 2)),
    "kary321": DraftTree.kary((3, 2, 1)),
    "paths": DraftTree.from_paths([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]),
    "optimal": DraftTree.optimal([0.5, 0.25, 0.1], budget=10, max_depth=4),
}


def run(model, prompts, n, **kw):
    args = dict(prompt_lengths=None, drafter=None, temperature=0.0, top_k=0, top_p=1.0, rng=0, eos_id=None,
                pad_id=0, attn_impl="auto", cache_size=None, lossy=None, poison_cache=False)
    args.update(kw)
    return _decode(model, prompts, n, **args)


def noisy_copy(model, scale, seed):
    """The target with every weight perturbed: a draft that agrees often, not always."""
    leaves, treedef = jax.tree_util.tree_flatten(model.params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [a + scale * jnp.std(a) * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return Model(config=model.config, params=jax.tree_util.tree_unflatten(treedef, noisy))


@pytest.fixture(scope="module")
def drafts(tiny_llama, tiny_gpt2):
    return {"same": tiny_llama, "noisy": noisy_copy(tiny_llama, 0.1, 1), "unrelated": tiny_gpt2}


@pytest.fixture(scope="module")
def plain(tiny_llama):
    return {len(p): run(tiny_llama, p, 24) for p in (PROMPTS, PROMPTS[:1])}


@pytest.mark.parametrize("draft", ["same", "noisy", "unrelated"])
@pytest.mark.parametrize("tree", list(TREES))
def test_greedy_speculative_equals_plain_greedy(tiny_llama, drafts, plain, tree, draft):
    for prompts in (PROMPTS, PROMPTS[:1]):
        out = run(tiny_llama, prompts, 24, drafter=DraftModel(drafts[draft], tree=TREES[tree]))
        np.testing.assert_array_equal(out.tokens, plain[len(prompts)].tokens)
        np.testing.assert_array_equal(out.lengths, plain[len(prompts)].lengths)
        hist = np.asarray(out.stats.accepted_hist)
        depth = TREES[tree].max_depth
        if draft == "same":   # the draft is the target: every step accepts the whole deepest path
            assert hist[:, :depth].sum() == 0 and hist[:, depth].min() > 0
            np.testing.assert_allclose(out.stats.acceptance_per_depth, 1.0)
        assert out.stats.tau == pytest.approx(np.asarray(out.lengths - 1).sum() / np.asarray(out.stats.row_calls).sum())


def test_unrelated_draft_is_mostly_rejected_and_rank_stats_add_up(tiny_llama, drafts):
    tree = TREES["kary22"]
    out = run(tiny_llama, PROMPTS, 24, drafter=DraftModel(drafts["unrelated"], tree=tree))
    assert out.stats.tau < 1.5
    ranks = np.asarray(out.stats.rank_hist)
    assert ranks.shape == (tree.max_depth, tree.max_children + 1)
    assert ranks[0].sum() == np.asarray(out.stats.row_calls).sum()   # every step tries depth 1
    hist = np.asarray(out.stats.accepted_hist).sum(0)
    assert ranks[0, :-1].sum() == hist[1:].sum()                      # depth-1 acceptances by rank
    acc = out.stats.rank_acceptance
    assert acc.shape == (2, 2) and (acc.sum(1) <= 1 + 1e-9).all()


def test_eos_and_max_new_cut_speculative_rows(tiny_llama):
    """Per-row EOS inside an accepted block: the row stops there, padded, exactly as plain decoding."""
    base = run(tiny_llama, PROMPTS, 16)
    eos = int(base.tokens[1, 5])
    plain = run(tiny_llama, PROMPTS, 16, eos_id=eos, pad_id=-1)
    spec = run(tiny_llama, PROMPTS, 16, eos_id=eos, pad_id=-1, drafter=DraftModel(tiny_llama, tree=DraftTree.chain(4)))
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    np.testing.assert_array_equal(spec.lengths, plain.lengths)
    assert int(spec.lengths[1]) == 6


def _poisoning(commit):
    """commit_path, then NaN in every slot at or past each row's committed length (rejected slots included)."""
    def poisoned(cache, path_BD, n_accepted_B, active_B, in_place=False):
        out = commit(cache, path_BD, n_accepted_B, active_B, in_place)
        dead = jnp.arange(out.size)[None, :] >= out.lengths[:, None]          # [B, S]
        fill = lambda a: jnp.where(dead[:, None, :, None], jnp.nan, a)
        return out.replace(k=tuple(map(fill, out.k)), v=tuple(map(fill, out.v)))
    return poisoned


@pytest.mark.parametrize("tree", ["chain4", "paths"])
def test_nan_in_dead_and_rejected_slots_changes_nothing(tiny_llama, drafts, plain, tree, monkeypatch):
    monkeypatch.setattr(loop_mod, "commit_path", _poisoning(commit_path))
    monkeypatch.setattr(draft_model_mod, "commit_path", _poisoning(commit_path))
    drafter = DraftModel(drafts["noisy"], tree=TREES[tree])
    # a cache size no other test uses: the program is traced afresh, with the poisoning commit
    out = run(tiny_llama, PROMPTS, 24, drafter=drafter, poison_cache=True, cache_size=83)
    np.testing.assert_array_equal(out.tokens, plain[len(PROMPTS)].tokens)
    assert 1.2 < out.stats.tau   # the noisy draft is partly accepted: rejected slots really were poisoned


def test_padded_draft_vocabulary_is_mapped(tiny_llama, plain):
    """A draft with a few extra (padding) vocabulary rows, as Qwen-style checkpoints have: mapped, still exact."""
    config = dataclasses.replace(TINY_LLAMA, vocab_size=98)
    params = jax.tree_util.tree_map(lambda a: a, tiny_llama.params)
    params["embed"]["embedding"] = jnp.concatenate([params["embed"]["embedding"],
                                                    jnp.zeros((1, config.hidden_size))], axis=0)
    params["lm_head"]["kernel"] = jnp.concatenate([params["lm_head"]["kernel"],
                                                   jnp.full((config.hidden_size, 1), 10.0)], axis=1)  # the top row
    wide = Model.create(config, params)
    out = run(tiny_llama, PROMPTS, 24, drafter=DraftModel(wide, tree=DraftTree.chain(3)))
    np.testing.assert_array_equal(out.tokens, plain[len(PROMPTS)].tokens)
    assert np.asarray(out.stats.accepted_hist)[:, :3].sum() == 0


def test_one_compile_per_model_tree_and_bucket(monkeypatch):
    target = Model.random(dataclasses.replace(TINY_LLAMA, max_position=779), seed=5, scale=3.0)
    traces = []
    original = api.run
    monkeypatch.setattr(api, "run", lambda *a, **k: (traces.append(1), original(*a, **k))[1])
    drafter = DraftModel(target, tree=DraftTree.kary((2, 2)))
    spectax.decode(target, [[5] * 3, [4] * 9], max_new_tokens=9, drafter=drafter)
    first = len(traces)
    spectax.decode(target, [[6] * 14, [1, 2]], max_new_tokens=13, drafter=drafter)        # same buckets
    spectax.decode(target, [[6] * 14, [1, 2]], max_new_tokens=13, drafter=drafter, temperature=0.8)
    spectax.decode(target, [[6] * 4, [1]], max_new_tokens=10, drafter=drafter, temperature=1.3, rng=3)
    assert len(traces) == first + 1                                                       # greedy, sampled
    spectax.decode(target, [[6] * 14, [1, 2]], max_new_tokens=13, drafter=DraftModel(target, tree=DraftTree.chain(3)))
    assert len(traces) == first + 2                                                       # a new tree


def test_lossy_rules(tiny_llama, drafts, plain):
    tree = TREES["kary22"]
    drafter = DraftModel(drafts["unrelated"], tree=tree)
    exact = run(tiny_llama, PROMPTS, 24, drafter=drafter, lossy=TopKMatch(k=1))   # top-1 match is greedy
    np.testing.assert_array_equal(exact.tokens, plain[len(PROMPTS)].tokens)
    loose = run(tiny_llama, PROMPTS, 24, drafter=drafter, lossy=TopKMatch(k=97))  # every token passes
    assert np.asarray(loose.stats.accepted_hist)[:, :tree.max_depth].sum() == 0
    typical = run(tiny_llama, PROMPTS, 24, drafter=drafter, lossy=Typical(epsilon=0.3, delta=0.3), temperature=1.0)
    assert typical.stats.tau >= 1.0 and (np.asarray(typical.lengths) == 24).all()


class NotADrafter:
    tree = DraftTree.chain(2)


BAD = [
    (lambda m, g: dict(drafter=DraftModel(g.replace(config=dataclasses.replace(g.config, vocab_size=50),
                                                    params=g.params))), "vocabulary"),
    (lambda m, g: dict(drafter=DraftModel(m, tree=DraftTree.none())), "non-empty"),
    (lambda m, g: dict(drafter=DraftModel(m, tree=DraftTree.chain(8)), cache_size=40), "draft tree"),
    (lambda m, g: dict(drafter=NotADrafter()), "drafter"),
    (lambda m, g: dict(drafter=DraftModel(m), lossy=True), "lossy"),
]


@pytest.mark.parametrize("make,word", BAD)
def test_bad_speculative_input_raises_before_tracing(tiny_llama, tiny_gpt2, make, word, monkeypatch):
    monkeypatch.setattr(api, "_decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    with pytest.raises(ValueError, match=word):
        spectax.decode(tiny_llama, PROMPTS, 8, **make(tiny_llama, tiny_gpt2))


@pytest.mark.parametrize("paths,word", [([], "empty"), ([(0,), (0,)], "duplicate"), ([(0, 0)], "prefix"),
                                         ([(1,)], "rank")])
def test_invalid_trees_are_rejected(paths, word):
    with pytest.raises(ValueError, match=word):
        DraftTree.from_paths(paths)


def test_replay_drafts_control_acceptance(tiny_llama, plain):
    from spectax.drafters import Replay
    reference = np.asarray(run(tiny_llama, PROMPTS, 32).tokens)
    exact = run(tiny_llama, PROMPTS, 24, drafter=Replay.create(reference, 0.0, DraftTree.chain(3)))
    np.testing.assert_array_equal(exact.tokens, plain[len(PROMPTS)].tokens)
    assert np.asarray(exact.stats.accepted_hist)[:, :3].sum() == 0       # nothing corrupted: all accepted
    half = run(tiny_llama, PROMPTS, 24, drafter=Replay.create(reference, 0.5, DraftTree.chain(3)))
    np.testing.assert_array_equal(half.tokens, plain[len(PROMPTS)].tokens)
    np.testing.assert_allclose(half.stats.acceptance_per_depth, 0.5, atol=0.2)
    with pytest.raises(ValueError, match="chains"):
        spectax.decode(tiny_llama, PROMPTS, 8, drafter=Replay.create(reference, 0.0, DraftTree.kary((2,))))
