"""Parity with transformers: tiny random HF checkpoints (made by tests/fixtures/make_fixtures.py with torch) loaded through
`spectax.load` must reproduce transformers' logits and greedy generations exactly (fp32, no torch needed here)."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

import spectax

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
NAMES = ["llama_gqa", "qwen2_bias", "gpt2"]
N_NEW = 64


@pytest.fixture(scope="module", params=NAMES)
def case(request):
    d = FIXTURES / request.param
    golden = json.loads((d / "golden.json").read_text())
    return request.param, d, spectax.load(d), golden


def test_golden_files_are_consistent(case):
    name, d, _, golden = case
    assert golden["model"] == name and golden["max_new_tokens"] == N_NEW
    assert len(golden["prompts"]) == 4 and len({len(p) for p in golden["prompts"]}) == 4  # ragged
    assert all(len(g) == N_NEW for g in golden["greedy"])
    # the seed policy makes argmax flips from fp32 reordering impossible; a test below relies on it
    assert golden["min_top2_gap"] >= 1e-3


def test_config_exercises_the_feature(case):
    name, d, model, golden = case
    cfg = model.config
    assert cfg.vocab_size == golden["vocab_size"]
    assert model.dtype == np.float32
    if name == "llama_gqa":
        assert cfg.arch == "llama" and cfg.num_kv_heads < cfg.num_heads
        assert cfg.rope_scaling_dict["rope_type"] == "llama3" and cfg.rope_scaling_dict["factor"] == 8.0
        assert not cfg.tie_embeddings and "lm_head" in model.params and not cfg.qkv_bias
    elif name == "qwen2_bias":
        assert cfg.arch == "llama" and cfg.qkv_bias and cfg.tie_embeddings and "lm_head" not in model.params
        assert cfg.rope_theta == 1e6 and cfg.rope_scaling is None
        assert (d / "model.safetensors.index.json").is_file() and not (d / "model.safetensors").exists()
        assert len(list(d.glob("model-*-of-*.safetensors"))) > 1
        assert np.abs(np.asarray(model.params["layers_0"]["attn"]["qkv"]["bias"][:, -2])).max() > 0  # k bias
    else:
        assert cfg.arch == "gpt2" and cfg.tie_embeddings and "wpe" in model.params
        assert (cfg.bos_id, cfg.eos_id) == (golden["vocab_size"] - 1,) * 2


def _without_feature(name, model):
    """The model with the fixture's distinguishing feature removed (a loader that dropped it would give this)."""
    if name == "llama_gqa":  # plain RoPE instead of llama3-scaled frequencies
        return spectax.Model(config=dataclasses.replace(model.config, rope_scaling=None), params=model.params)
    if name == "qwen2_bias":  # q/k/v biases dropped
        drop = lambda path, a: a * 0 if "bias" in jax.tree_util.keystr(path) else a  # noqa: E731
        return spectax.Model(config=model.config, params=jax.tree_util.tree_map_with_path(drop, model.params))
    params = dict(model.params, wpe={"embedding": model.params["wpe"]["embedding"] * 0})  # no learned positions
    return spectax.Model(config=model.config, params=params)


def test_the_feature_matters(case):
    """Teeth for the parity test below: without its feature, each fixture's logits are far from transformers'."""
    name, d, model, golden = case
    want = np.load(d / golden["logits_file"])
    got = np.asarray(_without_feature(name, model).logits(np.asarray(golden["logits_tokens"], np.int32)))
    assert np.abs(got - want).max() > 0.1


def test_logits_match_transformers(case):
    name, d, model, golden = case
    want = np.load(d / golden["logits_file"])
    tokens = np.asarray(golden["logits_tokens"], np.int32)
    assert want.shape == tokens.shape + (golden["vocab_size"],) and want.dtype == np.float32
    with jax.default_matmul_precision("highest"):
        got = np.asarray(model.logits(tokens))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(want).max() > 0.5  # the comparison is not between two near-zero tensors


