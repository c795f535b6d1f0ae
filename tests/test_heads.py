"""Heads (blockwise / Medusa / Cerberus): greedy == plain greedy for every kind and tree, one target forward per
step, the Cerberus gate, sampling losslessness with teeth, training (loss falls, resume is bit-exact), save / load,
and bad input before tracing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectax
import spectax.api as api
import spectax.models.model as model_mod
import spectax.verify.multi_draft as multi_draft_mod
from law_matrix import law_settings
from spectax import DraftTree
from spectax.drafters import Heads
from spectax.drafters.heads import KINDS
from spectax.models import Model, ModelConfig
from spectax.train import distill
from spectax.train import fit as fit_mod
from spectax.train import heads as train_heads
from test_speculative import Recording, StepLog

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 11, [3]]
NEW = 24
TREES = {"chain": DraftTree.chain(3), "paths": DraftTree.from_paths([(0,), (1,), (0, 0), (1, 0), (0, 1), (0, 0, 0)]),
         "optimal": DraftTree.optimal([[0.6, 0.2, 0.1], [0.4, 0.2, 0.1], [0.3, 0.1, 0.1]], budget=8, max_depth=3)}


MARKOV = ModelConfig(arch="llama", vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=16, intermediate_size=128, max_position=512)
DRAFT_VOCAB = np.arange(70)      # the heads' reduced vocabulary: the other 27 ids are never proposed


@pytest.fixture(scope="module")
def tiny_llama():
    """A tiny target whose greedy continuation is learnable (random models' outputs are not): small random layers
    on top of an LM head that maps each token's embedding to f(token), f a fixed permutation of the vocabulary."""
    model = Model.random(MARKOV, seed=7, scale=0.05)
    p = jax.tree_util.tree_map(np.asarray, model.params)
    rng = np.random.default_rng(7)
    f, embed = rng.permutation(97), rng.normal(size=(97, 64)).astype(np.float32)
    p["embed"]["embedding"], p["final_norm"]["scale"] = embed, np.ones(64, np.float32)
    p["lm_head"]["kernel"] = 0.1 * embed[np.argsort(f)].T          # column u holds the embedding of f^-1(u)
    return Model.create(MARKOV, p)


@pytest.fixture(scope="module")
def data_dir(tiny_llama, tmp_path_factory):
    """Self-distillation data from the tiny model: its greedy answers to random prompts, and its hidden states."""
    root = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 97, rng.integers(3, 12)).tolist() for _ in range(96)]
    distill.generate_ids(tiny_llama, prompts[:80], root / "train", eos_id=None, max_new_tokens=40, batch=40,
                         shard_size=40)
    distill.generate_ids(tiny_llama, prompts[80:], root / "eval", eos_id=None, max_new_tokens=40, batch=16,
                         shard_size=16)
    for split in ("train", "eval"):
        distill.cache_hidden(tiny_llama, root / split, root / "hidden" / split)
    return root


def small_config(kind, steps=300, **kw):
    return train_heads.TrainConfig(kind=kind, num_heads=3, draft_vocab=70, steps=steps, batch=64, lr=3e-3,
                                   warmup=10, checkpoint_every=100, **kw)


def train_quietly(model, data, vocab, cfg, path):
    return train_heads.train(model, data, vocab, cfg, path, log=lambda *a: None, progress=False)


@pytest.fixture(scope="module")
def trained(tiny_llama, data_dir, tmp_path_factory):
    """Heads of every kind trained on the tiny model's own answers. With the reduced draft vocabulary they are right
    often, not always (~70% per head): steps both accept whole paths and reject."""
    data = train_heads.load_data(data_dir / "hidden" / "train", 3)
    return {kind: train_quietly(tiny_llama, data, DRAFT_VOCAB, small_config(kind), tmp_path_factory.mktemp(kind))
            for kind in KINDS}


