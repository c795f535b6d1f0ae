"""Speculative decoding through the loop: exact greedy equivalence, dead-slot independence, one compile, bad input."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import spectax
import spectax.api as api
import spectax.drafters.draft_model as draft_model_mod
import spectax.loop as loop_mod
from conftest import TINY_LLAMA
from spectax import DraftTree
from spectax.api import decode_with_poison
from spectax.cache import commit_path
from spectax.drafters import DraftModel, Replay
from spectax.models import Model
from spectax.verify import TopKMatch, Typical
from test_sampling import np_warp

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
    return decode_with_poison(model, prompts, n, **args)


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
    ranks_R = 0                                  # steps that accepted a node of each sibling rank, over all depths
    for prompts in (PROMPTS, PROMPTS[:1]):
        out = run(tiny_llama, prompts, 24, drafter=DraftModel(drafts[draft], tree=TREES[tree]))
        ranks_R = ranks_R + np.asarray(out.stats.rank_hist)[:, :-1].sum(0)
        np.testing.assert_array_equal(out.tokens, plain[len(prompts)].tokens)
        np.testing.assert_array_equal(out.lengths, plain[len(prompts)].lengths)
        hist = np.asarray(out.stats.accepted_hist)
        depth = TREES[tree].max_depth
        if draft == "same":   # the draft is the target: every step accepts the whole deepest path
            assert hist[:, :depth].sum() == 0 and hist[:, depth].min() > 0
            np.testing.assert_allclose(out.stats.acceptance_per_depth, 1.0)
        assert out.stats.tau == pytest.approx(np.asarray(out.lengths - 1).sum() / np.asarray(out.stats.row_calls).sum())
    if draft == "noisy" and TREES[tree].max_children > 1:   # the draft's second choice was sometimes the right one:
        assert ranks_R[1:].sum() > 0                         # commit_path moved a rank > 0 branch, still exact


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


def test_eos_on_an_accepted_draft_token_of_a_kary_block(tiny_llama, plain):
    """EOS as an accepted DRAFT token (not the bonus), at batch 4: with draft = target every step of a k-ary tree
    accepts the whole depth-D path, so output position j > 0 is a draft token unless j % (D + 1) == 0."""
    tree = TREES["kary22"]
    D = tree.max_depth
    base = np.asarray(plain[len(PROMPTS)].tokens)
    # a row's first occurrence of a token, at a draft slot after at least one full step
    row, j = next((r, j) for r in range(len(PROMPTS)) for j in range(D + 2, base.shape[1])
                  if j % (D + 1) and base[r, j] not in base[r, :j])
    eos = int(base[row, j])
    plain_eos = run(tiny_llama, PROMPTS, 24, eos_id=eos, pad_id=-1)
    spec = run(tiny_llama, PROMPTS, 24, eos_id=eos, pad_id=-1, drafter=DraftModel(tiny_llama, tree=tree))
    np.testing.assert_array_equal(spec.tokens, plain_eos.tokens)
    np.testing.assert_array_equal(spec.lengths, plain_eos.lengths)
    assert int(spec.lengths[row]) == j + 1 and (np.asarray(spec.tokens[row, j + 1:]) == -1).all()
    hist, calls = np.asarray(spec.stats.accepted_hist), np.asarray(spec.stats.row_calls)
    assert hist[row, D] == calls[row] == -(-j // (D + 1))   # every step of the row accepted D drafts: j was one
    assert np.asarray(spec.lengths).max() > j + 1           # other rows went on decoding after the row stopped


def test_eos_as_the_prefill_token_stops_the_row_at_length_one(tiny_llama, plain):
    """A row whose first (prefill) token is EOS stops with length 1 and takes no step; the others decode on."""
    base = np.asarray(plain[len(PROMPTS)].tokens)
    eos = int(base[1, 0])
    stops = [row.tolist().index(eos) + 1 if eos in row else 24 for row in base]
    for drafter in (None, DraftModel(tiny_llama, tree=DraftTree.chain(4))):
        out = run(tiny_llama, PROMPTS, 24, eos_id=eos, pad_id=-1, drafter=drafter)
        np.testing.assert_array_equal(out.lengths, stops)
        for i, n in enumerate(stops):
            np.testing.assert_array_equal(out.tokens[i], np.where(np.arange(24) < n, base[i], -1))
        assert int(out.stats.row_calls[1]) == 0 and max(stops) > 1
        alone = run(tiny_llama, PROMPTS[1:2], 24, eos_id=eos, drafter=drafter)   # every row done after the prefill
        assert alone.lengths.tolist() == [1] and int(alone.stats.target_calls) == 0


def test_a_step_crossing_max_new_tokens_is_cut(tiny_llama, plain):
    """max_new_tokens = 13, not a power of two: with draft = target a chain-4 step writes 5 tokens (1 -> 6 -> 11),
    and the third step would reach 16: it is cut at 13."""
    out = run(tiny_llama, PROMPTS, 13, drafter=DraftModel(tiny_llama, tree=DraftTree.chain(4)))
    np.testing.assert_array_equal(out.tokens, np.asarray(plain[len(PROMPTS)].tokens)[:, :13])   # greedy: a prefix
    np.testing.assert_array_equal(out.lengths, [13] * len(PROMPTS))
    assert int(out.stats.target_calls) == 3 and np.asarray(out.stats.new_tokens).tolist() == [12] * len(PROMPTS)


TIGHT = {"same-chain15": ("same", DraftTree.chain(15)), "noisy-chain15": ("noisy", DraftTree.chain(15)),
         "noisy-kary222": ("noisy", DraftTree.kary((2, 2, 2)))}


@pytest.mark.parametrize("case", list(TIGHT))
def test_tightest_cache_decodes_exactly(tiny_llama, drafts, case, monkeypatch):
    """Longest prompt = its bucket (16), max_new_tokens = its bucket (16), cache_size = the minimum decode() takes,
    unwritten slots NaN; the deepest useful chain (max_new - 1 nodes) and a k-ary tree, whose accepted nodes are
    moved from the step's last slots: exact, equal to plain."""
    draft, tree = TIGHT[case]
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 97, n).tolist() for n in (16, 5, 1, 12)]
    tightest = 16 + 16 + tree.num_nodes + 1
    drafter = DraftModel(drafts[draft], tree=tree)
    with monkeypatch.context() as m:
        m.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
        with pytest.raises(ValueError, match="cache_size"):
            run(tiny_llama, prompts, 16, drafter=drafter, cache_size=tightest - 1)
    out = run(tiny_llama, prompts, 16, drafter=drafter, cache_size=tightest, poison_cache=True)
    ref = run(tiny_llama, prompts, 16, cache_size=16 + 16 + 1, poison_cache=True)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, [16] * 4)
    if draft == "same":   # one step per row: the root and all 15 nodes written into the cache's last slots
        assert np.asarray(out.stats.accepted_hist)[:, 15].tolist() == [1] * 4
    else:                 # partly accepted: rejected nodes were written at the edge too
        assert 1.2 < out.stats.tau < 15


