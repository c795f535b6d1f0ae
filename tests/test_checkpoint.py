"""spectax.save / spectax.load: exact round trips, dtype casts, atomic writes, and clear errors for bad paths."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import save_file

import spectax
from spectax.io import checkpoint
from spectax.io.checkpoint import MANIFEST, is_checkpoint, load_checkpoint

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9]]


def leaves(model):
    return jax.tree_util.tree_leaves_with_path(model.params)


def assert_params_equal(a, b):
    la, lb = leaves(a), leaves(b)
    assert [jax.tree_util.keystr(p) for p, _ in la] == [jax.tree_util.keystr(p) for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def temp_dirs(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_llama):
    """tiny_llama saved once for the read-only tests."""
    return spectax.save(tiny_llama, tmp_path_factory.mktemp("ck") / "llama")


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_round_trip_is_exact(name, request, tmp_path):
    model = request.getfixturevalue(name)
    path = spectax.save(model, tmp_path / "m")
    assert path == (tmp_path / "m").absolute() and is_checkpoint(path)
    assert temp_dirs(tmp_path, "m") == []
    loaded = spectax.load(tmp_path / "m")
    assert loaded.config == model.config
    assert_params_equal(loaded, model)
    a = spectax.decode(model, PROMPTS, max_new_tokens=12)
    b = spectax.decode(loaded, PROMPTS, max_new_tokens=12)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)


def test_load_accepts_a_str_path(saved, tiny_llama):
    assert_params_equal(spectax.load(str(saved)), tiny_llama)


def test_manifest_contents(saved, tiny_llama):
    manifest = json.loads((saved / MANIFEST).read_text())
    assert manifest["format"] == "spectax" and manifest["version"] == checkpoint.FORMAT_VERSION
    assert manifest["dtype"] == "float32"
    assert spectax.ModelConfig.from_json(json.dumps(manifest["config"])) == tiny_llama.config


def test_dtype_cast_on_load(saved, tiny_llama):
    bf16 = spectax.load(saved, dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16
    assert {x.dtype for _, x in leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
    for (_, x), (_, y) in zip(leaves(bf16), leaves(tiny_llama)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y.astype(jnp.bfloat16)))
    # load_checkpoint directly, and the default keeps the saved dtype
    assert load_checkpoint(saved, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    assert spectax.load(saved).dtype == jnp.float32


def test_bfloat16_model_round_trips_as_bfloat16(tiny_gpt2, tmp_path):
    bf16 = spectax.Model.create(tiny_gpt2.config, tiny_gpt2.params, dtype=jnp.bfloat16)
    spectax.save(bf16, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / MANIFEST).read_text())["dtype"] == "bfloat16"
    assert_params_equal(spectax.load(tmp_path / "bf16"), bf16)


def test_refuses_to_overwrite_without_flag(tiny_llama, tiny_gpt2, tmp_path):
    spectax.save(tiny_llama, tmp_path / "m")
    with pytest.raises(ValueError, match="already exists"):
        spectax.save(tiny_gpt2, tmp_path / "m")
    assert spectax.load(tmp_path / "m").config == tiny_llama.config  # untouched
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="already exists"):
        spectax.save(tiny_llama, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"
    spectax.save(tiny_gpt2, tmp_path / "m", overwrite=True)
    assert_params_equal(spectax.load(tmp_path / "m"), tiny_gpt2)
    assert temp_dirs(tmp_path, "m") == []


def test_save_creates_parent_dirs(tiny_gpt2, tmp_path):
    spectax.save(tiny_gpt2, tmp_path / "a" / "b" / "m")
    assert is_checkpoint(tmp_path / "a" / "b" / "m")


def test_save_rejects_non_models(tmp_path):
    with pytest.raises(ValueError, match="spectax Model"):
        spectax.save({"w": np.zeros(3)}, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _fail(*args, **kwargs):
    raise RuntimeError("injected failure")


@pytest.mark.parametrize("where", ["orbax", "manifest"])
def test_failed_save_leaves_nothing_behind(where, tiny_llama, tmp_path, monkeypatch):
    if where == "orbax":  # the params write itself fails
        monkeypatch.setattr(ocp.StandardCheckpointer, "save", _fail)
    else:  # params already written, then the manifest fails
        monkeypatch.setattr(spectax.ModelConfig, "to_json", _fail)
    with pytest.raises(RuntimeError, match="injected"):
        spectax.save(tiny_llama, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_checkpoint(tiny_llama, tiny_gpt2, tmp_path, monkeypatch):
    spectax.save(tiny_llama, tmp_path / "m")
    monkeypatch.setattr(spectax.ModelConfig, "to_json", _fail)
    with pytest.raises(RuntimeError, match="injected"):
        spectax.save(tiny_gpt2, tmp_path / "m", overwrite=True)
    monkeypatch.undo()
    assert temp_dirs(tmp_path, "m") == []
    assert_params_equal(spectax.load(tmp_path / "m"), tiny_llama)


def _copy_with_manifest(saved, tmp_path, edit):
    d = tmp_path / "bad"
    shutil.copytree(saved, d)
    manifest = json.loads((d / MANIFEST).read_text())
    text = edit(manifest)
    (d / MANIFEST).write_text(text if isinstance(text, str) else json.dumps(text))
    return d


BAD_MANIFESTS = [
    (lambda m: "{not json", "not valid JSON"),
    (lambda m: "[1, 2]", "JSON object"),
    (lambda m: {**m, "format": "other"}, "unsupported checkpoint format"),
    (lambda m: {**m, "version": 99}, "version 99"),
    (lambda m: {k: v for k, v in m.items() if k != "config"}, "config"),
    (lambda m: {**m, "config": {**m["config"], "surprise": 1}}, "invalid model config"),
    (lambda m: {**m, "config": {**m["config"], "arch": "bert"}}, "unknown architecture"),
    (lambda m: {**m, "config": {**m["config"], "hidden_size": 48}}, "shape"),  # params no longer fit
]


@pytest.mark.parametrize("edit,word", BAD_MANIFESTS)
def test_bad_manifest_is_a_value_error(edit, word, saved, tmp_path):
    d = _copy_with_manifest(saved, tmp_path, edit)
    with pytest.raises(ValueError, match=word):
        spectax.load(d)


def test_missing_params_dir_is_a_value_error(saved, tmp_path):
    d = tmp_path / "noparams"
    shutil.copytree(saved, d)
    shutil.rmtree(d / "params")
    with pytest.raises(ValueError, match="params"):
        spectax.load(d)


def test_load_checkpoint_of_a_non_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="not a spectax checkpoint"):
        load_checkpoint(tmp_path)


def test_load_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="neither a registered model"):
        spectax.load(tmp_path / "does-not-exist")
    with pytest.raises(ValueError, match="neither a registered model.*smollm2-135m-instruct"):
        spectax.load("no-such-model-name")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a spectax checkpoint, a Hugging Face directory"):
        spectax.load(tmp_path / "empty")
    (tmp_path / "cfg_only").mkdir()
    (tmp_path / "cfg_only" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a spectax checkpoint, a Hugging Face directory"):
        spectax.load(tmp_path / "cfg_only")  # config.json but no safetensors
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="not a spectax checkpoint"):
        spectax.load(tmp_path / "weights.bin")


def test_load_a_file_that_is_not_gguf(tmp_path):
    (tmp_path / "fake.gguf").write_bytes(b"definitely not gguf" * 10)
    with pytest.raises(ValueError, match="GGUF"):
        spectax.load(tmp_path / "fake.gguf")


def test_unknown_hf_architecture(tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10, "hidden_size": 8}))
    save_file({"embeddings.word_embeddings.weight": np.zeros((10, 8), np.float32)}, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        spectax.load(d)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_the_param_check_knows_every_layer(name, request):
    """check_params traces a one-layer model and repeats its layer: the same shapes as tracing the whole model, and
    a missing, extra or mis-shaped layer is still refused."""
    import jax
    import jax.numpy as jnp

    from spectax.models import check_params, decoder_module
    from spectax.models.model import _param_shapes

    config = request.getfixturevalue(name).config
    one, mask = jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool)
    full = jax.eval_shape(lambda: decoder_module(config, jnp.float32).init(jax.random.key(0), one, one, None,
                                                                           one[:, 0], mask))["params"]
    shapes = lambda tree: {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(tree)}  # noqa
    assert shapes(_param_shapes(config, jnp.float32)) == shapes(full)
    params = dict(request.getfixturevalue(name).params)
    last = f"layers_{config.num_layers - 1}"
    for broken, word in [({k: v for k, v in params.items() if k != last}, "missing"),
                         ({**params, f"layers_{config.num_layers}": params[last]}, "unexpected"),
                         ({**params, last: jax.tree_util.tree_map(lambda a: a[..., :1], params[last])}, "shape")]:
        with pytest.raises(ValueError, match=word):
            check_params(config, broken)