def test_greedy_batch1_matches_transformers(case):
    name, d, model, golden = case
    with jax.default_matmul_precision("highest"):
        for i, (prompt, want) in enumerate(zip(golden["prompts"], golden["greedy"])):
            out = spectax.decode(model, [prompt], max_new_tokens=N_NEW)
            assert int(out.lengths[0]) == N_NEW
            assert np.asarray(out.tokens[0]).tolist() == want, f"{name} prompt {i}"


def test_greedy_ragged_batch_matches_transformers(case):
    name, d, model, golden = case
    with jax.default_matmul_precision("highest"):
        out = spectax.decode(model, golden["prompts"], max_new_tokens=N_NEW)
    np.testing.assert_array_equal(out.lengths, [N_NEW] * 4)
    for i, want in enumerate(golden["greedy"]):
        assert np.asarray(out.tokens[i]).tolist() == want, f"{name} row {i}"


SPEC_TREES = {"chain3": spectax.DraftTree.chain(3), "kary22": spectax.DraftTree.kary((2, 2)),
              "paths": spectax.DraftTree.from_paths([(0,), (1,), (0, 0), (1, 0), (0, 0, 0)])}


@pytest.mark.parametrize("tree", list(SPEC_TREES))
def test_speculative_greedy_matches_transformers(case, tree):
    """An oracle that shares no code with the loop: speculative greedy decoding (a draft model that agrees with the
    target often, not always) reproduces transformers' own greedy tokens, batch of 4 ragged prompts."""
    from test_speculative import noisy_copy

    name, d, model, golden = case
    t = SPEC_TREES[tree]
    drafter = spectax.drafters.DraftModel(noisy_copy(model, 0.1, 7), tree=t)
    with jax.default_matmul_precision("highest"):
        out = spectax.decode(model, golden["prompts"], max_new_tokens=N_NEW, drafter=drafter)
    for i, want in enumerate(golden["greedy"]):
        assert np.asarray(out.tokens[i]).tolist() == want, f"{name} {tree} row {i}"
    hist = np.asarray(out.stats.accepted_hist).sum(0)
    assert out.stats.tau > 1.2 and hist[:t.max_depth].sum() > 0, "the draft must be accepted often, not always"


@pytest.mark.parametrize("kind", ["blockwise", "medusa", "cerberus"])
def test_heads_greedy_matches_transformers(case, kind):
    """Heads on each fixture (GPT-2 and Qwen2 tied heads, Llama's untied one) reproduce transformers' greedy tokens."""
    name, d, model, golden = case
    heads = spectax.drafters.Heads.create(model, kind=kind, num_heads=3, seed=1, scale=0.5,
                                          tree=SPEC_TREES["paths"], gate=3.0 if kind == "cerberus" else None)
    with jax.default_matmul_precision("highest"):
        out = spectax.decode(model, golden["prompts"], max_new_tokens=N_NEW, drafter=heads)
    for i, want in enumerate(golden["greedy"]):
        assert np.asarray(out.tokens[i]).tolist() == want, f"{name} {kind} row {i}"


@pytest.mark.parametrize("tree", ["chain3", "paths"])
def test_block_greedy_matches_transformers(case, tree):
    """A block drafter on each fixture (Llama and Qwen2 with RoPE, GPT-2 with learned positions: its draft layers
    use RoPE of their own) reproduces transformers' greedy tokens, batch of 4 ragged prompts."""
    name, d, model, golden = case
    block = spectax.drafters.Block.create(model, block_size=3, tree=SPEC_TREES[tree], seed=2)
    with jax.default_matmul_precision("highest"):
        out = spectax.decode(model, golden["prompts"], max_new_tokens=N_NEW, drafter=block)
    for i, want in enumerate(golden["greedy"]):
        assert np.asarray(out.tokens[i]).tolist() == want, f"{name} block {tree} row {i}"
