"""Statistical losslessness of speculative sampling: the joint distribution of the first three new tokens from a
speculative decode matches plain sampling from the target, for chains, trees drawn without replacement (Sequoia) and
trees of independent draws (SpecInfer); and the same check rejects a deliberately broken verifier."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import spectax
import spectax.verify.multi_draft as multi_draft_mod
import spectax.verify.speculative as speculative_mod
from spectax import DraftTree
from spectax.drafters import Draft, DraftModel, Replay
from spectax.models import Model, ModelConfig
from spectax.sampling import warp
from test_sampling import chi2_rejects, np_warp

SMALL = ModelConfig(arch="llama", vocab_size=8, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=8, intermediate_size=32, max_position=64)
PROMPT = [1, 5, 2]
ROWS = 8000
NEW = 3


@pytest.fixture(scope="module")
def target():
    return Model.random(SMALL, seed=11, scale=1.0)


@pytest.fixture(scope="module")
def draft(target):
    """An unrelated model of the same vocabulary: it disagrees often, so residuals are exercised."""
    return Model.random(SMALL, seed=12, scale=1.0)


@struct.dataclass
class IndependentDraws:
    """A context-free drafter: each node is an independent draw from its own fixed warped distribution."""

    logits_NV: jax.Array
    tree: DraftTree = struct.field(pytree_node=False)

    def check(self, target_config):
        pass

    def init(self, prompt_BP, prompt_len_B, cache_size, spec):
        return ()

    def propose(self, state, root_B, rng, spec, sampling):
        B, (N, V) = root_B.shape[0], self.logits_NV.shape
        logq = jax.nn.log_softmax(warp(jnp.broadcast_to(self.logits_NV, (B, N, V)), spec.sampler, sampling), -1)
        tokens = jax.random.categorical(rng, logq, axis=-1).astype(jnp.int32)
        return Draft(tokens_BN=tokens, q_BNV=jnp.exp(logq), without_replacement=False), state

    def update(self, state, verdict, new_tokens_BC, hidden_BTD, active_B):
        return state


def exact_joint(model, temperature, top_k, top_p):
    """float [V, V, V]: the exact distribution of the first three sampled tokens, by enumerating prefixes."""
    V = model.config.vocab_size
    seqs = np.array([PROMPT + [a, b] for a, b in itertools.product(range(V), repeat=2)], np.int32)   # [V*V, P+2]
    logits = np.asarray(model.logits(seqs))
    w = lambda x: np_warp(x, temperature, top_k, top_p)
    P = len(PROMPT)
    joint = np.zeros((V, V, V))
    p1 = w(logits[0, P - 1])
    for a, b in itertools.product(range(V), repeat=2):
        p2 = w(logits[a * V + b, P])
        p3 = w(logits[a * V + b, P + 1])
        joint[a, b] = p1[a] * p2[b] * p3
    return joint


def sampled_joint(model, drafter, temperature, top_k, top_p, rows=ROWS, seed=0):
    out = spectax.decode(model, [PROMPT] * rows, max_new_tokens=NEW, drafter=drafter, temperature=temperature,
                         top_k=top_k, top_p=top_p, rng=seed)
    toks = np.asarray(out.tokens)
    V = model.config.vocab_size
    counts = np.bincount((toks[:, 0] * V + toks[:, 1]) * V + toks[:, 2], minlength=V ** 3)
    return counts, out.stats


SETTINGS = [(0.5, 0, 1.0), (1.0, 0, 1.0), (1.5, 0, 1.0), (1.0, 3, 1.0), (1.5, 0, 0.8)]


def make_drafter(kind, draft, tree, rows=ROWS):
    if kind == "replay":   # deterministic draft tokens (q is one-hot): a fixed, context-free continuation
        reference = np.random.default_rng(4).integers(0, SMALL.vocab_size, (rows, 16))
        return Replay.create(reference, 0.0, tree)
    if kind == "independent":
        logits = jax.random.normal(jax.random.key(3), (tree.num_nodes, SMALL.vocab_size)) * 1.5
        return IndependentDraws(logits_NV=logits, tree=tree)
    return DraftModel(draft, tree=tree)


CASES = [("model", DraftTree.chain(2)), ("model", DraftTree.kary((3, 2))), ("independent", DraftTree.kary((2, 2))),
         ("replay", DraftTree.chain(2))]


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
@pytest.mark.parametrize("kind,tree", CASES, ids=["chain", "tree-sequoia", "tree-specinfer", "chain-deterministic"])
def test_speculative_sampling_is_lossless(target, draft, kind, tree, temperature, top_k, top_p):
    joint = exact_joint(target, temperature, top_k, top_p).ravel()
    counts, stats = sampled_joint(target, make_drafter(kind, draft, tree), temperature, top_k, top_p)
    assert (joint > 1e-3).sum() >= 8, "degenerate distribution: the test would have no power"
    hist = np.asarray(stats.accepted_hist).sum(0)
    assert hist[0] > 0 and hist[1:].sum() > 0, "the draft must be partly accepted, partly rejected"
    assert not chi2_rejects(counts, joint)


@pytest.mark.parametrize("module,kind,tree", [(speculative_mod, "model", DraftTree.chain(2)),
                                              (multi_draft_mod, "model", DraftTree.kary((3, 2))),
                                              (multi_draft_mod, "independent", DraftTree.kary((2, 2)))])
def test_a_broken_verifier_is_caught(target, draft, module, kind, tree, monkeypatch):
    """A verifier that draws the correction from p instead of the residual norm(max(0, p - q)) is biased towards
    the draft's tokens: the same check must reject it."""
    monkeypatch.setattr(module, "residual", lambda r, q: r)
    joint = exact_joint(target, 1.0, 0, 1.0).ravel()
    drafter = make_drafter(kind, draft, tree, rows=ROWS + 1)
    counts, _ = sampled_joint(target, drafter, 1.0, 0, 1.0, rows=ROWS + 1)  # a new shape: traced with the patch
    assert chi2_rejects(counts, joint)
