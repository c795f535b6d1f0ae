"""The Target protocol: what the decode loop needs of the model it decodes (a `Model` or an `Ensemble`)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from spectax.cache import KVCache
from spectax.models.config import ModelConfig


@runtime_checkable
class Target(Protocol):
    """A pytree with a static `config` (the vocabulary, the context, the hidden size drafters build on) and:

    forward(tokens_BT, positions_BT, kv, lengths_B, mask_TT, attn_impl, logits_at_BI, write_cache, features_at)
        -> ForwardOut: one forward over T new tokens per row on top of the cache (see `Model.forward`);
    prefill(prompt_BP, prompt_len_B, kv, chunk, attn_impl, features_at) -> ForwardOut: the prompts into the cache;
    create_cache(batch, size, fill) -> KVCache; logits(tokens_BT) -> [B, T, V] (no cache; parity checks);
    logical_axes() -> the same pytree with a `spectax.sharding.Axes` per array (how a mesh places it).
    """

    config: ModelConfig

    def forward(self, tokens_BT, positions_BT, kv, lengths_B, mask_TT, attn_impl=..., logits_at_BI=None,
                write_cache: bool = True, features_at: tuple[int, ...] = ()) -> Any: ...

    def prefill(self, prompt_BP, prompt_len_B, kv, chunk: int, attn_impl=..., features_at: tuple[int, ...] = ()
                ) -> Any: ...

    def create_cache(self, batch: int, size: int, fill: float = 0.0) -> KVCache: ...

    def logits(self, tokens_BT) -> Any: ...

    def logical_axes(self) -> Any: ...
