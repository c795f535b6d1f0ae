"""Block drafter: greedy == plain greedy (chain and tree, batch 1 and 4 ragged, random and trained), one target and
one draft forward per step, sampling losslessness with teeth (chain and tree), training (loss falls, restore and
resume are bit-exact), save / load, and bad input before tracing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import spectax
import spectax.api as api
import spectax.drafters.block as block_mod
import spectax.verify.multi_draft as multi_draft_mod
import spectax.verify.speculative as speculative_mod
from law_matrix import law_settings
from spectax import DraftTree
from spectax.cache import KVCache
from spectax.drafters import Block
from spectax.models import Model
from spectax.train import block as train_block
from spectax.train import distill
from test_heads import MARKOV, PROMPTS, ForwardLog, assert_plain, count_steps, data_dir, tiny_llama  # noqa: F401 (fixtures)
from test_speculative import Recording, StepLog

NEW = 24
LAYERS = (0, 1)
DRAFT_VOCAB = np.arange(70)      # the reduced draft vocabulary: the other 27 ids are never proposed
TREES = {"chain": DraftTree.chain(4), "tree": DraftTree.from_paths([(0,), (1,), (0, 0), (1, 0), (0, 1), (0, 0, 0),
                                                                    (0, 0, 0, 0)])}


@pytest.fixture(scope="module")
def features(tiny_llama, data_dir):  # noqa: F811
    """The tiny model's self-distillation data with its layers' outputs at every position."""
    for split in ("train", "eval"):
        distill.cache_features(tiny_llama, data_dir / split, distill.features_dir(data_dir, LAYERS) / split, LAYERS)
    return {split: train_block.load_data(data_dir, split, LAYERS) for split in ("train", "eval")}


def small_config(steps=250, **kw):
    return train_block.TrainConfig(block_size=4, num_layers=1, target_layers=LAYERS, draft_vocab=70, steps=steps,
                                   batch=8, anchors=8, decay=3.0, lr=1e-2, warmup=10, checkpoint_every=50, **kw)


QUIET = dict(log=lambda *a: None, progress=False)


@pytest.fixture(scope="module")
def trained(tiny_llama, features, tmp_path_factory):  # noqa: F811
    """A block drafter trained on the tiny model's own answers: right often, not always (reduced vocabulary)."""
    return train_block.train(tiny_llama, features["train"], DRAFT_VOCAB, small_config(),
                             tmp_path_factory.mktemp("block"), **QUIET)


@pytest.fixture(scope="module")
def plain(tiny_llama):  # noqa: F811
    return {n: spectax.decode(tiny_llama, PROMPTS[:n], NEW) for n in (1, 4)}


@pytest.mark.parametrize("tree", list(TREES))
def test_greedy_with_block_equals_plain_greedy(tiny_llama, trained, plain, tree):  # noqa: F811
    random = Block.create(tiny_llama, block_size=4, tree=TREES[tree], seed=3)
    for drafter in (random, trained.replace(tree=TREES[tree])):
        for n in (1, 4):
            assert_plain(spectax.decode(tiny_llama, PROMPTS[:n], NEW, drafter=drafter), plain[n])
    out = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=trained.replace(tree=TREES[tree]))
    hist = np.asarray(out.stats.accepted_hist).sum(0)
    assert out.stats.tau > 1.5 and hist[:-1].sum() > 0, "the trained drafter must be accepted often, not always"
    if tree == "tree":
        assert np.asarray(out.stats.rank_hist)[:, 1:-1].sum() > 0, "a rank > 0 node must be accepted"


def test_one_target_and_one_draft_forward_per_step(tiny_llama, trained, monkeypatch, fresh_trace):  # noqa: F811
    """Counted at trace time (the loop body holds one target forward and one draft forward) and at run time (one of
    each executed per step, equal to stats.target_calls)."""
    log = ForwardLog(monkeypatch, tiny_llama)
    traced, ran = [], []
    original = block_mod.block_logits

    def counted(*args, **kw):
        traced.append(1)
        jax.debug.callback(lambda: ran.append(1), ordered=True)
        return original(*args, **kw)

    monkeypatch.setattr(block_mod, "block_logits", counted)
    steps = StepLog()
    drafter = trained.replace(tree=TREES["tree"])
    out = spectax.decode(tiny_llama, PROMPTS, NEW, drafter=Recording(drafter, steps))
    assert log.traced[1:] == [1 + drafter.tree.num_nodes] and len(traced) == 1
    assert len(log.ran) - 1 == len(ran) == int(out.stats.target_calls) == len(steps.steps)


