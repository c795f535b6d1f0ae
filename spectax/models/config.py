"""Static, hashable model configuration shared by every architecture."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

ARCHITECTURES = ("llama", "gpt2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape-defining description of a decoder-only transformer (a static jit argument).

    `arch` selects the block: "llama" (RMSNorm, RoPE, GQA, SwiGLU; also Mistral, Qwen2, SmolLM2) or
    "gpt2" (LayerNorm, learned positions, gelu_new). `rope_scaling` is a sorted tuple of (key, value)
    pairs so the config stays hashable. `eos_ids`: every token that ends a generation (the checkpoint's EOS list,
    the chat template's end-of-turn token), `eos_id` (the main one) first; decode with `eos_id=config.eos_ids`.
    `apar_ids`: the (fork, child) control tokens of a model fine-tuned for APAR (`spectax.apar`), else None.
    """

    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    qkv_bias: bool = False
    tie_embeddings: bool = False
    bos_id: int | None = None
    eos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    apar_ids: tuple[int, int] | None = None     # (fork, child): APAR's control tokens, for a model tuned to fork

    def __post_init__(self):
        ends = ((self.eos_id,) if self.eos_id is not None else ()) + tuple(self.eos_ids)
        object.__setattr__(self, "eos_ids", tuple(dict.fromkeys(int(i) for i in ends)))
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; spectax supports {ARCHITECTURES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size",
                     "max_position"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.apar_ids is not None:
            ids = tuple(self.apar_ids)
            if len(ids) != 2 or len(set(ids)) != 2 or not all(isinstance(i, int) and 0 <= i < self.vocab_size
                                                              for i in ids):
                raise ValueError(f"apar_ids must be two distinct token ids (fork, child) below vocab_size "
                                 f"{self.vocab_size}, got {self.apar_ids!r}")
            object.__setattr__(self, "apar_ids", ids)

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        d = json.loads(text)
        d["eos_ids"] = tuple(d.get("eos_ids", ()))
        if d.get("apar_ids") is not None:
            d["apar_ids"] = tuple(d["apar_ids"])
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = tuple((k, v) for k, v in d["rope_scaling"])
        return cls(**d)


def freeze_rope_scaling(scaling: dict[str, Any] | None) -> tuple[tuple[str, Any], ...] | None:
    """Turns an HF `rope_scaling` / `rope_parameters` dict into the hashable form ModelConfig keeps."""
    if not scaling:
        return None
    items = []
    for k, v in sorted(scaling.items()):
        if isinstance(v, list):
            v = tuple(v)
        items.append((k, v))
    return tuple(items)