def test_long_ragged_prompts_over_several_prefill_chunks_with_a_draft_model(tiny_llama, drafts):
    """Prompts of 600..900 tokens (4 chunks of 256 at bucket 1024), ragged, NaN in unwritten slots: speculative
    greedy equals plain for a noisy draft; with draft = target every step accepts the whole path, which only an
    exact chunked prefill of the draft's own cache gives."""
    rng = np.random.default_rng(11)
    prompts = [rng.integers(0, 97, n).tolist() for n in (600, 900, 777)]
    ref = run(tiny_llama, prompts, 16, poison_cache=True)
    for draft in ("noisy", "same"):
        out = run(tiny_llama, prompts, 16, drafter=DraftModel(drafts[draft], tree=DraftTree.chain(3)),
                  poison_cache=True)
        np.testing.assert_array_equal(out.tokens, ref.tokens)
        np.testing.assert_array_equal(out.lengths, [16] * 3)
        if draft == "same":
            assert np.asarray(out.stats.accepted_hist)[:, :3].sum() == 0


def _poisoning(commit, calls):
    """commit_path, then NaN in every slot at or past each row's committed length (rejected slots included).

    Appends to `calls` each time it is traced."""
    def poisoned(cache, path_BD, n_accepted_B, active_B, in_place=False):
        calls.append(1)
        out = commit(cache, path_BD, n_accepted_B, active_B, in_place)
        dead = jnp.arange(out.size)[None, :] >= out.lengths[:, None]          # [B, S]
        fill = lambda a: jnp.where(dead[:, None, :, None], jnp.nan, a)
        return out.replace(k=tuple(map(fill, out.k)), v=tuple(map(fill, out.v)))
    return poisoned