THREE = dataclasses.replace(MARKOV, num_layers=3)


def rms_normed(x, eps):
    """The final norm with unit scale, in numpy: x / sqrt(mean(x^2) + eps) over the last axis."""
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def oracle_features(model, tokens_BT, layer):
    """The residual stream after `layer`, final norm aside, from a plain forward (no features_at, no cache) of the
    model cut after that layer with a unit final norm: its hidden output is exactly that stream, normed."""
    from spectax.models.ensemble import early_exit
    cut = model if layer + 1 == model.config.num_layers else early_exit(model, layer + 1)
    cut = Model.create(cut.config, {**cut.params, "final_norm": {"scale": np.ones(cut.config.hidden_size,
                                                                                 np.float32)}})
    T = tokens_BT.shape[1]
    out = cut.forward(tokens_BT, jnp.broadcast_to(jnp.arange(T), tokens_BT.shape), None,
                      jnp.zeros((tokens_BT.shape[0],), jnp.int32), jnp.tril(jnp.ones((T, T), bool)))
    return np.asarray(out.hidden_BTE)


@pytest.mark.parametrize("layers", [(0, 1, 2), (1,)])
def test_features_are_the_residual_stream_after_each_layer(layers):
    """Model.forward's features (no cache), the chunked prefill's (a prompt of three chunks) and the cached
    one-token steps' (the decode path) are each chosen layer's output, checked against the independent oracle
    above at every chosen layer; logits are unchanged by asking for features."""
    model = Model.random(THREE, seed=3, scale=0.3)
    eps, T, C = THREE.norm_eps, 11, 4
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 97, (2, T)), jnp.int32)
    pos, zero, causal = jnp.broadcast_to(jnp.arange(T), (2, T)), jnp.zeros((2,), jnp.int32), jnp.tril(
        jnp.ones((T, T), bool))
    full = model.forward(tokens, pos, None, zero, causal, features_at=layers)
    np.testing.assert_array_equal(full.logits_BTV, model.forward(tokens, pos, None, zero, causal).logits_BTV)
    padded = jnp.pad(tokens, ((0, 0), (0, 1)))                                     # bucket 12: three chunks of 4
    cache = KVCache.create(THREE, 2, 16, jnp.float32)
    prefill = model.prefill(padded, jnp.full((2,), T, jnp.int32), cache.layers, C, features_at=layers)

    def step(kv, t):                                                               # one cached token, as decoding
        tok, p = lax.dynamic_slice_in_dim(tokens, t, 1, 1), jnp.full((2, 1), t)
        out = model.forward(tok, p, kv, jnp.full((2,), t, jnp.int32), jnp.ones((1, 1), bool), features_at=layers)
        return out.kv, out.features_BTLpE[:, 0]

    _, steps = lax.scan(step, cache.layers, jnp.arange(T))                         # [T, B, Lp, E]
    paths = {"forward": full.features_BTLpE, "prefill": prefill.features_BTLpE[:, :T],
             "steps": jnp.moveaxis(steps, 0, 1)}
    for i, layer in enumerate(layers):
        want = oracle_features(model, tokens, layer)
        for name, feats in paths.items():
            assert feats.shape == (2, T, len(layers), THREE.hidden_size)
            np.testing.assert_allclose(rms_normed(feats[:, :, i], eps), want, rtol=2e-5, atol=2e-5,
                                       err_msg=f"{name} features at layer {layer}")
    with pytest.raises(ValueError, match="feature layers"):
        model.forward(tokens, pos, None, zero, causal, features_at=(1, 0))


def test_the_feature_oracle_tells_layers_apart():
    """The oracle's tooth: the residual stream after layer 1 is not the one after layer 0 or 2 (normed), so a
    feature taken one layer off is caught."""
    model = Model.random(THREE, seed=3, scale=0.3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 97, (2, 11)), jnp.int32)
    out = model.forward(tokens, jnp.broadcast_to(jnp.arange(11), (2, 11)), None, jnp.zeros((2,), jnp.int32),
                        jnp.tril(jnp.ones((11, 11), bool)), features_at=(0, 1, 2))
    oracles = [oracle_features(model, tokens, layer) for layer in range(3)]
    for i in range(3):
        for layer in range(3):
            close = np.allclose(rms_normed(out.features_BTLpE[:, :, i], THREE.norm_eps), oracles[layer],
                                rtol=2e-5, atol=2e-5)
            assert close == (i == layer)


