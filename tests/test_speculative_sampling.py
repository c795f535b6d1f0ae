"""Statistical losslessness of speculative sampling over several verification steps.

Each decode samples NEW = 6 tokens per row, so every row runs several verification steps: an accepted path (a rank
> 0 tree branch included) is committed and then verified again. The test checks the law of every one of the 6
tokens given everything before it: for each sampled sequence the exact warped target distribution at each position
is recomputed with a full causal forward (`model.logits`, no cache, no loop code), and the observed tokens are tested
against those conditional laws, stratified by (position, previous token). Under losslessness the stratum sums of
(one-hot - p) are martingale sums, so their Mahalanobis norms add up to a chi-square.

Power (the noncentral chi-square at the test's level, p < 1e-4, with the 100-290 degrees of freedom these decodes
give): the test detects half the time a noncentrality of 63 (df 100) to 101 (df 300). A bias that moves probability
delta from one token to another, both of probability 0.2 in a stratum of n rows, has noncentrality n * delta**2 * 10:
so delta ~= 0.036-0.045 is detected half the time at n = 5000 (the first position, one stratum) and delta ~=
0.08-0.10 in a stratum of 1000 rows. `power_note` recomputes these figures (test_documented_power).

Teeth: the same test rejects a verifier whose correction ignores the residual, acceptance that ignores q, draws
without replacement that stop removing drawn tokens, a target p without the top-k / top-p filter, and a drafter
that filters its draws but records an unfiltered q.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from scipy import stats

import law_matrix
import spectax
import spectax.verify.multi_draft as multi_draft_mod
import spectax.verify.speculative as speculative_mod
from law_matrix import law_settings
from spectax import DraftTree
from spectax.drafters import Combined, Draft, DraftModel, Heads, NGram, Replay
from spectax.models import Model, ModelConfig
from spectax.sampling import Sampler, categorical_rows, warp
from test_sampling import np_warp

SMALL = ModelConfig(arch="llama", vocab_size=8, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=8, intermediate_size=32, max_position=64)
PROMPT = [1, 5, 2]
ROWS = 8000
TEETH_ROWS = 2000   # the broken verifiers below give p < 1e-60 at 2000 rows (measured): a quarter of the rows suffices
NEW = 6
LEVEL = 1e-4


@pytest.fixture(scope="module")
def target():
    return Model.random(SMALL, seed=11, scale=1.0)


@pytest.fixture(scope="module")
def draft(target):
    """An unrelated model of the same vocabulary: it disagrees often, so residuals are exercised."""
    return Model.random(SMALL, seed=12, scale=1.0)


def conditional_laws(model, tokens_RN, temperature, top_k, top_p):
    """float64 [R, NEW, V]: the exact warped target law of each sampled token given the prompt and the tokens before
    it, from one full causal forward over every sequence."""
    R, N = tokens_RN.shape
    seqs = np.concatenate([np.tile(PROMPT, (R, 1)), tokens_RN], axis=1).astype(np.int32)
    logits = np.asarray(model.logits(seqs))[:, len(PROMPT) - 1:len(PROMPT) - 1 + N]      # [R, N, V]
    return np_warp(logits, temperature, top_k, top_p)


def stratum_statistic(tokens_n, probs_nV):
    """(chi-square statistic, degrees of freedom) of one stratum: n tokens against their n conditional laws.

    Cells expected to hold < 5 are pooled; the statistic is d' pinv(S) d with d = counts - sum of p and
    S = diag(sum p) - sum p p' (the covariance of d under the laws)."""
    e = probs_nV.sum(0)
    big = e >= 5
    merge = np.concatenate([np.eye(len(e))[:, big], (~big)[:, None].astype(float)], axis=1)    # [V, cells]
    p = probs_nV @ merge
    onehot = np.eye(len(e))[tokens_n] @ merge
    d = onehot.sum(0) - p.sum(0)
    cov = np.diag(p.sum(0)) - p.T @ p
    rank = np.linalg.matrix_rank(cov, tol=1e-6 * max(cov.max(), 1e-12))
    return float(d @ np.linalg.pinv(cov, rcond=1e-6) @ d), int(rank)