@pytest.fixture(scope="module")
def plain(tiny_llama):
    return {n: spectax.decode(tiny_llama, PROMPTS[:n], NEW) for n in (1, 4)}


def assert_plain(out, want):
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_array_equal(out.lengths, want.lengths)


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_with_heads_equals_plain_greedy(tiny_llama, trained, plain, kind, tree):
    random = Heads.create(tiny_llama, kind=kind, num_heads=3, tree=TREES[tree], seed=4)
    for heads in (random, trained[kind].replace(tree=TREES[tree])):
        for n in (1, 4):
            assert_plain(spectax.decode(tiny_llama, PROMPTS[:n], NEW, drafter=heads), plain[n])
    out = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=trained[kind].replace(tree=TREES[tree]))
    hist = np.asarray(out.stats.accepted_hist).sum(0)
    assert out.stats.tau > 1.3 and hist[:-1].sum() > 0, "trained heads must be accepted often, not always"


def test_heads_accept_rank_above_zero(tiny_llama, data_dir, plain, tmp_path):
    """Briefly trained heads (30 steps, full vocabulary) are often right only in second place: a rank > 0 node is
    accepted, so commit_path's moves run end to end."""
    data = train_heads.load_data(data_dir / "hidden" / "train", 3)
    brief = train_quietly(tiny_llama, data, np.arange(97), small_config("blockwise", steps=30), tmp_path)
    out = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=brief.replace(tree=TREES["paths"]))
    assert_plain(out, plain[4])
    assert np.asarray(out.stats.rank_hist)[:, 1:-1].sum() > 0, "a rank > 0 node must be accepted and committed"


class ForwardLog:
    """Wraps Model.forward: counts calls at trace time (by token count T) and, at run time, the T of every executed
    target forward (through jax.debug.callback)."""

    def __init__(self, monkeypatch, model):
        self.traced, self.ran, self.model = [], [], model
        original = model_mod.Model.forward

        def forward(m, tokens_BT, *args, **kw):
            if m.config == self.model.config:                 # the target (no other model runs in these decodes)
                T = tokens_BT.shape[1]
                self.traced.append(T)
                jax.debug.callback(lambda: self.ran.append(T), ordered=True)
            return original(m, tokens_BT, *args, **kw)

        monkeypatch.setattr(model_mod.Model, "forward", forward)


def gate_at(model, plain, quantile, rows=4):
    """A gate at this quantile of the target's entropies along the plain greedy outputs of the first `rows` prompts:
    rows both open and close."""
    from spectax.drafters.heads import entropy
    seqs = [p + np.asarray(t).tolist() for p, t in zip(PROMPTS[:rows], plain[4].tokens)]
    width = max(map(len, seqs))
    logits = model.logits(np.array([s + [0] * (width - len(s)) for s in seqs], np.int32))
    ent = np.concatenate([np.asarray(entropy(logits[i, len(p) - 1:len(s) - 1])) for i, (p, s) in
                          enumerate(zip(PROMPTS, seqs))])
    return float(np.quantile(ent, quantile))


def gated(heads, gate):
    return heads.replace(config=dataclasses.replace(heads.config, gate=gate))


@pytest.mark.parametrize("kind", ["medusa", "cerberus"])
def test_one_target_forward_per_step(tiny_llama, trained, plain, kind, monkeypatch, fresh_trace):
    """Counted at trace time (the loop body holds one target forward, or one per lax.switch branch) and at run time
    (one executed forward per step, equal to stats.target_calls and to the number of steps)."""
    heads = trained[kind].replace(tree=TREES["paths"])
    prompts = PROMPTS if kind == "medusa" else PROMPTS[:1]     # one row: a step is gated exactly when it is
    if kind == "cerberus":
        heads = gated(heads, gate_at(tiny_llama, plain, 0.5, rows=1))
    log = ForwardLog(monkeypatch, tiny_llama)
    steps = StepLog()
    out = spectax.decode(tiny_llama, prompts, NEW, drafter=Recording(heads, steps))
    T = 1 + heads.tree.num_nodes
    assert sorted(log.traced[1:]) == ([T] if kind == "medusa" else [1, T]), "after the prefill: the loop body's forwards"
    executed = log.ran[1:]                                           # after the prefill's one forward
    assert len(executed) == int(out.stats.target_calls) == len(steps.steps)
    if kind == "cerberus":
        assert T in executed and 1 in executed, "the gate must both open and close on this run"