def test_training_forward_is_the_decoding_forward(tiny_llama, features, trained):  # noqa: F811
    """The training pass (context as extra rows, one call for many anchors) gives the logits the decoder's
    block_logits gives over a context cache, anchor by anchor."""
    data, block = features["eval"], trained.replace(params={**trained.params, "layers_1": trained.params["layers_0"]},
                                                    config=dataclasses.replace(trained.config, layer=dataclasses.replace(
                                                        trained.config.layer, num_layers=2)))
    embed = jnp.asarray(block_mod.input_embedding(tiny_llama))
    table = jnp.asarray(block_mod.head_table(tiny_llama))[block.vocab_ids]
    rows = np.arange(3)
    anchors = train_block.anchors_for(data, rows, 5, np.random.default_rng(1))
    tokens, feats = jnp.asarray(data.tokens_XW[rows]), jnp.asarray(data.features_XWLpE[rows])
    got = train_block.anchor_logits(block.config, block.params, embed, table, tokens, feats, jnp.asarray(anchors))
    W = tokens.shape[1]
    ctx = block_mod.fused_context(block.config, block.params, feats)
    context = block_mod.context_kv(block.config, block.params, ctx, jnp.broadcast_to(jnp.arange(W), (3, W)))
    cache = tuple((jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)) for k, v in context)
    for a in range(5):
        want = block_mod.block_logits(block.config, block.params, embed, table, tokens[rows, anchors[:, a]],
                                      ctx[rows, anchors[:, a] - 1], cache, jnp.asarray(anchors[:, a]))
        np.testing.assert_allclose(got[:, a], want, rtol=2e-4, atol=2e-4)


# ------------------------------------------------------------------------------------------------------- sampling

@pytest.fixture(scope="module")
def small_target():
    from test_speculative_sampling import SMALL
    return spectax.Model.random(SMALL, seed=11, scale=1.0)


def sharp_block(target, tree, seed=5):
    """A random block drafter with sharp, varied distributions (the mask vector scaled up): it is right sometimes."""
    block = Block.create(target, block_size=2, tree=tree, seed=seed, vocab_ids=np.arange(6))
    return block.replace(params={**block.params, "mask": 4.0 * block.params["mask"],
                                 "final_norm": 6.0 * block.params["final_norm"]})


@pytest.mark.parametrize("temperature,top_k,top_p", law_settings("block"))
@pytest.mark.parametrize("tree", [DraftTree.chain(2), DraftTree.kary((3, 2))], ids=["chain", "tree"])
def test_sampling_with_block_is_lossless(small_target, tree, temperature, top_k, top_p):
    """The law of the first 6 sampled tokens given their prefixes (several verify steps per row), as in
    test_speculative_sampling; q is the block's warped distribution per position over 6 of 8 ids. Today's 3 of
    the 9 settings (tests/law_matrix.py)."""
    from test_speculative_sampling import LEVEL, law_pvalue, sampled
    settings = (temperature, top_k, top_p)
    tokens, st = sampled(small_target, sharp_block(small_target, tree), *settings)
    hist = np.asarray(st.accepted_hist).sum(0)
    assert hist[0] > 0 and hist[1:].sum() > 0 and np.asarray(st.row_calls).min() >= 2
    assert law_pvalue(small_target, tokens, *settings) > LEVEL


@pytest.mark.parametrize("tree", [DraftTree.chain(2), DraftTree.kary((3, 2))], ids=["chain", "tree"])
def test_sampling_with_block_broken_verifier_is_caught(small_target, tree, monkeypatch, fresh_trace):
    """The same test fails when the verifier skips the residual (resamples from the target instead)."""
    from test_speculative_sampling import LEVEL, TEETH_ROWS, law_pvalue, sampled
    monkeypatch.setattr(multi_draft_mod, "residual", lambda r, q: r)
    monkeypatch.setattr(speculative_mod, "residual", lambda r, q: r)
    tokens, _ = sampled(small_target, sharp_block(small_target, tree), 1.0, 0, 1.0, rows=TEETH_ROWS)  # p < 1e-70 measured
    assert law_pvalue(small_target, tokens, 1.0, 0, 1.0) < LEVEL


# ------------------------------------------------------------------------------------------------------- training

