"""Load llama-architecture GGUF files (llama.cpp's format) into a spectax config + params pytree.

GGUF facts this module relies on (checked against transformers' own GGUF import):
- GGUF lists tensor dims fastest-first, i.e. reversed relative to numpy. `gguf.GGUFReader` already gives
  `tensor.data` in numpy order for float types; for quantized types `tensor.data` is a uint8 array of shape
  [rows, bytes_per_row] and `gguf.dequantize(data, tensor_type)` returns [rows, elements_per_row]; the true numpy
  shape is `reversed(tensor.shape)`.
- A matrix is stored in torch Linear layout [out, in]; spectax kernels are [in, out].
- llama.cpp's converter interleaves the rotary halves of every q/k head ("permute"); `unpermute_qk` undoes it so
  the result uses the split-halves (rotate_half) RoPE convention of Hugging Face transformers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spectax.models.config import ModelConfig, freeze_rope_scaling

SUPPORTED_GGUF_ARCHITECTURES = ("llama",)


def _field_value(reader, key: str, default: Any = None) -> Any:
    """The decoded value of metadata `key` (str, int, float, bool or list), or `default` if absent."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _as_float(value: Any) -> float:
    """Metadata floats are float32; recover the shortest decimal they round-trip to (1e-5, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _require(reader, key: str, path: str) -> Any:
    value = _field_value(reader, key)
    if value is None:
        raise ValueError(f"GGUF file {path} lacks the metadata key {key!r}")
    return value


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation (works for weights [out, in] and biases [out]).

    llama.cpp stores each head's rows as interleaved pairs (r0, r_half, r1, r_half+1, ...); transformers uses the
    two halves one after the other. w: [n_heads * head_dim, ...] -> same shape.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"cannot un-permute a q/k tensor of {rows} rows over {n_heads} heads")
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_to_numpy(tensor, dtype: np.dtype) -> np.ndarray:
    """Dequantizes one reader tensor into a fresh numpy array of its logical (numpy-order) shape."""
    import gguf

    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF dims are fastest-first
    try:
        data = gguf.dequantize(tensor.data, tensor.tensor_type)  # float32, [rows, elements per row]
    except NotImplementedError as e:
        raise ValueError(f"GGUF tensor {tensor.name!r} has type {tensor.tensor_type.name}, which gguf "
                         f"{getattr(gguf, '__version__', '')} cannot dequantize") from e
    data = np.asarray(data, dtype=np.float32)
    if data.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"GGUF tensor {tensor.name!r}: dequantized {data.size} values, expected shape {shape}")
    return np.array(data.reshape(shape), dtype=dtype)  # copy: detaches from the memory map


def _config_from_metadata(reader, path: str, tensors: dict) -> ModelConfig:
    arch = _field_value(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(f"GGUF file {path} has general.architecture={arch!r}; spectax's GGUF loader supports "
                         f"{SUPPORTED_GGUF_ARCHITECTURES}")
    p = f"{arch}."
    hidden = int(_require(reader, p + "embedding_length", path))
    n_heads = int(_require(reader, p + "attention.head_count", path))
    n_kv = int(_field_value(reader, p + "attention.head_count_kv", n_heads))
    head_dim = int(_field_value(reader, p + "attention.key_length", hidden // n_heads))
    rope_dim = _field_value(reader, p + "rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise ValueError(f"GGUF file {path}: rope.dimension_count={rope_dim} != head_dim={head_dim} "
                         "(partial rotary embeddings are not supported)")
    if "rope_freqs.weight" in tensors:
        raise ValueError(f"GGUF file {path} carries per-dimension RoPE frequency factors (rope_freqs.weight, "
                         "Llama-3.1-style rope scaling), which the GGUF loader does not support")
    if "token_embd.weight" not in tensors:
        raise ValueError(f"GGUF file {path} lacks the tensor 'token_embd.weight'")
    vocab = int(tensors["token_embd.weight"].shape[1])  # GGUF dims [E, V]
    meta_vocab = _field_value(reader, p + "vocab_size")
    if meta_vocab is not None and int(meta_vocab) != vocab:
        raise ValueError(f"GGUF file {path}: {p}vocab_size={meta_vocab} but token_embd.weight has {vocab} rows")
    tokens = _field_value(reader, "tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) != vocab:
        raise ValueError(f"GGUF file {path}: {len(tokens)} tokens in tokenizer.ggml.tokens but token_embd.weight "
                         f"has {vocab} rows")

    scaling = None
    scaling_type = _field_value(reader, p + "rope.scaling.type")
    if scaling_type not in (None, "none"):
        factor = _field_value(reader, p + "rope.scaling.factor")
        if factor is None:
            raise ValueError(f"GGUF file {path}: rope.scaling.type={scaling_type!r} without rope.scaling.factor")
        scaling = {"rope_type": str(scaling_type), "factor": _as_float(factor)}
        if scaling_type == "yarn":
            orig = _field_value(reader, p + "rope.scaling.original_context_length")
            if orig is not None:
                scaling["original_max_position_embeddings"] = int(orig)
        elif scaling_type != "linear":
            raise ValueError(f"GGUF file {path}: unsupported rope.scaling.type={scaling_type!r}")

    bos = _field_value(reader, "tokenizer.ggml.bos_token_id")
    eos = _field_value(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        arch="llama",
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=int(_require(reader, p + "block_count", path)),
        num_heads=n_heads,
        num_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate_size=int(_require(reader, p + "feed_forward_length", path)),
        max_position=int(_require(reader, p + "context_length", path)),
        norm_eps=_as_float(_field_value(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=_as_float(_field_value(reader, p + "rope.freq_base", 10000.0)),
        rope_scaling=freeze_rope_scaling(scaling),
        qkv_bias="blk.0.attn_q.bias" in tensors,
        tie_embeddings="output.weight" not in tensors,
        bos_id=None if bos is None else int(bos),
        eos_id=None if eos is None else int(eos),
        eos_ids=end_of_turn_ids(reader),
    )


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")   # chat templates' ends


def end_of_turn_ids(reader) -> tuple[int, ...]:
    """The ids that end a generation besides the EOS: `tokenizer.ggml.eot_token_id` and the chat templates'
    end-of-turn tokens present in the vocabulary (ChatML's <|im_end|>, Llama 3's <|eot_id|>, ...)."""
    ids = [_field_value(reader, "tokenizer.ggml.eot_token_id")]
    tokens = _field_value(reader, "tokenizer.ggml.tokens") or []
    where = {t: i for i, t in enumerate(tokens) if t in END_OF_TURN}
    ids += [where[t] for t in END_OF_TURN if t in where]
    return tuple(int(i) for i in ids if i is not None)


def read_gguf_config(source) -> ModelConfig:
    """Reads only the ModelConfig of a llama GGUF file (a path or an `open_gguf` reader; nothing is dequantized)."""
    reader, path = reader_and_name(source)
    return _config_from_metadata(reader, path, {t.name: t for t in reader.tensors})


def open_gguf(path: str | os.PathLike):
    """Opens a GGUF file with `gguf.GGUFReader` (ValueError if missing or unreadable).

    Parsing the metadata of a real model takes seconds (SmolLM2: ~6 s, its 49k-token vocabulary); pass the reader
    to `load_gguf`, `read_gguf_config` and `spectax.io.tokenizer.from_gguf` to parse it once.
    """
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises bare ValueError / struct errors on non-GGUF input
        raise ValueError(f"{path} is not a readable GGUF file: {e}") from e


def reader_and_name(source) -> tuple[Any, str]:
    """(reader, file name for messages) from a path or an already open GGUFReader."""
    if isinstance(source, (str, os.PathLike)):
        return open_gguf(source), os.fspath(source)
    if hasattr(source, "fields") and hasattr(source, "tensors"):
        return source, str(getattr(getattr(source, "data", None), "filename", "<GGUF reader>"))
    raise ValueError(f"expected a GGUF path or gguf.GGUFReader, got {type(source)}")


def load_gguf(path, dtype: Any = np.float32) -> tuple[ModelConfig, dict]:
    """Loads a llama-architecture GGUF file (a path or an `open_gguf` reader) into (ModelConfig, params).

    Quantized tensors are dequantized with `gguf.dequantize` (float32) and then cast to `dtype`; q/k rows are
    un-permuted back to the Hugging Face layout; matrices are transposed to kernels [in, out]. The params pytree
    is the spectax llama layout (see `spectax.io.hf`); `lm_head` is absent when the file has no `output.weight`
    (tied embeddings). Raises ValueError for other architectures or missing / mis-shaped tensors.
    """
    dtype = np.dtype(dtype)
    reader, path = reader_and_name(path)
    tensors = {t.name: t for t in reader.tensors}
    cfg = _config_from_metadata(reader, path, tensors)
    E, H, G, hd, F, V = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                           cfg.intermediate_size, cfg.vocab_size)

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        # shape: the expected numpy-order shape as stored ([out, in] for matrices)
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"GGUF file {path} lacks the tensor {name!r}")
        got = tuple(int(d) for d in reversed(t.shape.tolist()))
        if got != shape:
            raise ValueError(f"GGUF tensor {name!r} in {path} has shape {got}, expected {shape}")
        return _tensor_to_numpy(t, np.float32)

    def kernel(w: np.ndarray) -> np.ndarray:  # [out, in] -> [in, out]
        return np.ascontiguousarray(w.T).astype(dtype, copy=False)

    params: dict[str, Any] = {
        "embed": {"embedding": get("token_embd.weight", (V, E)).astype(dtype, copy=False)},  # [V, E]
        "final_norm": {"scale": get("output_norm.weight", (E,)).astype(dtype, copy=False)},  # [E]
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": kernel(get("output.weight", (V, E)))}  # [E, V]
    for i in tqdm(range(cfg.num_layers), desc=f"converting {Path(str(path)).name}", unit="layer", file=sys.stderr,
                  disable=None, leave=False):   # a bar on a terminal only
        b = f"blk.{i}."
        q = unpermute_qk(get(b + "attn_q.weight", (H * hd, E)), H)  # [H*hd, E]
        k = unpermute_qk(get(b + "attn_k.weight", (G * hd, E)), G)  # [G*hd, E]
        attn = {
            "q": {"kernel": kernel(q)},  # [E, H*hd]
            "k": {"kernel": kernel(k)},  # [E, G*hd]
            "v": {"kernel": kernel(get(b + "attn_v.weight", (G * hd, E)))},  # [E, G*hd]
            "o": {"kernel": kernel(get(b + "attn_output.weight", (E, H * hd)))},  # [H*hd, E]
        }
        if cfg.qkv_bias:
            attn["q"]["bias"] = unpermute_qk(get(b + "attn_q.bias", (H * hd,)), H).astype(dtype, copy=False)
            attn["k"]["bias"] = unpermute_qk(get(b + "attn_k.bias", (G * hd,)), G).astype(dtype, copy=False)
            attn["v"]["bias"] = get(b + "attn_v.bias", (G * hd,)).astype(dtype, copy=False)
        params[f"layers_{i}"] = {
            "attn_norm": {"scale": get(b + "attn_norm.weight", (E,)).astype(dtype, copy=False)},
            "attn": attn,
            "mlp_norm": {"scale": get(b + "ffn_norm.weight", (E,)).astype(dtype, copy=False)},
            "mlp": {
                "gate": {"kernel": kernel(get(b + "ffn_gate.weight", (F, E)))},  # [E, F]
                "up": {"kernel": kernel(get(b + "ffn_up.weight", (F, E)))},  # [E, F]
                "down": {"kernel": kernel(get(b + "ffn_down.weight", (E, F)))},  # [F, E]
            },
        }
    return cfg, params
