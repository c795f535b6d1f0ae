"""Import Hugging Face checkpoints (config.json + safetensors) into a spectax config + params pytree.

Supported `model_type`s: llama, mistral, qwen2 (spectax arch "llama") and gpt2 (arch "gpt2"). Weights are read with
`safetensors` (numpy), from `model.safetensors` or the shards listed in `model.safetensors.index.json`.

Params layout (nested dicts of numpy arrays; torch Linear weights [out, in] become kernels [in, out]):

llama arch::

    {'embed': {'embedding': [V, E]},
     'layers_{i}': {'attn_norm': {'scale': [E]},
                    'attn': {'q': {'kernel': [E, H*hd], 'bias': [H*hd] (qkv_bias only)},
                             'k': {'kernel': [E, G*hd], 'bias': ...}, 'v': {'kernel': [E, G*hd], 'bias': ...},
                             'o': {'kernel': [H*hd, E]}},
                    'mlp_norm': {'scale': [E]},
                    'mlp': {'gate': {'kernel': [E, F]}, 'up': {'kernel': [E, F]}, 'down': {'kernel': [F, E]}}},
     'final_norm': {'scale': [E]},
     'lm_head': {'kernel': [E, V]}}          # absent when config.tie_embeddings

gpt2 arch (HF Conv1D weights are already [in, out])::

    {'wte': {'embedding': [V, E]}, 'wpe': {'embedding': [max_position, E]},
     'layers_{i}': {'ln_1': {'scale': [E], 'bias': [E]},
                    'attn': {'qkv': {'kernel': [E, 3E], 'bias': [3E]}, 'o': {'kernel': [E, E], 'bias': [E]}},
                    'ln_2': {'scale': [E], 'bias': [E]},
                    'mlp': {'fc': {'kernel': [E, F], 'bias': [F]}, 'proj': {'kernel': [F, E], 'bias': [E]}}},
     'ln_f': {'scale': [E], 'bias': [E]}}

q/k rows keep transformers' layout, so RoPE is the split-halves (rotate_half) convention.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from spectax.models.config import ModelConfig, freeze_rope_scaling

# HF model_type -> spectax arch
SUPPORTED_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2"}

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def _read_config_json(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise ValueError(f"{directory} has no config.json (not a Hugging Face model directory)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return cfg


def _first_id(value: Any) -> int | None:
    """bos/eos ids: an int, a list of ints (take the first) or None."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


def _all_ids(value: Any) -> tuple[int, ...]:
    """Every id of an int, a list of ints or None."""
    values = value if isinstance(value, (list, tuple)) else () if value is None else (value,)
    return tuple(int(v) for v in values)


def _need(cfg: dict, key: str, path: Path) -> Any:
    if cfg.get(key) is None:
        raise ValueError(f"{path}: config.json lacks {key!r}")
    return cfg[key]


def _rope_settings(cfg: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope scaling dict or None) from transformers-5 `rope_parameters` or the older
    top-level `rope_theta` / `rope_scaling`; the scaling type key is normalised to "rope_type"."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = cfg.get("rope_theta", 10000.0)
        scaling = dict(cfg.get("rope_scaling") or {})
    if "type" in scaling:
        legacy = scaling.pop("type")
        scaling.setdefault("rope_type", legacy)
    if scaling.get("rope_type", "default") == "default":
        scaling = None
    return float(theta), scaling