def test_cerberus_gate_closed_is_plain_decoding(tiny_llama, trained, plain, monkeypatch, fresh_trace):
    heads = trained["cerberus"].replace(tree=TREES["paths"])
    closed = gated(heads, 0.0)                                                 # every entropy is > 0
    log = ForwardLog(monkeypatch, tiny_llama)
    out = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=closed)
    assert_plain(out, plain[4])
    assert set(log.ran[1:]) == {1}, "a closed gate must run plain steps only (no tree in the forward)"
    assert int(np.asarray(out.stats.speculated).sum()) == 0 and out.stats.tau == 1.0


def test_cerberus_gate_open_is_ungated_parallel_decoding(tiny_llama, trained, plain):
    heads = trained["cerberus"].replace(tree=TREES["paths"])
    ungated = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=heads)
    opened = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=gated(heads, 1e9))
    assert_plain(opened, plain[4])
    np.testing.assert_array_equal(opened.stats.accepted_hist, ungated.stats.accepted_hist)
    assert int(opened.stats.target_calls) == int(ungated.stats.target_calls)


def test_cerberus_gate_mixed_rows_stay_exact(tiny_llama, trained, plain):
    """A gate between the entropies seen: some rows speculate while others do not, in the same step."""
    heads = trained["cerberus"].replace(tree=TREES["paths"])
    out = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=gated(heads, gate_at(tiny_llama, plain, 0.5)))
    assert_plain(out, plain[4])
    spec = np.asarray(out.stats.speculated)
    calls = np.asarray(out.stats.row_calls)
    assert (spec < calls).any() and spec.sum() > 0


# ------------------------------------------------------------------------------------------------------- sampling

@pytest.fixture(scope="module")
def small_target():
    from test_speculative_sampling import SMALL
    return spectax.Model.random(SMALL, seed=11, scale=1.0)


@pytest.mark.parametrize("temperature,top_k,top_p", law_settings("heads"))
@pytest.mark.parametrize("kind,tree", [("medusa", DraftTree.chain(2)), ("cerberus", DraftTree.kary((3, 2)))],
                         ids=["medusa-chain", "cerberus-tree"])
def test_sampling_with_heads_is_lossless(small_target, kind, tree, temperature, top_k, top_p):
    """The law of the first 6 sampled tokens given their prefixes (several verify steps per row), see
    test_speculative_sampling; q is the heads' warped distribution over a reduced draft vocabulary (6 of 8 ids)."""
    from test_speculative_sampling import LEVEL, law_pvalue, sampled
    heads = Heads.create(small_target, kind=kind, num_heads=2, tree=tree, seed=5, vocab_ids=np.arange(6),
                         scale=4.0, gate=1.9 if kind == "cerberus" else None)
    settings = (temperature, top_k, top_p)
    tokens, st = sampled(small_target, heads, *settings)
    hist = np.asarray(st.accepted_hist).sum(0)
    assert hist[0] > 0 and hist[1:].sum() > 0 and np.asarray(st.row_calls).min() >= 2
    if kind == "cerberus":
        gated_off = int((np.asarray(st.row_calls) - np.asarray(st.speculated)).sum())
        assert gated_off > 0 and int(np.asarray(st.speculated).sum()) > 0, "the gate must close on some steps only"
    assert law_pvalue(small_target, tokens, *settings) > LEVEL