def law_pvalue(model, tokens_RN, temperature, top_k, top_p, min_rows=30):
    """The p-value of "each of the NEW tokens follows the warped target law given its prefix" (0 if any token has
    zero probability under it), stratified by (position, previous token)."""
    probs = conditional_laws(model, tokens_RN, temperature, top_k, top_p)
    R, N = tokens_RN.shape
    taken = np.take_along_axis(probs, tokens_RN[..., None], axis=-1)[..., 0]
    if (taken <= 0).any():
        return 0.0
    prev = np.concatenate([np.full((R, 1), PROMPT[-1]), tokens_RN[:, :-1]], axis=1)
    stat, df = 0.0, 0
    for t in range(N):
        for v in np.unique(prev[:, t]):
            rows = prev[:, t] == v
            if rows.sum() >= min_rows:
                s, k = stratum_statistic(tokens_RN[rows, t], probs[rows, t])
                stat, df = stat + s, df + k
    assert df >= 50, f"too few degrees of freedom ({df}): the test would have no power"
    return float(stats.chi2.sf(stat, df))


def power_note(df=200, p_cell=0.2):
    """n * delta**2 for which a shift of delta between two cells of probability p_cell is detected half the time."""
    crit = stats.chi2.isf(LEVEL, df)
    lam = next(l for l in np.arange(1.0, 200.0, 0.5) if stats.ncx2.sf(crit, df, l) >= 0.5)
    return lam / (2 / p_cell)


def test_documented_power():
    """The docstring's figures, and the code's statistic behind them: under the law, stratum_statistic averages its
    degrees of freedom; with delta moved between two cells of probability 0.2 in a stratum of n rows it averages
    df + n * delta**2 * 10, the noncentrality the figures assume (300 simulated strata each way)."""
    assert abs(power_note(df=100) * 10 - 63) <= 1 and abs(power_note(df=300) * 10 - 101) <= 1
    rng, n, delta = np.random.default_rng(0), 1000, 0.05
    p = np.full(5, 0.2)
    shifted = p + delta * np.array([1, -1, 0, 0, 0])
    laws = np.broadcast_to(p, (n, 5))
    null = [stratum_statistic(rng.choice(5, n, p=p), laws) for _ in range(300)]
    biased = [stratum_statistic(rng.choice(5, n, p=shifted), laws) for _ in range(300)]
    assert {df for _, df in null + biased} == {4}
    assert abs(np.mean([s for s, _ in null]) - 4) < 0.7                 # SE 0.16
    assert abs(np.mean([s for s, _ in biased]) - (4 + n * delta**2 * 10)) < 2.5    # SE 0.6


@struct.dataclass
class IndependentDraws:
    """A context-free drafter: each node is an independent draw from its own fixed warped distribution.
    `record_unfiltered` (a deliberate bug): the draws are top-k / top-p filtered but the recorded q is not."""

    logits_NV: jax.Array
    tree: DraftTree = struct.field(pytree_node=False)
    record_unfiltered: bool = struct.field(pytree_node=False, default=False)
    target_layers = ()
    follows_any_path = True

    def check(self, target, batch=None):
        pass

    def init(self, target, prompt_BP, prompt_len_B, out, cache_size, spec):
        return ()

    def propose(self, state, history, keys_B, spec, sampling):
        B, (N, V) = history.length_B.shape[0], self.logits_NV.shape
        logits = jnp.broadcast_to(self.logits_NV, (B, N, V))
        logq = jax.nn.log_softmax(warp(logits, spec.sampler, sampling), -1)
        tokens = categorical_rows(keys_B, logq)
        if self.record_unfiltered:
            logq = jax.nn.log_softmax(warp(logits, Sampler(greedy=False, filtered=False), sampling), -1)
        return Draft(tokens_BN=tokens, q_BNV=jnp.exp(logq), without_replacement=False), state

    def update(self, state, verdict, new_tokens_BC, out, active_B):
        return state


