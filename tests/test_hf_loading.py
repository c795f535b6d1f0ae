"""Hugging Face import: config mapping, weight layout, and clear errors for bad directories (no torch needed)."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from spectax.io.hf import is_hf_checkpoint, load_hf, load_hf_config, load_hf_params
from spectax.models import Model
from spectax.models.llama import fuse_params

V, D, L, H, HKV, F = 40, 16, 2, 4, 2, 24
HD = D // H


def llama_config_json(**overrides):
    cfg = {"model_type": "llama", "vocab_size": V, "hidden_size": D, "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": HKV, "intermediate_size": F,
           "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "hidden_act": "silu",
           "rope_parameters": {"rope_theta": 50000.0, "rope_type": "default"},
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": [2, 3]}
    cfg.update(overrides)
    return cfg


def llama_tensors(rng, tied=False, qkv_bias=False, prefix="model."):
    def t(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    out = {f"{prefix}embed_tokens.weight": t(V, D), f"{prefix}norm.weight": t(D)}
    if not tied:
        out["lm_head.weight"] = t(V, D)
    for i in range(L):
        b = f"{prefix}layers.{i}."
        out.update({b + "input_layernorm.weight": t(D), b + "post_attention_layernorm.weight": t(D),
                    b + "self_attn.q_proj.weight": t(H * HD, D), b + "self_attn.k_proj.weight": t(HKV * HD, D),
                    b + "self_attn.v_proj.weight": t(HKV * HD, D), b + "self_attn.o_proj.weight": t(D, H * HD),
                    b + "mlp.gate_proj.weight": t(F, D), b + "mlp.up_proj.weight": t(F, D),
                    b + "mlp.down_proj.weight": t(D, F)})
        if qkv_bias:
            out.update({b + "self_attn.q_proj.bias": t(H * HD), b + "self_attn.k_proj.bias": t(HKV * HD),
                        b + "self_attn.v_proj.bias": t(HKV * HD)})
    return out


def make_dir(path, config, tensors):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "model.safetensors"))
    return path


def test_llama_round_trip(tmp_path):
    tensors = llama_tensors(np.random.default_rng(0))
    d = make_dir(tmp_path / "m", llama_config_json(), tensors)
    assert is_hf_checkpoint(d)
    cfg, params = load_hf(d)
    assert (cfg.arch, cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.head_dim, cfg.intermediate_size, cfg.max_position) == ("llama", V, D, L, H, HKV, HD, F, 64)
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.qkv_bias, cfg.tie_embeddings) == (50000.0, None, False, False)
    assert (cfg.bos_id, cfg.eos_id, cfg.norm_eps) == (1, 2, 1e-5)
    np.testing.assert_array_equal(params["embed"]["embedding"], tensors["model.embed_tokens.weight"])
    np.testing.assert_array_equal(params["lm_head"]["kernel"], tensors["lm_head.weight"].T)
    layer = params["layers_1"]
    np.testing.assert_array_equal(layer["attn"]["q"]["kernel"], tensors["model.layers.1.self_attn.q_proj.weight"].T)
    np.testing.assert_array_equal(layer["attn"]["o"]["kernel"], tensors["model.layers.1.self_attn.o_proj.weight"].T)
    np.testing.assert_array_equal(layer["mlp"]["down"]["kernel"], tensors["model.layers.1.mlp.down_proj.weight"].T)
    assert layer["attn"]["k"]["kernel"].shape == (D, HKV * HD)
    assert layer["mlp"]["gate"]["kernel"].shape == (D, F)


def test_fused_layout_groups_each_kv_head_with_its_query_heads(tmp_path):
    """Model.create fuses q|k|v and gate|up (llama.fuse_params): slice k of the qkv kernel holds kv head k's G query
    heads, its key and its value, so a head-sharded kernel keeps every group on one device; fusing is idempotent."""
    tensors = llama_tensors(np.random.default_rng(3), qkv_bias=True)
    cfg, params = load_hf(make_dir(tmp_path / "f", llama_config_json(model_type="qwen2"), tensors))
    fused = fuse_params(cfg, params)
    G = H // HKV
    for i in range(L):
        t = lambda name: tensors[f"model.layers.{i}.{name}"]            # noqa: E731
        qkv, qkv_b = fused[f"layers_{i}"]["attn"]["qkv"]["kernel"], fused[f"layers_{i}"]["attn"]["qkv"]["bias"]
        assert qkv.shape == (D, HKV, G + 2, HD) and qkv_b.shape == (HKV, G + 2, HD)
        for h in range(H):   # query head h reads kv head h // G (transformers' repeat_kv)
            np.testing.assert_array_equal(qkv[:, h // G, h % G], t("self_attn.q_proj.weight")[h * HD:(h + 1) * HD].T)
            np.testing.assert_array_equal(qkv_b[h // G, h % G], t("self_attn.q_proj.bias")[h * HD:(h + 1) * HD])
        for k in range(HKV):
            np.testing.assert_array_equal(qkv[:, k, G], t("self_attn.k_proj.weight")[k * HD:(k + 1) * HD].T)
            np.testing.assert_array_equal(qkv[:, k, G + 1], t("self_attn.v_proj.weight")[k * HD:(k + 1) * HD].T)
            np.testing.assert_array_equal(qkv_b[k, G + 1], t("self_attn.v_proj.bias")[k * HD:(k + 1) * HD])
        gate_up = fused[f"layers_{i}"]["mlp"]["gate_up"]["kernel"]
        np.testing.assert_array_equal(gate_up[:, 0], t("mlp.gate_proj.weight").T)
        np.testing.assert_array_equal(gate_up[:, 1], t("mlp.up_proj.weight").T)
    again = fuse_params(cfg, fused)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: a is b, again, fused))
    model = Model.create(cfg, params)
    assert set(model.params["layers_0"]["attn"]) == {"qkv", "o"} and set(model.params["layers_0"]["mlp"]) == {
        "gate_up", "down"}


def test_tied_lm_head_in_file_is_ignored_and_qwen2_has_qkv_bias(tmp_path):
    tensors = llama_tensors(np.random.default_rng(1), tied=True, qkv_bias=True)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    d = make_dir(tmp_path / "q", llama_config_json(model_type="qwen2", tie_word_embeddings=True), tensors)
    cfg, params = load_hf(d, dtype=np.float16)
    assert cfg.qkv_bias and cfg.tie_embeddings and "lm_head" not in params
    bias = params["layers_0"]["attn"]["k"]["bias"]
    assert bias.dtype == np.float16 and bias.shape == (HKV * HD,)


def test_rope_settings_old_and_new_style(tmp_path):
    old = llama_config_json(rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 4.0})
    del old["rope_parameters"]
    make_dir(tmp_path / "old", old, {})
    cfg = load_hf_config(tmp_path / "old")
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling_dict == {"rope_type": "linear", "factor": 4.0}

    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    make_dir(tmp_path / "new", llama_config_json(rope_parameters=llama3), {})
    cfg = load_hf_config(tmp_path / "new")
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling_dict == {k: v for k, v in llama3.items() if k != "rope_theta"}
    hash(cfg)  # stays a valid static jit argument


def test_mistral_sliding_window_caps_context(tmp_path):
    make_dir(tmp_path / "m", llama_config_json(model_type="mistral", sliding_window=32), {})
    assert load_hf_config(tmp_path / "m").max_position == 32


def test_gpt2_with_and_without_prefix(tmp_path):
    rng = np.random.default_rng(2)
    P, F4 = 32, 4 * D
    t = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    base = {"wte.weight": t(V, D), "wpe.weight": t(P, D), "ln_f.weight": t(D), "ln_f.bias": t(D)}
    for i in range(L):
        b = f"h.{i}."
        base.update({b + "ln_1.weight": t(D), b + "ln_1.bias": t(D), b + "ln_2.weight": t(D),
                     b + "ln_2.bias": t(D), b + "attn.c_attn.weight": t(D, 3 * D), b + "attn.c_attn.bias": t(3 * D),
                     b + "attn.c_proj.weight": t(D, D), b + "attn.c_proj.bias": t(D),
                     b + "mlp.c_fc.weight": t(D, F4), b + "mlp.c_fc.bias": t(F4),
                     b + "mlp.c_proj.weight": t(F4, D), b + "mlp.c_proj.bias": t(D)})
    config = {"model_type": "gpt2", "vocab_size": V, "n_embd": D, "n_layer": L, "n_head": H, "n_positions": P,
              "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "bos_token_id": 0, "eos_token_id": 0}
    plain = make_dir(tmp_path / "plain", config, base)
    prefixed = make_dir(tmp_path / "prefixed", config,
                        {**{"transformer." + k: v for k, v in base.items()}, "lm_head.weight": base["wte.weight"]})
    for d in (plain, prefixed):
        cfg, params = load_hf(d)
        assert (cfg.arch, cfg.tie_embeddings, cfg.intermediate_size, cfg.max_position) == ("gpt2", True, F4, P)
        np.testing.assert_array_equal(params["layers_1"]["attn"]["qkv"]["kernel"], base["h.1.attn.c_attn.weight"])
        np.testing.assert_array_equal(params["wpe"]["embedding"], base["wpe.weight"])
        assert params["layers_0"]["mlp"]["proj"]["kernel"].shape == (F4, D)


def test_sharded_checkpoint(tmp_path):
    tensors = llama_tensors(np.random.default_rng(3))
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(llama_config_json()))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(d / shard))
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg, params = load_hf(d)
    np.testing.assert_array_equal(params["layers_0"]["mlp"]["up"]["kernel"], tensors["model.layers.0.mlp.up_proj.weight"].T)

    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors"):
        load_hf(d)


# ---------------------------------------------------------------- bad inputs
def test_unknown_model_type(tmp_path):
    make_dir(tmp_path / "m", llama_config_json(model_type="falcon"), {})
    with pytest.raises(ValueError, match=r"'falcon'.*gpt2.*llama.*mistral.*qwen2"):
        load_hf_config(tmp_path / "m")


def test_missing_tensor_names_tensor_and_file(tmp_path):
    tensors = llama_tensors(np.random.default_rng(4))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    d = make_dir(tmp_path / "m", llama_config_json(), tensors)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*model\.safetensors"):
        load_hf(d)


def test_untied_without_lm_head(tmp_path):
    tensors = llama_tensors(np.random.default_rng(5), tied=True)
    d = make_dir(tmp_path / "m", llama_config_json(tie_word_embeddings=False), tensors)
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_hf(d)


def test_wrong_shape(tmp_path):
    tensors = llama_tensors(np.random.default_rng(6))
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((H * HD, D), np.float32)  # [16, 16], not [8, 16]
    d = make_dir(tmp_path / "m", llama_config_json(), tensors)
    with pytest.raises(ValueError, match=r"k_proj\.weight.*\(16, 16\).*\(8, 16\)"):
        load_hf(d)


def test_unsupported_features_and_missing_files(tmp_path):
    make_dir(tmp_path / "bias", llama_config_json(attention_bias=True), {})
    with pytest.raises(ValueError, match="attention_bias"):
        load_hf_config(tmp_path / "bias")
    make_dir(tmp_path / "act", llama_config_json(hidden_act="gelu"), {})
    with pytest.raises(ValueError, match="hidden_act"):
        load_hf_config(tmp_path / "act")
    make_dir(tmp_path / "nokey", {k: v for k, v in llama_config_json().items() if k != "hidden_size"}, {})
    with pytest.raises(ValueError, match="hidden_size"):
        load_hf_config(tmp_path / "nokey")
    with pytest.raises(ValueError, match="config.json"):
        load_hf_config(tmp_path)
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(llama_config_json()))
    assert not is_hf_checkpoint(tmp_path / "noweights")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_hf(tmp_path / "noweights")
    with pytest.raises(ValueError, match="ModelConfig"):
        load_hf_params(tmp_path / "noweights", {"arch": "llama"})