def test_sampling_with_heads_broken_verifier_is_caught(small_target, monkeypatch, fresh_trace):
    from test_speculative_sampling import LEVEL, TEETH_ROWS, law_pvalue, sampled
    monkeypatch.setattr(multi_draft_mod, "residual", lambda r, q: r)
    heads = Heads.create(small_target, kind="medusa", num_heads=2, tree=DraftTree.kary((3, 2)), seed=5, scale=4.0)
    tokens, _ = sampled(small_target, heads, 1.0, 0, 1.0, rows=TEETH_ROWS)  # p < 1e-70 measured
    assert law_pvalue(small_target, tokens, 1.0, 0, 1.0) < LEVEL


# ------------------------------------------------------------------------------------------------------- training

def test_training_loss_falls_and_heads_learn(tiny_llama, data_dir, trained):
    data = train_heads.load_data(data_dir / "hidden" / "train", 3)
    held_out = train_heads.load_data(data_dir / "hidden" / "eval", 3)
    table = jnp.asarray(np.asarray(tiny_llama.params["lm_head"]["kernel"]).T)[DRAFT_VOCAB]
    target = jnp.asarray(train_heads.to_draft_index(data.labels_XD[:512], DRAFT_VOCAB, 97))
    x = jnp.asarray(data.hidden_XE[:512], jnp.float32)
    h = trained["medusa"]
    start = train_heads.loss_fn(train_heads.init_params(h.config, 0), h.config, table, x, target)
    end = train_heads.loss_fn(h.params, h.config, table, x, target)
    assert float(end) < 0.7 * float(start)
    acc = train_heads.evaluate(h, tiny_llama, held_out)
    assert acc.shape == (3, 5) and (np.diff(acc, axis=1) >= 0).all()
    assert acc[0, 0] > 0.5 and acc[-1, 0] > 0.5        # labels outside the 70-token draft vocabulary are misses


def count_steps(monkeypatch, module):
    """Records the step of every batch `module`'s trainer draws (one per training step the call runs)."""
    steps, batch_rows = [], module.batch_rows
    monkeypatch.setattr(module, "batch_rows", lambda n, cfg, step: steps.append(step) or batch_rows(n, cfg, step))
    return steps


def test_resumed_training_is_bit_exact(tiny_llama, data_dir, tmp_path, monkeypatch):
    """A run split at step 20 ends bit-equal to a straight run, and the restore is what made it so: the call that
    restores at step 20 trains no step, the resuming call trains only steps 20..39 (retraining from scratch would
    draw the same batches, so equal weights alone would not prove a restore)."""
    data = train_heads.load_data(data_dir / "hidden" / "train", 3)
    quiet = dict(log=lambda *a: None, progress=False)
    cfg = small_config("cerberus", steps=40)
    straight = train_heads.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "a", **quiet)
    first = train_heads.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "b", stop_at=20, **quiet)
    steps = count_steps(monkeypatch, train_heads)
    restored = train_heads.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "b", stop_at=20, **quiet)
    assert steps == []
    for k in first.params:
        np.testing.assert_array_equal(restored.params[k], first.params[k])      # the checkpoint restores bit-exact
    resumed = train_heads.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "b", **quiet)
    assert steps == list(range(20, 40))
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])


def test_a_resume_that_never_restores_is_caught(tiny_llama, data_dir, tmp_path, monkeypatch):
    """The tooth of the test above: a trainer that ignores its checkpoints still ends bit-equal to the straight run
    (the batch order is a function of (seed, step)), so only the step count tells it from a real resume."""
    data = train_heads.load_data(data_dir / "hidden" / "train", 3)
    quiet = dict(log=lambda *a: None, progress=False)
    cfg = small_config("cerberus", steps=40)
    straight = train_heads.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "a", **quiet)
    monkeypatch.setattr(fit_mod.ocp.CheckpointManager, "latest_step", lambda self: None)
    train_heads.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "b", stop_at=20, **quiet)
    steps = count_steps(monkeypatch, train_heads)
    resumed = train_heads.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "b", **quiet)
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])
    assert steps == list(range(40))