def sampled(model, drafter, temperature, top_k, top_p, seed=0, rows=ROWS):
    out = spectax.decode(model, [PROMPT] * rows, max_new_tokens=NEW, drafter=drafter, temperature=temperature,
                         top_k=top_k, top_p=top_p, rng=seed)
    tokens = np.asarray(out.tokens)
    assert (np.asarray(out.lengths) == NEW).all()
    return tokens, out.stats


def make_drafter(kind, draft, tree, rows=ROWS, **kw):
    if kind == "replay":   # deterministic draft tokens (q is one-hot): a fixed, context-free continuation
        reference = np.random.default_rng(4).integers(0, SMALL.vocab_size, (rows, 16))
        return Replay.create(reference, 0.0, tree)
    if kind == "independent":
        logits = jax.random.normal(jax.random.key(3), (tree.num_nodes, SMALL.vocab_size)) * 1.5
        return IndependentDraws(logits_NV=logits, tree=tree, **kw)
    if kind == "ngram":    # deterministic, context-dependent drafts: distinct matches as siblings
        return NGram(max_n=2, tree=tree, occurrences=2)
    if kind == "combined":  # a deterministic n-gram sibling before two heads siblings drawn without replacement
        heads = Heads.create(draft, num_heads=tree.max_depth, tree=DraftTree.kary((2,) + (1,) * (tree.max_depth - 1)))
        return Combined((NGram(max_n=2, tree=DraftTree.chain(tree.max_depth)), heads))
    return DraftModel(draft, tree=tree)


CASE_IDS = ["chain", "tree-sequoia", "tree-specinfer", "chain-deterministic", "ngram-tree", "ngram-and-heads"]
CASES = [("model", DraftTree.chain(2)), ("model", DraftTree.kary((3, 2))), ("independent", DraftTree.kary((2, 2))),
         ("replay", DraftTree.chain(2)), ("ngram", DraftTree.kary((2, 1))), ("combined", DraftTree.chain(2))]
LAW_PARAMS = [pytest.param(kind, tree, *s.values, marks=s.marks, id=f"{case}-{s.id}")
              for case, (kind, tree) in zip(CASE_IDS, CASES) for s in law_settings(case)]


@pytest.mark.parametrize("kind,tree,temperature,top_k,top_p", LAW_PARAMS)
def test_speculative_sampling_is_lossless_over_several_steps(target, draft, kind, tree, temperature, top_k, top_p):
    """Each case's law at today's 3 of the 9 settings (tests/law_matrix.py; all 9 with SPECTAX_LAW_MATRIX=all)."""
    tokens, st = sampled(target, make_drafter(kind, draft, tree), temperature, top_k, top_p)
    hist = np.asarray(st.accepted_hist).sum(0)
    assert hist[0] > 0 and hist[1:].sum() > 0, "the draft must be partly accepted, partly rejected"
    assert int(st.target_calls) >= 2 and np.asarray(st.row_calls).min() >= 2, "every row verifies several times"
    if tree.max_children > 1 and kind != "replay":
        assert np.asarray(st.rank_hist)[:, 1:-1].sum() > 0, "a rank > 0 branch must be accepted (and committed)"
    assert law_pvalue(target, tokens, temperature, top_k, top_p) > LEVEL


@pytest.mark.parametrize("day", range(0, 30, 7))
def test_any_three_days_run_every_setting_of_every_drafter(day):
    """The rotation's promise: each day runs 3 settings per drafter, every temperature and every filter among them,
    and any 3 consecutive days run all 9."""
    for case in CASE_IDS + ["heads", "block", "cos"]:
        days = [{(t, f) for t in range(3) for f in range(3) if law_matrix.runs_on(case, t, f, d)}
                for d in (day, day + 1, day + 2)]
        assert all(len(s) == 3 and {t for t, _ in s} == {f for _, f in s} == {0, 1, 2} for s in days)
        assert set().union(*days) == {(t, f) for t in range(3) for f in range(3)}


def _unfiltered_probs(logits, sampler, params):
    return jax.nn.softmax(logits.astype(jnp.float32) / params.temperature, axis=-1)