def test_training_loss_falls_and_block_learns(tiny_llama, features, trained):  # noqa: F811
    data, cfg = features["train"], small_config()
    embed = jnp.asarray(block_mod.input_embedding(tiny_llama))
    table = jnp.asarray(block_mod.head_table(tiny_llama))[DRAFT_VOCAB]
    rows = np.arange(16)
    anchors = train_block.anchors_for(data, rows, 8, np.random.default_rng(0))
    labels = train_block.block_labels(data.tokens_XW[rows], data.length_X[rows], anchors, 4)
    batch = (embed, table, jnp.asarray(data.tokens_XW[rows]), jnp.asarray(data.features_XWLpE[rows]),
             jnp.asarray(anchors), jnp.asarray(train_block.to_draft_index(labels, DRAFT_VOCAB, 97)))
    start = train_block.loss_fn(block_mod.init_params(trained.config, cfg.seed), trained.config, 3.0, *batch)
    end = train_block.loss_fn(trained.params, trained.config, 3.0, *batch)
    assert float(end) < 0.5 * float(start)
    acc = train_block.evaluate(trained, tiny_llama, features["eval"])
    assert acc.shape == (4, 5) and (np.diff(acc, axis=1) >= 0).all()
    assert acc[0, 0] > 0.5 and acc[-1, 0] > 0.3        # labels outside the 70-token draft vocabulary are misses


def test_resumed_training_is_bit_exact(tiny_llama, features, tmp_path, monkeypatch):  # noqa: F811
    """As for heads: bit-equal to a straight run, and the restoring calls train only the steps left (0, then 15)."""
    data, cfg = features["train"], small_config(steps=30)
    leaves = lambda b: jax.tree_util.tree_leaves(b.params)                           # noqa: E731
    straight = train_block.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "a", **QUIET)
    first = train_block.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "b", stop_at=15, **QUIET)
    steps = count_steps(monkeypatch, train_block)
    restored = train_block.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "b", stop_at=15, **QUIET)
    assert steps == []
    for a, b in zip(leaves(first), leaves(restored)):
        np.testing.assert_array_equal(a, b)                                          # the checkpoint restores bit-exact
    resumed = train_block.train(tiny_llama, data, DRAFT_VOCAB, cfg, tmp_path / "b", **QUIET)
    assert steps == list(range(15, 30))
    for a, b in zip(leaves(straight), leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(first), leaves(resumed)))


def test_save_load_round_trip(trained, tmp_path):
    block = trained.replace(tree=TREES["tree"], vocab_ids=jnp.arange(90))
    block.save(tmp_path / "b")
    back = Block.load(tmp_path / "b")
    assert back.config == block.config and back.tree == block.tree
    np.testing.assert_array_equal(back.vocab_ids, block.vocab_ids)
    for a, b in zip(jax.tree_util.tree_leaves(block.params), jax.tree_util.tree_leaves(back.params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="exists"):
        block.save(tmp_path / "b")
    with pytest.raises(ValueError, match="block drafter"):
        Block.load(tmp_path)


def _other_target(**changes):
    return Model.random(dataclasses.replace(MARKOV, **changes), seed=1)


BAD = [
    (lambda b: b, dict(hidden_size=48, head_dim=12), "hidden size"),
    (lambda b: b, dict(vocab_size=90), "vocabulary"),
    (lambda b: b, dict(num_layers=3), "layers"),
    (lambda b: b.replace(config=dataclasses.replace(b.config, target_layers=(0, 2))), {}, "target_layers"),
    (lambda b: b.replace(tree=DraftTree.chain(5)), {}, "only 4 positions"),
    (lambda b: b.replace(tree=DraftTree.kary((3,)), vocab_ids=jnp.array([1, 2])), {}, "siblings"),
    (lambda b: b.replace(params={**b.params, "mask": jnp.zeros(3)}), {}, "weights"),
]


@pytest.mark.parametrize("make,target_changes,word", BAD)
def test_bad_block_raises_before_tracing(tiny_llama, make, target_changes, word, monkeypatch):  # noqa: F811
    """A drafter made for another target (width, vocabulary, depth, feature layers) or with a tree it cannot fill
    is a ValueError before anything is traced."""
    monkeypatch.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    with pytest.raises(ValueError, match=word):
        target = _other_target(**target_changes) if target_changes else tiny_llama
        spectax.decode(target, PROMPTS, 8, drafter=make(Block.create(tiny_llama, block_size=4)))