def test_save_load_round_trip(tiny_llama, trained, tmp_path):
    heads = trained["blockwise"].replace(tree=TREES["paths"], vocab_ids=jnp.arange(90))
    heads.save(tmp_path / "h")
    back = Heads.load(tmp_path / "h")
    assert back.config == heads.config and back.tree == heads.tree
    np.testing.assert_array_equal(back.vocab_ids, heads.vocab_ids)
    for k in heads.params:
        np.testing.assert_array_equal(back.params[k], heads.params[k])
    with pytest.raises(ValueError, match="exists"):
        heads.save(tmp_path / "h")
    with pytest.raises(ValueError, match="heads"):
        Heads.load(tmp_path)


def test_reduced_draft_vocabulary_stays_exact(tiny_llama, trained, plain):
    heads = trained["medusa"].replace(tree=TREES["paths"], vocab_ids=jnp.arange(0, 97, 2))
    assert_plain(spectax.decode(tiny_llama, PROMPTS, NEW, drafter=heads), plain[4])


BAD = [
    (lambda m, h: h.replace(config=dataclasses.replace(h.config, hidden_size=48)), "hidden size"),
    (lambda m, h: h.replace(config=dataclasses.replace(h.config, vocab_size=50)), "vocabulary"),
    (lambda m, h: h.replace(tree=DraftTree.chain(4)), "only 3 heads"),
    (lambda m, h: h.replace(vocab_ids=jnp.array([1, 2, 97])), "vocabulary ids"),
    (lambda m, h: h.replace(vocab_ids=jnp.array([1, 1, 2])), "distinct"),
    (lambda m, h: h.replace(tree=DraftTree.kary((3,)), vocab_ids=jnp.array([1, 2])), "siblings"),
]


@pytest.mark.parametrize("make,word", BAD)
def test_bad_heads_raise_before_tracing(tiny_llama, make, word, monkeypatch):
    heads = Heads.create(tiny_llama, kind="medusa", num_heads=3)
    monkeypatch.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    with pytest.raises(ValueError, match=word):
        spectax.decode(tiny_llama, PROMPTS, 8, drafter=make(tiny_llama, heads))


@pytest.mark.parametrize("kwargs,word", [(dict(kind="hydra"), "kind"), (dict(num_heads=0), "num_heads"),
                                         (dict(gate=1.0), "cerberus"), (dict(vocab_ids=[-1, 3]), "vocabulary")])
def test_bad_heads_config(tiny_llama, kwargs, word):
    with pytest.raises(ValueError, match=word):
        Heads.create(tiny_llama, **kwargs)


def test_lossy_blockwise_rules_with_heads(tiny_llama, trained, plain):
    """Stern's opt-in variants: top-1 match is exact greedy; a minimum block of 2 commits >= 2 draft tokens every
    step; top-k approximate acceptance and Medusa's typical acceptance accept at least as much as exact matching."""
    from spectax.verify import TopKMatch, Typical
    heads = trained["blockwise"].replace(tree=DraftTree.chain(3))
    exact = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=heads, lossy=TopKMatch(k=1))
    assert_plain(exact, plain[4])
    block = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=heads, lossy=TopKMatch(k=1, min_block=2))
    assert np.asarray(block.stats.accepted_hist)[:, :2].sum() == 0 and block.stats.tau >= 3.0
    loose = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=heads, lossy=TopKMatch(k=5))
    assert loose.stats.tau >= exact.stats.tau
    typical = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=heads, lossy=Typical(), temperature=0.7)
    assert typical.stats.tau > 1.3 and (np.asarray(typical.lengths) == NEW).all()
    with pytest.raises(ValueError, match="min_block"):
        TopKMatch(k=1, min_block=-1)