@pytest.mark.parametrize("tree", ["chain4", "paths"])
def test_nan_in_dead_and_rejected_slots_changes_nothing(tiny_llama, drafts, plain, tree, monkeypatch, fresh_trace):
    target_calls, draft_calls = [], []
    monkeypatch.setattr(loop_mod, "commit_path", _poisoning(commit_path, target_calls))
    monkeypatch.setattr(draft_model_mod, "commit_path", _poisoning(commit_path, draft_calls))
    drafter = DraftModel(drafts["noisy"], tree=TREES[tree])
    out = run(tiny_llama, PROMPTS, 24, drafter=drafter, poison_cache=True)
    assert target_calls and draft_calls, "the poisoning commits were not traced into the program"
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


def test_one_compile_per_model_tree_and_bucket(tiny_llama, monkeypatch, fresh_trace):
    traces = []
    original = api.run
    monkeypatch.setattr(api, "run", lambda *a, **k: (traces.append(1), original(*a, **k))[1])
    drafter = DraftModel(tiny_llama, tree=DraftTree.kary((2, 2)))
    spectax.decode(tiny_llama, [[5] * 3, [4] * 9], max_new_tokens=9, drafter=drafter)
    first = len(traces)
    assert first == 1                                   # the compiled programs were cleared: traced once
    spectax.decode(tiny_llama, [[6] * 14, [1, 2]], max_new_tokens=13, drafter=drafter)        # same buckets
    spectax.decode(tiny_llama, [[6] * 14, [1, 2]], max_new_tokens=13, drafter=drafter, temperature=0.8)
    spectax.decode(tiny_llama, [[6] * 4, [1]], max_new_tokens=10, drafter=drafter, temperature=1.3, rng=3)
    assert len(traces) == first + 1                                                       # greedy, sampled
    chain = DraftModel(tiny_llama, tree=DraftTree.chain(3))
    spectax.decode(tiny_llama, [[6] * 14, [1, 2]], max_new_tokens=13, drafter=chain)
    assert len(traces) == first + 2                                                       # a new tree


def test_lossy_rules(tiny_llama, drafts, plain):
    tree = TREES["kary22"]
    drafter = DraftModel(drafts["unrelated"], tree=tree)
    exact = run(tiny_llama, PROMPTS, 24, drafter=drafter, lossy=TopKMatch(k=1))   # top-1 match is greedy
    np.testing.assert_array_equal(exact.tokens, plain[len(PROMPTS)].tokens)
    loose = run(tiny_llama, PROMPTS, 24, drafter=drafter, lossy=TopKMatch(k=97))  # every token passes
    assert np.asarray(loose.stats.accepted_hist)[:, :tree.max_depth].sum() == 0


class StepLog:
    """Host record of every loop step: (n_accepted [B], new tokens [B, D + 1], active [B]), numpy."""

    def __init__(self):
        self.steps = []

    def record(self, n_accepted_B, new_BC, active_B):
        self.steps.append((np.asarray(n_accepted_B), np.asarray(new_BC), np.asarray(active_B)))


STEP_LOG = StepLog()   # one log, a static field of every Recording: equal drafters share compiled programs


@struct.dataclass
class Recording:
    """Any drafter, with each step's verdict sent to STEP_LOG from inside the loop (jax.debug.callback)."""

    inner: Any
    log: StepLog = struct.field(pytree_node=False, default=STEP_LOG)

    @property
    def tree(self) -> DraftTree:
        return self.inner.tree

    @property
    def target_layers(self) -> tuple[int, ...]:
        return self.inner.target_layers

    @property
    def follows_any_path(self) -> bool:
        return self.inner.follows_any_path

    def check(self, target, batch=None):
        self.inner.check(target, batch)

    def init(self, *args):
        return self.inner.init(*args)

    def propose(self, *args):
        return self.inner.propose(*args)

    def update(self, state, verdict, new_tokens_BC, out, active_B):
        jax.debug.callback(self.log.record, verdict.n_accepted, new_tokens_BC, active_B, ordered=True)
        return self.inner.update(state, verdict, new_tokens_BC, out, active_B)


