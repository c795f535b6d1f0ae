"""Sampling: warping semantics against a numpy oracle, and statistical tests (with teeth) of decode's draws."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectax
import spectax.sampling as sampling
from spectax.sampling import make_sampling, warp


def np_warp(logits_xV, temperature, top_k, top_p):
    """Numpy oracle, float64 [..., V]: temperature, then top-k, then top-p on the renormalised top-k distribution
    (HF's order).

    The tie rule (spectax.sampling.warp's): a token whose logit equals the last kept one is kept too, for top-k and
    top-p alike, so the law never depends on token ids. transformers keeps ties at the top-k cut as well, but its
    top-p drops tied tokens by their position in a sort, i.e. by token id."""
    x = np.asarray(logits_xV, np.float64) / temperature
    if top_k:
        kth = -np.sort(-x, axis=-1)[..., top_k - 1:top_k]
        x = np.where(x >= kth, x, -np.inf)
    if top_p < 1:
        desc = -np.sort(-x, axis=-1)
        p = np.exp(desc - desc[..., :1])
        p /= p.sum(-1, keepdims=True)
        before = np.cumsum(p, -1) - p
        cut = np.min(np.where(before < top_p, desc, np.inf), axis=-1, keepdims=True)
        x = np.where(x >= cut, x, -np.inf)
    p = np.exp(x - x.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def _warp_probs(logits, temperature, top_k, top_p):
    sampler, params = make_sampling(temperature, top_k, top_p)
    return np.asarray(jax.nn.softmax(warp(jnp.asarray(logits, jnp.float32), sampler, params), -1))


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.5, 5, 1.0), (1.0, 0, 0.6),
                                                     (0.7, 12, 0.9), (2.0, 1, 1.0), (1.0, 0, 1e-6)])
def test_warp_matches_oracle(temperature, top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(3, 40)) * 2
    np.testing.assert_allclose(_warp_probs(logits, temperature, top_k, top_p),
                               np_warp(logits, temperature, top_k, top_p), atol=1e-6)


TIES = [  # (logits, top_k, top_p, the tokens that must survive)
    ([1.0, 1.0, 0.0], 0, 0.3, [0, 1]),              # top-p reached inside a tie: both tied tokens stay
    ([0.0, 1.0, 1.0], 0, 0.3, [1, 2]),              # the same law whatever the tied tokens' ids
    ([1.0, 1.0, 0.0], 1, 1.0, [0, 1]),              # top-k cut inside a tie
    ([2.0, 1.0, 1.0, 1.0, 0.0], 2, 1.0, [0, 1, 2, 3]),
    ([2.0, 1.0, 1.0, 0.0], 0, 0.7, [0, 1, 2]),      # the cut falls on the second of two tied tokens
    ([3.0, 3.0, 3.0, 3.0], 2, 0.1, [0, 1, 2, 3]),   # all tied: nothing can be cut
    ([1.0, 1.0, 0.5, 0.5, 0.0], 3, 0.8, [0, 1, 2, 3]),
]


@pytest.mark.parametrize("logits,top_k,top_p,kept", TIES)
def test_ties_at_the_cut_are_kept(logits, top_k, top_p, kept):
    """Exact ties: every token tied with the last kept one stays (warp and the oracle agree, and the set is the
    documented one), for top-k, top-p and both."""
    got = _warp_probs(np.array([logits]), 1.0, top_k, top_p)[0]
    np.testing.assert_array_equal(np.flatnonzero(got > 0), kept)
    np.testing.assert_allclose(got, np_warp(np.array(logits), 1.0, top_k, top_p), atol=1e-6)
    tied = np.asarray(logits)[kept]
    np.testing.assert_allclose(got[kept], np.exp(tied) / np.exp(tied).sum(), atol=1e-6)


def chi2_rejects(counts, probs, z=3.72):
    """Chi-square goodness of fit at p ~ 1e-4 (Wilson-Hilferty quantile); cells with < 5 expected are pooled.

    Returns True when the counts are implausible under `probs` (a count in a zero-probability cell always is)."""
    n = counts.sum()
    if (counts[probs == 0] > 0).any():
        return True
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    stat = ((obs - exp) ** 2 / exp).sum()
    df = len(obs) - 1
    crit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat > crit


N_ROWS = 6000
PROMPT = [5, 17, 33, 2]


def two_token_distributions(model, temperature, top_k, top_p):
    """Exact distributions of the first and second sampled tokens (the second marginalised over the first)."""
    V = model.config.vocab_size
    buf = np.zeros((V + 1, 8), np.int32)
    buf[:, :4] = PROMPT
    buf[1:, 4] = np.arange(V)
    logits = np.asarray(model.logits(buf))
    p1 = np_warp(logits[0, 3], temperature, top_k, top_p)
    p2 = sum(p1[t] * np_warp(logits[1 + t, 4], temperature, top_k, top_p) for t in range(V) if p1[t] > 0)
    return p1, p2


def sampled_counts(model, temperature, top_k, top_p, seed=0, rows=N_ROWS):
    out = spectax.decode(model, [PROMPT] * rows, max_new_tokens=2, temperature=temperature, top_k=top_k,
                         top_p=top_p, rng=seed)
    toks = np.asarray(out.tokens)
    V = model.config.vocab_size
    return np.bincount(toks[:, 0], minlength=V), np.bincount(toks[:, 1], minlength=V)


SETTINGS = [(0.5, 0, 1.0), (1.0, 0, 1.0), (1.5, 0, 1.0), (1.0, 8, 1.0), (1.0, 0, 0.8), (1.5, 20, 0.9)]


@pytest.fixture(scope="module")
def flat_llama():
    # small weights: a spread-out distribution, so the test sees many tokens with real probability
    from conftest import TINY_LLAMA
    return spectax.Model.random(TINY_LLAMA, seed=3, scale=1.0)


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_decode_samples_the_warped_target_distribution(flat_llama, temperature, top_k, top_p):
    p1, p2 = two_token_distributions(flat_llama, temperature, top_k, top_p)
    c1, c2 = sampled_counts(flat_llama, temperature, top_k, top_p)
    assert (p1 > 1e-3).sum() >= 5, "degenerate distribution: the test would have no power"
    assert not chi2_rejects(c1, p1), "first token"
    assert not chi2_rejects(c2, p2), "second token (sampled inside the loop)"


def test_the_statistical_test_has_teeth(flat_llama):
    """The same check rejects draws from a neighbouring setting, and draws from a deliberately broken sampler."""
    p1, _ = two_token_distributions(flat_llama, 1.0, 0, 1.0)
    c1_hot, _ = sampled_counts(flat_llama, 1.3, 0, 1.0)
    assert chi2_rejects(c1_hot, p1), "temperature 1.3 draws passed as temperature 1.0"
    p1_topp, _ = two_token_distributions(flat_llama, 1.0, 0, 0.8)
    c1_full, _ = sampled_counts(flat_llama, 1.0, 0, 0.95)
    assert chi2_rejects(c1_full, p1_topp), "top_p 0.95 draws passed as top_p 0.8"


def test_broken_sampler_is_caught(flat_llama, monkeypatch):
    """A sampler that forgets the temperature: the check must reject what decode then draws."""
    p1, p2 = two_token_distributions(flat_llama, 0.5, 0, 1.0)
    original = sampling.warp
    broken = lambda logits, sampler, params: original(logits, sampler, params.replace(temperature=jnp.float32(1.0)))
    monkeypatch.setattr(sampling, "warp", broken)
    c1, c2 = sampled_counts(flat_llama, 0.5, 0, 1.0, seed=1, rows=N_ROWS + 1)  # a new shape: traced with the patch
    assert chi2_rejects(c1, p1) and chi2_rejects(c2, p2)


def test_greedy_is_argmax_of_the_forward(flat_llama):
    out = spectax.decode(flat_llama, [PROMPT], max_new_tokens=1)
    assert int(out.tokens[0, 0]) == int(np.argmax(np.asarray(flat_llama.logits(np.array([PROMPT])))[0, -1]))
