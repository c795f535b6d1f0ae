"""Test helper (not library code): write tiny llama GGUF files the way llama.cpp's converter does.

`write_llama_gguf(path, config, params)` stores a spectax llama params pytree as a GGUF file: matrices back in
torch Linear layout [out, in], q/k rows permuted llama.cpp-style (rotary halves interleaved), most tensors F32 and
the tensors named in `q8_0` quantized to Q8_0 with gguf's Python quantizer, plus a small byte-level BPE tokenizer
(`tiny_bpe_vocab`) and a ChatML chat template in the metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# merges over the byte-level alphabet (space is "Ġ", newline "Ċ"); each result becomes a token
MERGES = ("Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġ Ġ", "Ġa n", "Ġan d", "o n", "Ċ Ċ", "ĠĠ ĠĠ")


def byte_alphabet() -> list[str]:
    """The GPT-2 byte-level alphabet: entry b is the printable character standing for byte b."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tiny_bpe_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, GGUF token types, merges): 3 control tokens, the 256 byte symbols, one token per merge."""
    tokens = list(SPECIAL_TOKENS) + byte_alphabet()
    for m in MERGES:
        a, b = m.split(" ")
        assert a in tokens and b in tokens, m
        tokens.append(a + b)
    types = [3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - len(SPECIAL_TOKENS))  # 3 = CONTROL, 1 = NORMAL
    return tokens, types, list(MERGES)


def llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, row pairs (i, i + half) become adjacent. w: [n_heads*hd, ...]."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_llama_params(config, seed: int = 0) -> dict:
    """Random float32 params in the spectax llama layout for `config` (norm scales near 1)."""
    rng = np.random.default_rng(seed)
    D, H, Hkv, hd, F, V = (config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
                           config.intermediate_size, config.vocab_size)

    def mat(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def scale(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    params = {"embed": {"embedding": mat(V, D)}, "final_norm": {"scale": scale(D)}}
    if not config.tie_embeddings:
        params["lm_head"] = {"kernel": mat(D, V)}
    for i in range(config.num_layers):
        attn = {"q": {"kernel": mat(D, H * hd)}, "k": {"kernel": mat(D, Hkv * hd)},
                "v": {"kernel": mat(D, Hkv * hd)}, "o": {"kernel": mat(H * hd, D)}}
        if config.qkv_bias:
            attn["q"]["bias"], attn["k"]["bias"], attn["v"]["bias"] = mat(H * hd), mat(Hkv * hd), mat(Hkv * hd)
        params[f"layers_{i}"] = {
            "attn_norm": {"scale": scale(D)}, "attn": attn, "mlp_norm": {"scale": scale(D)},
            "mlp": {"gate": {"kernel": mat(D, F)}, "up": {"kernel": mat(D, F)}, "down": {"kernel": mat(F, D)}},
        }
    return params


def write_llama_gguf(path: str | os.PathLike, config, params: dict, *, q8_0: Sequence[str] = ("blk.0.ffn_gate.weight",),
                     architecture: str = "llama", pre: str = "gpt2", chat_template: str | None = CHAT_TEMPLATE,
                     vocab: tuple[list[str], list[int], list[str]] | None = None, omit: Sequence[str] = ()) -> Path:
    """Writes `params` (spectax llama layout) as a GGUF file at `path` (atomically) and returns the path.

    `q8_0`: GGUF tensor names stored as Q8_0 (their row length, the input dim, must be a multiple of 32).
    `architecture`: the general.architecture written (anything but "llama" makes a file spectax must refuse).
    `vocab`: (tokens, types, merges); defaults to `tiny_bpe_vocab()`, whose length must equal config.vocab_size.
    `omit`: GGUF tensor names left out (to make broken files).
    """
    import gguf

    tokens, types, merges = vocab or tiny_bpe_vocab()
    if len(tokens) != config.vocab_size:
        raise ValueError(f"the vocabulary has {len(tokens)} tokens but config.vocab_size={config.vocab_size}")
    H, Hkv = config.num_heads, config.num_kv_heads
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), architecture)
    w.add_name("spectax tiny test model")
    w.add_context_length(config.max_position)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_rope_dimension_count(config.head_dim)
    if config.head_dim * H != config.hidden_size:
        w.add_key_length(config.head_dim)
        w.add_value_length(config.head_dim)
    w.add_layer_norm_rms_eps(config.norm_eps)
    w.add_rope_freq_base(config.rope_theta)
    w.add_vocab_size(config.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if config.bos_id is not None:
        w.add_bos_token_id(config.bos_id)
    if config.eos_id is not None:
        w.add_eos_token_id(config.eos_id)
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def put(name: str, arr: np.ndarray) -> None:  # arr in numpy order, [out, in] for matrices
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if name in omit:
            return
        if name in q8_0:
            q = gguf.quantize(arr, gguf.GGMLQuantizationType.Q8_0)  # uint8 [rows, bytes per row]
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)

    put("token_embd.weight", params["embed"]["embedding"])
    for i in range(config.num_layers):
        p, b = params[f"layers_{i}"], f"blk.{i}."
        a = p["attn"]
        put(b + "attn_norm.weight", p["attn_norm"]["scale"])
        put(b + "attn_q.weight", llamacpp_permute(a["q"]["kernel"].T, H))
        put(b + "attn_k.weight", llamacpp_permute(a["k"]["kernel"].T, Hkv))
        put(b + "attn_v.weight", a["v"]["kernel"].T)
        if config.qkv_bias:
            put(b + "attn_q.bias", llamacpp_permute(a["q"]["bias"], H))
            put(b + "attn_k.bias", llamacpp_permute(a["k"]["bias"], Hkv))
            put(b + "attn_v.bias", a["v"]["bias"])
        put(b + "attn_output.weight", a["o"]["kernel"].T)
        put(b + "ffn_norm.weight", p["mlp_norm"]["scale"])
        put(b + "ffn_gate.weight", p["mlp"]["gate"]["kernel"].T)
        put(b + "ffn_up.weight", p["mlp"]["up"]["kernel"].T)
        put(b + "ffn_down.weight", p["mlp"]["down"]["kernel"].T)
    put("output_norm.weight", params["final_norm"]["scale"])
    if not config.tie_embeddings:
        put("output.weight", params["lm_head"]["kernel"].T)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