def accepted_drafts(out, log: StepLog) -> list[list[bool]]:
    """Per row, per output token: whether it is an accepted draft token (not the prefill's token, not a bonus).
    Rebuilds each row's output from the log and asserts it is out.tokens (no EOS: rows end at max_new_tokens)."""
    flags = []
    for b in range(out.tokens.shape[0]):
        tokens, draft = [int(out.tokens[b, 0])], [False]
        for n_accepted_B, new_BC, active_B in log.steps:
            if active_B[b]:
                n = int(n_accepted_B[b])
                tokens += new_BC[b, :n + 1].tolist()
                draft += [True] * n + [False]
        n_out = int(out.lengths[b])
        assert tokens[:n_out] == out.tokens[b, :n_out].tolist(), f"row {b}: the step log does not rebuild the output"
        flags.append(draft[:n_out])
    return flags


def rule_holds(rule, logits_V, token, temperature, top_k, top_p, tol=1e-4) -> bool:
    """Oracle, numpy float64: whether `token` passes `rule` at these full-forward logits (tol: cache-vs-full noise)."""
    if isinstance(rule, TopKMatch):
        return int(np.sum(logits_V > logits_V[token] + tol)) < rule.k
    p = np_warp(logits_V, temperature, top_k, top_p)
    entropy = -np.sum(p * np.log(np.where(p > 0, p, 1.0)))
    return p[token] > min(rule.epsilon, rule.delta * np.exp(-entropy)) - tol


def lossy_violations(model, draft, rule, temperature, top_k, top_p) -> tuple[int, int, np.ndarray]:
    """Samples with `rule` and checks every accepted draft token against the rule at its parent, on logits
    recomputed by model.logits(prompt + output). Returns (violations, accepted draft tokens, accepted_hist [D+1])."""
    STEP_LOG.steps.clear()
    drafter = Recording(DraftModel(draft, tree=TREES["kary22"]))
    out = run(model, PROMPTS, 24, drafter=drafter, lossy=rule, temperature=temperature, top_k=top_k, top_p=top_p,
              rng=1)
    flags = accepted_drafts(out, STEP_LOG)
    seq_BT = np.zeros((len(PROMPTS), 64), np.int32)                  # causal: the zeros after a row cannot matter
    for b, prompt in enumerate(PROMPTS):
        seq_BT[b, :len(prompt) + len(flags[b])] = prompt + out.tokens[b, :len(flags[b])].tolist()
    logits_BTV = np.asarray(model.logits(seq_BT), np.float64)
    checked = [(b, len(p) + j) for b, p in enumerate(PROMPTS) for j, f in enumerate(flags[b]) if f]
    bad = sum(not rule_holds(rule, logits_BTV[b, t - 1], seq_BT[b, t], temperature, top_k, top_p) for b, t in checked)
    return bad, len(checked), np.asarray(out.stats.accepted_hist).sum(0)


LOSSY = {"typical": Typical(epsilon=np.float32(0.3), delta=np.float64(0.3)),   # numpy scalars are accepted
         "topk2": TopKMatch(k=np.int64(2))}


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (1.0, 5, 0.8)], ids=["T1", "T1-topk-topp"])
@pytest.mark.parametrize("rule", list(LOSSY))
def test_lossy_rules_hold_for_every_accepted_draft_token_under_sampling(tiny_llama, drafts, rule, temperature,
                                                                        top_k, top_p):
    """Under sampling (plain, and top-k with top-p) every accepted draft token passes the rule at its parent, on
    full-forward logits; bonus tokens are the target's own draws and are not checked."""
    bad, checked, hist = lossy_violations(tiny_llama, drafts["noisy"], LOSSY[rule], temperature, top_k, top_p)
    assert checked >= 20 and hist[0] > 0, "the rule must accept many draft tokens and reject some"
    assert bad == 0, f"{bad} of {checked} accepted draft tokens break {LOSSY[rule]}"


@pytest.mark.parametrize("rule", list(LOSSY))
def test_the_lossy_check_catches_a_rule_that_accepts_everything(tiny_llama, drafts, rule, monkeypatch, fresh_trace):
    """The check above has teeth: with the rule broken to accept every draft token, it finds violations."""
    monkeypatch.setattr(type(LOSSY[rule]), "accepts", lambda self, logits, tokens, *a: jnp.ones(tokens.shape, bool))
    bad, checked, _ = lossy_violations(tiny_llama, drafts["noisy"], LOSSY[rule], 1.0, 0, 1.0)
    assert bad > checked // 4


class NotADrafter:
    tree = DraftTree.chain(2)