BROKEN = {
    "correction-from-p": ("residual", lambda r, q: r),
    "acceptance-ignores-q": ("accepts", lambda u, p, q: u < p),
    "p-unfiltered": ("target_probs", _unfiltered_probs),
}


TEETH = [("correction-from-p", "chain"), ("correction-from-p", "tree-sequoia"), ("correction-from-p", "tree-specinfer"),
         ("acceptance-ignores-q", "chain"), ("acceptance-ignores-q", "tree-specinfer"), ("p-unfiltered", "tree-sequoia")]
CASE_BY_ID = dict(zip(CASE_IDS, CASES))


@pytest.mark.parametrize("bug,case", TEETH)
def test_a_broken_verifier_is_caught(target, draft, bug, case, monkeypatch, fresh_trace):
    """Each deliberately broken verifier (monkeypatched into both verifier modules) is rejected by the same test, on
    TEETH_ROWS rows. The subtler bugs below (without-replacement, mixed siblings, q recorded unfiltered: p 0.05,
    4e-6 and 2e-12 at 2000 rows) keep the full ROWS."""
    name, broken = BROKEN[bug]
    kind, tree = CASE_BY_ID[case]
    for module in (speculative_mod, multi_draft_mod):
        monkeypatch.setattr(module, name, broken)
    settings = (1.0, 3, 1.0) if bug == "p-unfiltered" else (1.0, 0, 1.0)
    tokens, _ = sampled(target, make_drafter(kind, draft, tree), *settings, rows=TEETH_ROWS)
    assert law_pvalue(target, tokens, *settings) < LEVEL


def test_draws_without_replacement_must_remove_drawn_tokens(target, draft, monkeypatch, fresh_trace):
    """Sequoia siblings are drawn without replacement; a verifier that forgets to remove the drawn token from q
    before trying the next sibling is caught."""
    monkeypatch.setattr(multi_draft_mod, "without", lambda q, x: q)
    tokens, _ = sampled(target, DraftModel(draft, tree=DraftTree.kary((3, 2))), 1.0, 0, 1.0)
    assert law_pvalue(target, tokens, 1.0, 0, 1.0) < LEVEL


def test_mixed_sibling_rules_must_be_kept(target, draft, monkeypatch, fresh_trace):
    """Combined puts a deterministic n-gram sibling before heads siblings drawn without replacement; a verifier
    that treats every sibling as an independent draw (dropping the per-node rule) is caught."""
    monkeypatch.setattr(Draft, "continues", lambda self, tree: np.zeros(tree.num_nodes, bool))
    tokens, _ = sampled(target, make_drafter("combined", draft, DraftTree.chain(2)), 1.0, 0, 1.0)
    assert law_pvalue(target, tokens, 1.0, 0, 1.0) < LEVEL


@pytest.mark.parametrize("settings", [(1.0, 3, 1.0)], ids=["top-k"])
def test_q_recorded_without_the_filter_is_caught(target, settings):
    """A drafter that applies top-k / top-p to its draws but records the unfiltered q: caught."""
    drafter = make_drafter("independent", None, DraftTree.kary((2, 2)), record_unfiltered=True)
    tokens, _ = sampled(target, drafter, *settings)
    assert law_pvalue(target, tokens, *settings) < LEVEL


@pytest.mark.parametrize("tree", [DraftTree.chain(3), DraftTree.kary((3, 2))], ids=["chain", "sequoia"])
@pytest.mark.parametrize("settings", [(1.0, 0, 1.0), (0.7, 4, 0.9)], ids=["plain", "filtered"])
def test_sampled_draft_equal_to_target_is_always_accepted(target, tree, settings):
    """q == p at every node when the draft is the target: the first child is accepted with probability 1 at every
    depth, a strong check of q recording and of the draft's own cache."""
    _, st = sampled(target, DraftModel(target, tree=tree), *settings, rows=500)
    assert st.acceptance_per_depth.min() > 0.99
    ranks = np.asarray(st.rank_hist)
    assert ranks[:, 1:].sum() <= 0.01 * ranks.sum()       # rank 0 accepted, nothing else