def _llama_config(cfg: dict, model_type: str, path: Path) -> ModelConfig:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{path}: hidden_act={act!r}; spectax's llama block uses SiLU (SwiGLU) only")
    if cfg.get("mlp_bias"):
        raise ValueError(f"{path}: mlp_bias=True is not supported by spectax's llama block")
    if model_type == "qwen2":
        qkv_bias = True
    else:
        # transformers' Llama puts `attention_bias` on q, k, v AND o_proj; spectax has no o-projection bias.
        if cfg.get("attention_bias"):
            raise ValueError(f"{path}: attention_bias=True (biases on q/k/v and o_proj) is not supported; "
                             "spectax's llama layout has q/k/v biases only (as Qwen2)")
        qkv_bias = False
    hidden = int(_need(cfg, "hidden_size", path))
    heads = int(_need(cfg, "num_attention_heads", path))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = cfg.get("head_dim") or hidden // heads
    max_pos = int(_need(cfg, "max_position_embeddings", path))
    # A sliding window only changes attention past its length: cap the usable context there so results stay exact.
    window = cfg.get("sliding_window")
    window_on = window is not None and (model_type == "mistral" or cfg.get("use_sliding_window", False))
    if window_on and int(window) < max_pos:
        max_pos = int(window)
    theta, scaling = _rope_settings(cfg)
    return ModelConfig(
        arch="llama",
        vocab_size=int(_need(cfg, "vocab_size", path)),
        hidden_size=hidden,
        num_layers=int(_need(cfg, "num_hidden_layers", path)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(head_dim),
        intermediate_size=int(_need(cfg, "intermediate_size", path)),
        max_position=max_pos,
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=freeze_rope_scaling(scaling),
        qkv_bias=qkv_bias,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_id=_first_id(cfg.get("bos_token_id")),
        eos_id=_first_id(cfg.get("eos_token_id")),
        eos_ids=_all_ids(cfg.get("eos_token_id")),
    )


def _gpt2_config(cfg: dict, path: Path) -> ModelConfig:
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{path}: activation_function={act!r}; spectax's gpt2 block uses gelu_new (tanh GELU)")
    if cfg.get("scale_attn_weights", True) is False or cfg.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError(f"{path}: non-standard GPT-2 attention scaling (scale_attn_weights=False or "
                         "scale_attn_by_inverse_layer_idx=True) is not supported")
    hidden = int(_need(cfg, "n_embd", path))
    heads = int(_need(cfg, "n_head", path))
    if hidden % heads:
        raise ValueError(f"{path}: n_embd={hidden} is not a multiple of n_head={heads}")
    positions = cfg.get("n_positions") or cfg.get("n_ctx")
    if positions is None:
        raise ValueError(f"{path}: config.json lacks 'n_positions'")
    return ModelConfig(
        arch="gpt2",
        vocab_size=int(_need(cfg, "vocab_size", path)),
        hidden_size=hidden,
        num_layers=int(_need(cfg, "n_layer", path)),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=int(cfg.get("n_inner") or 4 * hidden),
        max_position=int(positions),
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=True,
        bos_id=_first_id(cfg.get("bos_token_id")),
        eos_id=_first_id(cfg.get("eos_token_id")),
        eos_ids=_all_ids(cfg.get("eos_token_id")),
    )


def load_hf_config(directory: str | os.PathLike) -> ModelConfig:
    """Reads a Hugging Face model directory's config.json into a ModelConfig.

    Raises ValueError for an unsupported `model_type` (supported: llama, mistral, qwen2, gpt2), missing keys, or
    features spectax's blocks do not implement (non-SiLU llama MLPs, MLP / o-projection biases, ...). A Mistral /
    Qwen2 sliding window shorter than max_position_embeddings caps `max_position` at the window (exact within it).
    """
    d = Path(directory)
    cfg = _read_config_json(d)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{d}: unsupported model_type {model_type!r}; spectax supports "
                         f"{sorted(SUPPORTED_MODEL_TYPES)}")
    if SUPPORTED_MODEL_TYPES[model_type] == "gpt2":
        return _gpt2_config(cfg, d)
    return _llama_config(cfg, model_type, d)


class _SafetensorsSource:
    """Name -> numpy tensor over `model.safetensors` or the shards of `model.safetensors.index.json`."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        self._open = safe_open
        single, index = directory / SAFETENSORS_FILE, directory / SAFETENSORS_INDEX
        if single.is_file():
            self.where = str(single)
            with safe_open(str(single), framework="np") as f:
                self.file_of = {name: single for name in f.keys()}
        elif index.is_file():
            self.where = str(index)
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{index} is not a valid safetensors index (needs 'weight_map'): {e}") from e
            self.file_of = {name: directory / shard for name, shard in weight_map.items()}
            for shard in sorted(set(self.file_of.values())):
                if not shard.is_file():
                    raise ValueError(f"{index} names the shard {shard.name}, which is missing from {directory}")
        else:
            raise ValueError(f"{directory} has neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX} "
                             "(only safetensors checkpoints are supported)")
        self._handles: dict[Path, Any] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name`, checked to have `shape` (ValueError naming tensor and file otherwise)."""
        if name not in self.file_of:
            raise ValueError(f"tensor {name!r} is missing from {self.where}")
        file = self.file_of[name]
        if file not in self._handles:
            self._handles[file] = self._open(str(file), framework="np")
        try:
            arr = self._handles[file].get_tensor(name)
        except Exception as e:  # index lists a tensor its shard lacks
            raise ValueError(f"tensor {name!r} could not be read from {file}: {e}") from e
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"tensor {name!r} in {file} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        return arr