BAD = [
    (lambda m, g: dict(drafter=DraftModel(g.replace(config=dataclasses.replace(g.config, vocab_size=50),
                                                    params=g.params))), "vocabulary"),
    (lambda m, g: dict(drafter=DraftModel(m, tree=DraftTree.none())), "non-empty"),
    (lambda m, g: dict(drafter=DraftModel(m, tree=DraftTree.chain(8)), cache_size=40), "draft tree"),
    (lambda m, g: dict(drafter=NotADrafter()), "drafter"),
    (lambda m, g: dict(drafter=DraftModel(m), lossy=True), "lossy"),
    (lambda m, g: dict(drafter=DraftModel(m), lossy=TopKMatch(k=98)), "vocabulary"),
    (lambda m, g: dict(drafter=Replay.create(np.ones((3, 8), np.int64), 0.0, DraftTree.chain(2))), "3 rows"),
]


@pytest.mark.parametrize("make,word", BAD)
def test_bad_speculative_input_raises_before_tracing(tiny_llama, tiny_gpt2, make, word, monkeypatch):
    monkeypatch.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    with pytest.raises(ValueError, match=word):
        spectax.decode(tiny_llama, PROMPTS, 8, **make(tiny_llama, tiny_gpt2))


@pytest.mark.parametrize("paths,word", [([], "empty"), ([(0,), (0,)], "duplicate"), ([(0, 0)], "prefix"),
                                         ([(1,)], "rank")])
def test_invalid_trees_are_rejected(paths, word):
    with pytest.raises(ValueError, match=word):
        DraftTree.from_paths(paths)


@pytest.mark.parametrize("kwargs", [dict(epsilon=True), dict(delta=np.bool_(True)), dict(epsilon=float("nan")),
                                    dict(delta=float("inf")), dict(epsilon=0.0), dict(delta=1.5), dict(epsilon="0.1"),
                                    dict(delta=jnp.float32(0.3))])
def test_bad_typical_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError, match="Typical"):
        Typical(**kwargs)


@pytest.mark.parametrize("k", [0, -1, 2.0, True, np.bool_(True), "2", None])
def test_bad_topk_match_k_is_rejected(k):
    with pytest.raises(ValueError, match="TopKMatch"):
        TopKMatch(k=k)


def test_lossy_rules_take_numpy_scalars_as_python_numbers():
    """Stored as Python numbers: a rule made from numpy scalars is the same static jit argument as the plain one."""
    assert Typical(np.float32(0.25), np.float64(0.5)) == Typical(0.25, 0.5)
    assert hash(TopKMatch(np.int32(3))) == hash(TopKMatch(3)) and type(TopKMatch(np.int32(3)).k) is int


@pytest.mark.parametrize("corrupt", [float("nan"), float("inf"), -0.1, 1.5, "0.5", True, np.bool_(False), None,
                                     np.array([0.5])])
def test_bad_replay_corrupt_is_rejected(corrupt):
    with pytest.raises(ValueError, match="corrupt"):
        Replay.create(np.ones((2, 4), np.int32), corrupt, DraftTree.chain(2))


def test_replay_checks_its_reference_against_the_batch(tiny_llama):
    drafter = Replay.create(np.ones((2, 4), np.int32), np.float32(0.5), DraftTree.chain(2))   # numpy floats work
    drafter.check(tiny_llama)                       # batch unknown: nothing to compare
    drafter.check(tiny_llama, batch=2)
    with pytest.raises(ValueError, match="2 rows for a batch of 3"):
        drafter.check(tiny_llama, batch=3)


def test_replay_drafts_control_acceptance(tiny_llama, plain):
    reference = np.asarray(run(tiny_llama, PROMPTS, 32).tokens)
    exact = run(tiny_llama, PROMPTS, 24, drafter=Replay.create(reference, 0.0, DraftTree.chain(3)))
    np.testing.assert_array_equal(exact.tokens, plain[len(PROMPTS)].tokens)
    assert np.asarray(exact.stats.accepted_hist)[:, :3].sum() == 0       # nothing corrupted: all accepted
    half = run(tiny_llama, PROMPTS, 24, drafter=Replay.create(reference, 0.5, DraftTree.chain(3)))
    np.testing.assert_array_equal(half.tokens, plain[len(PROMPTS)].tokens)
    np.testing.assert_allclose(half.stats.acceptance_per_depth, 0.5, atol=0.2)
    with pytest.raises(ValueError, match="chains"):
        spectax.decode(tiny_llama, PROMPTS, 8, drafter=Replay.create(reference, 0.0, DraftTree.kary((2,))))
