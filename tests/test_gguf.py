"""GGUF loading: a tiny llama GGUF written llama.cpp-style loads back to exactly the params it was made from."""


import dataclasses

import gguf
import numpy as np
import pytest

from gguf_writer_util import llamacpp_permute, random_llama_params, tiny_bpe_vocab, write_llama_gguf
from spectax.io.gguf import load_gguf, open_gguf, read_gguf_config, unpermute_qk
from spectax.io.tokenizer import from_gguf
from spectax.models.config import ModelConfig

VOCAB = len(tiny_bpe_vocab()[0])


def tiny_config(**overrides) -> ModelConfig:
    kw = dict(arch="llama", vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
              head_dim=16, intermediate_size=96, max_position=128, norm_eps=1e-5, rope_theta=10000.0,
              tie_embeddings=False, bos_id=1, eos_id=2)
    kw.update(overrides)
    return ModelConfig(**kw)


def flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def q8_roundtrip(w_out_in: np.ndarray) -> np.ndarray:
    """What a Q8_0 tensor [out, in] decodes to: gguf's dequantize of gguf's quantize."""
    q = gguf.quantize(np.ascontiguousarray(w_out_in, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    return gguf.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(w_out_in.shape)


def with_chat_ends(cfg):
    """The config a GGUF reads back as: the end-of-turn tokens of its vocabulary join the EOS in eos_ids (the
    writer's vocabulary holds <|endoftext|> at 0; its EOS, <|im_end|>, comes first)."""
    return dataclasses.replace(cfg, eos_ids=cfg.eos_ids + (0,))


def test_every_end_token_is_read(tmp_path):
    cfg = tiny_config()
    path = write_llama_gguf(tmp_path / "tiny.gguf", cfg, random_llama_params(cfg), q8_0=())
    ends = read_gguf_config(path).eos_ids
    assert cfg.eos_id is not None and ends == (cfg.eos_id, 0)


@pytest.mark.parametrize("tied,qkv_bias", [(False, False), (True, False), (False, True)])
def test_roundtrip_is_exact(tmp_path, tied, qkv_bias):
    cfg = tiny_config(tie_embeddings=tied, qkv_bias=qkv_bias)
    params = random_llama_params(cfg, seed=1)
    q8 = ("blk.0.ffn_gate.weight", "blk.1.attn_q.weight")
    path = write_llama_gguf(tmp_path / "tiny.gguf", cfg, params, q8_0=q8)

    loaded_cfg, loaded = load_gguf(path)
    assert loaded_cfg == with_chat_ends(cfg)
    assert read_gguf_config(path) == with_chat_ends(cfg)
    assert ("lm_head" in loaded) == (not tied)

    want = flatten(params)
    # Q8_0 tensors come back as the dequantized quantization (q rows permuted before quantizing, as llama.cpp does)
    want["layers_0/mlp/gate/kernel"] = q8_roundtrip(params["layers_0"]["mlp"]["gate"]["kernel"].T).T
    q_perm = q8_roundtrip(llamacpp_permute(params["layers_1"]["attn"]["q"]["kernel"].T, cfg.num_heads))
    want["layers_1/attn/q/kernel"] = unpermute_qk(q_perm, cfg.num_heads).T
    got = flatten(loaded)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == np.float32, name
        assert got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # the quantized tensor really is lossy (so the check above is not vacuous)
    assert not np.array_equal(got["layers_0/mlp/gate/kernel"], params["layers_0"]["mlp"]["gate"]["kernel"])


def test_qk_permutation_is_undone():
    rng = np.random.default_rng(0)
    for n_heads, head_dim in [(4, 16), (3, 8), (1, 2)]:
        w = rng.standard_normal((n_heads * head_dim, 5)).astype(np.float32)
        permuted = llamacpp_permute(w, n_heads)
        assert not np.array_equal(permuted, w) or head_dim == 2 and n_heads == 1
        np.testing.assert_array_equal(unpermute_qk(permuted, n_heads), w)
        np.testing.assert_array_equal(unpermute_qk(llamacpp_permute(w[:, 0], n_heads), n_heads), w[:, 0])
    # one head of 4 rows: llama.cpp stores (r0, r2, r1, r3)
    w = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(llamacpp_permute(w, 1), [0, 2, 1, 3])


def test_dtype_argument(tmp_path):
    cfg = tiny_config()
    path = write_llama_gguf(tmp_path / "tiny.gguf", cfg, random_llama_params(cfg), q8_0=())
    _, params = load_gguf(path, dtype=np.float16)
    assert all(leaf.dtype == np.float16 for leaf in flatten(params).values())


def test_other_architecture_is_refused(tmp_path):
    cfg = tiny_config()
    path = write_llama_gguf(tmp_path / "qwen.gguf", cfg, random_llama_params(cfg), architecture="qwen2")
    with pytest.raises(ValueError, match="qwen2.*llama"):
        load_gguf(path)


def test_missing_tensor_is_named(tmp_path):
    cfg = tiny_config()
    path = write_llama_gguf(tmp_path / "tiny.gguf", cfg, random_llama_params(cfg), omit=("blk.1.ffn_up.weight",))
    with pytest.raises(ValueError, match=r"blk\.1\.ffn_up\.weight"):
        load_gguf(path)


def test_not_a_gguf_file(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not gguf" * 10)
    with pytest.raises(ValueError):
        load_gguf(junk)
    with pytest.raises(ValueError, match="does not exist"):
        load_gguf(tmp_path / "nope.gguf")


def test_one_reader_serves_config_params_and_tokenizer(tmp_path):
    cfg = tiny_config(tie_embeddings=True)
    params = random_llama_params(cfg)
    path = write_llama_gguf(tmp_path / "tiny.gguf", cfg, params, q8_0=())
    reader = open_gguf(path)
    assert read_gguf_config(reader) == with_chat_ends(cfg)
    got_cfg, got = load_gguf(reader)
    assert got_cfg == with_chat_ends(cfg)
    np.testing.assert_array_equal(got["embed"]["embedding"], params["embed"]["embedding"])
    assert from_gguf(reader).vocab_size == cfg.vocab_size
    with pytest.raises(ValueError, match="GGUF path or gguf.GGUFReader"):
        load_gguf(42)