def _llama_params(src: _SafetensorsSource, cfg: ModelConfig, dtype: np.dtype) -> dict:
    E, H, G, hd, F, V = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                           cfg.intermediate_size, cfg.vocab_size)
    p = "model." if "model.embed_tokens.weight" in src else ""

    def vec(name: str, n: int) -> np.ndarray:
        return np.asarray(src.get(name, (n,)), dtype=dtype)

    def kernel(name: str, out_dim: int, in_dim: int) -> np.ndarray:  # torch Linear [out, in] -> [in, out]
        return np.ascontiguousarray(np.asarray(src.get(name, (out_dim, in_dim)), dtype=dtype).T)

    params: dict[str, Any] = {
        "embed": {"embedding": np.asarray(src.get(p + "embed_tokens.weight", (V, E)), dtype=dtype)},  # [V, E]
        "final_norm": {"scale": vec(p + "norm.weight", E)},  # [E]
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": kernel("lm_head.weight", V, E)}  # [E, V]
    for i in range(cfg.num_layers):
        b = f"{p}layers.{i}."
        attn = {
            "q": {"kernel": kernel(b + "self_attn.q_proj.weight", H * hd, E)},  # [E, H*hd]
            "k": {"kernel": kernel(b + "self_attn.k_proj.weight", G * hd, E)},  # [E, G*hd]
            "v": {"kernel": kernel(b + "self_attn.v_proj.weight", G * hd, E)},  # [E, G*hd]
            "o": {"kernel": kernel(b + "self_attn.o_proj.weight", E, H * hd)},  # [H*hd, E]
        }
        if cfg.qkv_bias:
            attn["q"]["bias"] = vec(b + "self_attn.q_proj.bias", H * hd)
            attn["k"]["bias"] = vec(b + "self_attn.k_proj.bias", G * hd)
            attn["v"]["bias"] = vec(b + "self_attn.v_proj.bias", G * hd)
        if b + "self_attn.o_proj.bias" in src:
            raise ValueError(f"{src.where} has {b}self_attn.o_proj.bias; spectax's llama layout has no "
                             "o-projection bias")
        params[f"layers_{i}"] = {
            "attn_norm": {"scale": vec(b + "input_layernorm.weight", E)},
            "attn": attn,
            "mlp_norm": {"scale": vec(b + "post_attention_layernorm.weight", E)},
            "mlp": {
                "gate": {"kernel": kernel(b + "mlp.gate_proj.weight", F, E)},  # [E, F]
                "up": {"kernel": kernel(b + "mlp.up_proj.weight", F, E)},  # [E, F]
                "down": {"kernel": kernel(b + "mlp.down_proj.weight", E, F)},  # [F, E]
            },
        }
    return params


def _gpt2_params(src: _SafetensorsSource, cfg: ModelConfig, dtype: np.dtype) -> dict:
    E, F, V, n_pos = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.max_position
    p = "transformer." if "transformer.wte.weight" in src else ""

    def get(name: str, *shape: int) -> np.ndarray:  # Conv1D weights are stored [in, out] already
        return np.asarray(src.get(p + name, shape), dtype=dtype)

    def norm(name: str) -> dict:
        return {"scale": get(name + ".weight", E), "bias": get(name + ".bias", E)}

    params: dict[str, Any] = {
        "wte": {"embedding": get("wte.weight", V, E)},  # [V, E]
        "wpe": {"embedding": get("wpe.weight", n_pos, E)},  # [max_position, E]
        "ln_f": norm("ln_f"),
    }
    for i in range(cfg.num_layers):
        b = f"h.{i}."
        params[f"layers_{i}"] = {
            "ln_1": norm(b + "ln_1"),
            "attn": {
                "qkv": {"kernel": get(b + "attn.c_attn.weight", E, 3 * E), "bias": get(b + "attn.c_attn.bias", 3 * E)},
                "o": {"kernel": get(b + "attn.c_proj.weight", E, E), "bias": get(b + "attn.c_proj.bias", E)},
            },
            "ln_2": norm(b + "ln_2"),
            "mlp": {
                "fc": {"kernel": get(b + "mlp.c_fc.weight", E, F), "bias": get(b + "mlp.c_fc.bias", F)},
                "proj": {"kernel": get(b + "mlp.c_proj.weight", F, E), "bias": get(b + "mlp.c_proj.bias", E)},
            },
        }
    return params


def load_hf_params(directory: str | os.PathLike, config: ModelConfig, dtype: Any = np.float32) -> dict:
    """Reads a Hugging Face model directory's safetensors weights into the spectax params pytree of `config.arch`
    (layouts in this module's docstring), cast to `dtype` (any numpy dtype, incl. ml_dtypes' bfloat16).

    A tied `lm_head.weight` in the file is ignored. Raises ValueError naming the tensor and file when a tensor is
    missing or has an unexpected shape.
    """
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a spectax ModelConfig, got {type(config)}")
    src = _SafetensorsSource(Path(directory))
    dtype = np.dtype(dtype)
    if config.arch == "gpt2":
        return _gpt2_params(src, config, dtype)
    return _llama_params(src, config, dtype)


def load_hf(directory: str | os.PathLike, dtype: Any = np.float32) -> tuple[ModelConfig, dict]:
    """`(load_hf_config(directory), load_hf_params(directory, config, dtype))`."""
    config = load_hf_config(directory)
    return config, load_hf_params(directory, config, dtype)


def is_hf_checkpoint(directory: str | os.PathLike) -> bool:
    """True when `directory` looks like a Hugging Face checkpoint: config.json plus safetensors weights."""
    d = Path(directory)
    return d.is_dir() and (d / "config.json").is_file() and (
        (d / SAFETENSORS_FILE).is_file() or (d / SAFETENSORS_INDEX).is_file())
