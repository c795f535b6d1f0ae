"""spectax.models.adapter: low-rank updates and appended vocabulary rows, merged into a base model, saved and loaded."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectax
from spectax.io.loader import save_adapted
from spectax.models.adapter import Adapter, kernel_paths, merge


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def base(request):
    return request.getfixturevalue(request.param)


def test_a_fresh_adapter_is_the_base_plus_new_rows(base):
    adapter = Adapter.init(base, new_tokens=2, rank=4, seed=1)
    merged = merge(base, adapter, apar_ids=(base.config.vocab_size, base.config.vocab_size + 1))
    assert merged.config.vocab_size == base.config.vocab_size + 2 and merged.config.apar_ids is not None
    tokens = jnp.array([[3, 14, 15, 92, 65]])
    np.testing.assert_allclose(np.asarray(merged.logits(tokens))[..., :base.config.vocab_size],
                               np.asarray(base.logits(tokens)), rtol=1e-5, atol=1e-5)
    new = jnp.array([[3, base.config.vocab_size, 15, base.config.vocab_size + 1]])       # the new tokens embed
    assert np.isfinite(np.asarray(merged.logits(new))).all()


def test_the_update_is_scale_a_b_and_trains(base):
    adapter = Adapter.init(base, new_tokens=2, rank=3, seed=2, scale=0.5)
    path = kernel_paths(base.params)[0]
    b = jax.random.normal(jax.random.key(3), adapter.factors[path]["b"].shape)
    adapter = adapter.replace(factors={**adapter.factors, path: {**adapter.factors[path], "b": b}})
    merged = merge(base, adapter)
    get = lambda p, path: p[path.split("/")[0]][path.split("/")[1]][path.split("/")[2]]["kernel"]  # noqa: E731
    a = adapter.factors[path]["a"]
    kernel = get(base.params, path)
    expected = kernel + 0.5 * (a @ b.reshape(b.shape[0], -1)).reshape(kernel.shape)
    np.testing.assert_allclose(np.asarray(get(merged.params, path)), np.asarray(expected), rtol=1e-5, atol=1e-6)
    tokens = jnp.array([[3, base.config.vocab_size, 15, base.config.vocab_size + 1]])

    def loss(ad):
        logits = merge(base, ad).logits(tokens)
        return -jax.nn.log_softmax(logits[0, :-1])[jnp.arange(3), tokens[0, 1:]].mean()

    grads = jax.grad(loss)(adapter)
    assert float(jnp.abs(grads.factors[path]["a"]).sum()) > 0 and float(jnp.abs(grads.embed_rows).sum()) > 0


def test_saved_and_loaded(base, tmp_path):
    spectax.save(base, tmp_path / "base")
    adapter = Adapter.init(base, new_tokens=2, rank=2, seed=4)
    adapter = adapter.replace(factors=jax.tree_util.tree_map(lambda x: x + 0.01, adapter.factors))
    v = base.config.vocab_size
    save_adapted(adapter, tmp_path / "apar", str(tmp_path / "base"), ["[Fork]", "[Child]"], {"apar_ids": [v, v + 1]},
                 info={"steps": 0})
    loaded = spectax.load(tmp_path / "apar")
    want = merge(base, adapter, apar_ids=(v, v + 1))
    assert loaded.config == want.config
    tokens = jnp.array([[3, 14, v + 1, 15]])
    np.testing.assert_allclose(np.asarray(loaded.logits(tokens)), np.asarray(want.logits(tokens)), rtol=2e-2,
                               atol=2e-2)                                        # stored in float16
    manifest = json.loads((tmp_path / "apar" / "adapter.json").read_text())
    assert manifest["tokens"] == ["[Fork]", "[Child]"] and manifest["base"] == str(tmp_path / "base")


def test_bad_adapters(tiny_llama, tiny_gpt2, tmp_path):
    with pytest.raises(ValueError, match="rank"):
        Adapter.init(tiny_llama, new_tokens=2, rank=0)
    with pytest.raises(ValueError, match="no Dense kernel"):
        Adapter.init(tiny_llama, new_tokens=2, rank=2, targets=["layers_0/attn/nope/kernel"])
    with pytest.raises(ValueError, match="tied"):
        merge(tiny_gpt2, Adapter.init(tiny_llama, new_tokens=2, rank=2).replace(factors={}))
    with pytest.raises(ValueError, match="do not fit"):
        merge(tiny_gpt2, Adapter.init(tiny_llama, new_tokens=2, rank=2))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter.json").write_text('{"format": "spectax-adapter", "version": 1}')
    with pytest.raises(ValueError, match="'base' missing"):
        spectax.load(tmp_path / "bad")
