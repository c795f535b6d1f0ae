"""Tokenizers: a byte-level one for tiny test models, and Hugging Face `tokenizers` adapters.

Every tokenizer has the same small surface (`Tokenizer`): `encode(text, add_bos=False) -> list[int]`,
`decode(ids) -> str`, `vocab_size`, `bos_id`, `eos_id`, and `chat(messages, add_generation_prompt=True) -> str`,
which renders a conversation in ChatML (`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, then
`<|im_start|>assistant\\n`). When the model's chat template injects a default system message for conversations
that do not start with one (SmolLM2 does), `chat` does exactly the same.

`load_tokenizer(path)` picks the implementation: a directory with `tokenizer.json` -> `HFTokenizer.from_dir`,
a `.gguf` file -> `from_gguf`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# llama.cpp `tokenizer.ggml.pre` names whose pre-tokenization is "every number character on its own, then the GPT-2
# regex" (Hugging Face: Sequence[Digits(individual_digits=True), ByteLevel]); SmolLM/SmolLM2 use "smollm".
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell")
_GPT2_ONLY = ("gpt2",)
SUPPORTED_GGUF_PRE_TOKENIZERS = _GPT2_ONLY + _DIGITS_THEN_GPT2

_GGUF_TOKEN_NORMAL, _GGUF_TOKEN_CONTROL, _GGUF_TOKEN_USER_DEFINED = 1, 3, 4

# A default system turn inside a ChatML template: `<|im_start|>system` + newline + text + `<|im_end|>`, the newline
# either literal or as a Jinja escape.
_DEFAULT_SYSTEM_RE = re.compile(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", re.DOTALL)


def _default_system_from_template(template: str | None) -> str | None:
    """The default system message a ChatML template injects when the conversation has none (or None).

    Only templates that inject it conditionally (a test on the first message's role) count; a template that merely
    renders a caller's system message has no literal system text.
    """
    if not template:
        return None
    for m in _DEFAULT_SYSTEM_RE.finditer(template):
        text = m.group(1)
        if "'" in text or '"' in text or "{" in text:  # not a plain literal (e.g. a real message's content)
            continue
        return text.replace("\\n", "\n")
    return None


def format_chatml(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True,
                  default_system: str | None = None) -> str:
    """Renders messages in ChatML. `default_system`, when given, is prepended as a system turn if the first
    message is not a system message (the SmolLM2 / Qwen2 template behaviour)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages)}")
    if not messages:
        raise ValueError("cannot render an empty conversation; give at least one message")
    parts = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            raise ValueError(f"message {i} must be a mapping with 'role' and 'content', got {msg!r}")
        role, content = msg["role"], msg["content"]
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError(f"message {i}: role and content must be strings, got {type(role)}, {type(content)}")
        if i == 0 and role != "system" and default_system is not None:
            parts.append(f"{IM_START}system\n{default_system}{IM_END}\n")
        parts.append(f"{IM_START}{role}\n{content}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


class Tokenizer:
    """The interface every spectax tokenizer provides.

    Attributes: `vocab_size` (ids are in [0, vocab_size)), `bos_id`, `eos_id`, `pad_id` (int or None),
    `chat_template` (the model's template string, or None), `default_system` (the system message `chat` injects
    when a conversation has none, or None).
    """

    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    chat_template: str | None = None
    default_system: str | None = None

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Text -> token ids; with `add_bos`, the BOS id first (ValueError if the tokenizer has none)."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Token ids -> text (special tokens rendered as their text unless `skip_special_tokens`)."""
        raise NotImplementedError

    def chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """Renders a conversation `[{'role': ..., 'content': ...}, ...]` as the prompt text (ChatML)."""
        if self.chat_template and IM_START not in self.chat_template:
            raise ValueError("this tokenizer's chat template is not ChatML; spectax only renders ChatML templates")
        return format_chatml(messages, add_generation_prompt, self.default_system)

    def encode_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """`encode(chat(messages, add_generation_prompt))`: the prompt ids of a conversation."""
        return self.encode(self.chat(messages, add_generation_prompt))

    def _with_bos(self, ids: list[int], add_bos: bool) -> list[int]:
        if not add_bos:
            return ids
        if self.bos_id is None:
            raise ValueError("add_bos=True but this tokenizer has no BOS token")
        return [self.bos_id] + ids

    def check_vocab_ids(self, ids: Iterable[int]) -> list[int]:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            out.append(i)
        return out


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: ids 0..255 are the bytes, then BOS=256, EOS=257, PAD=258 (vocab_size 259).

    Meant for tiny test models. Text is never parsed for special tokens; decoding renders BOS/EOS/PAD as
    `<bos>`, `<eos>`, `<pad>` (or drops them with `skip_special_tokens`), and invalid UTF-8 as U+FFFD.
    """

    SPECIALS = ("<bos>", "<eos>", "<pad>")

    def __init__(self):
        self.vocab_size = 256 + len(self.SPECIALS)
        self.bos_id, self.eos_id, self.pad_id = 256, 257, 258

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Text -> its UTF-8 bytes as ids (optionally BOS first)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text)}")
        return self._with_bos(list(text.encode("utf-8")), add_bos)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text; runs of byte ids are decoded as UTF-8 together."""
        out, buf = [], bytearray()
        for i in self.check_vocab_ids(ids):
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special_tokens:
                out.append(self.SPECIALS[i - 256])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer(Tokenizer):
    """Adapter over a Hugging Face `tokenizers.Tokenizer` (from a tokenizer.json, or built from GGUF metadata).

    Special tokens written in the text (e.g. `<|im_start|>`) are encoded as their single ids, as transformers
    does; no BOS/EOS is added unless `encode(..., add_bos=True)`.
    """

    def __init__(self, tokenizer, bos_id: int | None = None, eos_id: int | None = None, pad_id: int | None = None,
                 chat_template: str | None = None, add_bos_token: bool = False):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if value is not None and not 0 <= int(value) < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary [0, {self.vocab_size})")
            setattr(self, name, None if value is None else int(value))
        self.chat_template = chat_template
        self.default_system = _default_system_from_template(chat_template)
        self.add_bos_token = bool(add_bos_token)  # what the model's own config asks for; encode() never adds BOS

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Text -> ids (special-token text becomes special ids; nothing added unless `add_bos`)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text)}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return self._with_bos(list(ids), add_bos)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text (byte-level pieces that are not valid UTF-8 on their own decode as U+FFFD)."""
        return self._tok.decode(self.check_vocab_ids(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary token string (e.g. "<|im_end|>"), or None."""
        return self._tok.token_to_id(token)

    def with_special_tokens(self, tokens: Sequence[str]) -> "HFTokenizer":
        """A copy whose vocabulary ends with `tokens` as special tokens (ids vocab_size, vocab_size + 1, ...; text
        spelling them encodes to those ids, and decode(skip_special_tokens=True) drops them)."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as _Backend

        if any(self.token_to_id(t) is not None for t in tokens):
            raise ValueError(f"the vocabulary already holds one of {list(tokens)}")
        backend = _Backend.from_str(self._tok.to_str())
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
        copy = HFTokenizer(backend, self.bos_id, self.eos_id, self.pad_id, self.chat_template, self.add_bos_token)
        ids = [copy.token_to_id(t) for t in tokens]
        if ids != list(range(self.vocab_size, self.vocab_size + len(tokens))):
            raise ValueError(f"{list(tokens)} got ids {ids}, not the next {len(tokens)} after {self.vocab_size}")
        return copy

    @classmethod
    def from_file(cls, tokenizer_json: str | os.PathLike, **kwargs) -> "HFTokenizer":
        """From a tokenizer.json file; `kwargs` as for the constructor (bos_id, eos_id, chat_template, ...)."""
        from tokenizers import Tokenizer as _Backend

        path = Path(tokenizer_json)
        if not path.is_file():
            raise ValueError(f"tokenizer file {path} does not exist")
        try:
            backend = _Backend.from_file(str(path))
        except Exception as e:
            raise ValueError(f"cannot read tokenizer file {path}: {e}") from e
        return cls(backend, **kwargs)

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Writes tokenizer.json and tokenizer_config.json (BOS / EOS / PAD tokens, chat template, add_bos_token)
        into `directory`, atomically: `HFTokenizer.from_dir` (and transformers) read it back as this tokenizer."""
        from spectax.files import write_dir

        def fill(tmp: Path) -> None:
            self._tok.save(str(tmp / "tokenizer.json"))
            config = {key: self._tok.id_to_token(value) for key, value in
                      (("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id))
                      if value is not None}
            config.update(chat_template=self.chat_template, add_bos_token=self.add_bos_token)
            (tmp / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")

        return write_dir(directory, overwrite, fill)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> "HFTokenizer":
        """From a Hugging Face model directory: tokenizer.json, plus BOS/EOS and chat template from
        tokenizer_config.json (or chat_template.jinja), falling back to config.json's bos/eos ids."""
        d = Path(directory)
        if not (d / "tokenizer.json").is_file():
            raise ValueError(f"{d} has no tokenizer.json")
        tok_cfg = _read_json(d / "tokenizer_config.json")
        model_cfg = _read_json(d / "config.json")
        template = tok_cfg.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            template = named.get("default")
        if template is None and (d / "chat_template.jinja").is_file():
            template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        tok = cls.from_file(d / "tokenizer.json", chat_template=template,
                            add_bos_token=bool(tok_cfg.get("add_bos_token", False)))

        def special_id(token_key: str, id_key: str) -> int | None:
            token = tok_cfg.get(token_key)
            if isinstance(token, Mapping):
                token = token.get("content")
            if isinstance(token, str) and tok.token_to_id(token) is not None:
                return tok.token_to_id(token)
            value = model_cfg.get(id_key)
            if isinstance(value, list):
                value = value[0] if value else None
            return None if value is None else int(value)

        bos, eos, pad = (special_id("bos_token", "bos_token_id"), special_id("eos_token", "eos_token_id"),
                         special_id("pad_token", "pad_token_id"))
        for name, value in (("bos", bos), ("eos", eos), ("pad", pad)):
            if value is not None and not 0 <= value < tok.vocab_size:
                raise ValueError(f"{d}: {name} id {value} is outside the vocabulary [0, {tok.vocab_size})")
        tok.bos_id, tok.eos_id, tok.pad_id = bos, eos, pad
        return tok


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return data if isinstance(data, dict) else {}


def _gguf_pre_tokenizer(pre: str | None, path: str):
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _GPT2_ONLY:
        return byte_level
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    raise ValueError(f"GGUF file {path}: tokenizer.ggml.pre={pre!r} is not supported; supported: "
                     f"{SUPPORTED_GGUF_PRE_TOKENIZERS}")


def from_gguf(path) -> HFTokenizer:
    """Builds the tokenizer stored in a GGUF file's metadata (byte-level BPE, `tokenizer.ggml.model == "gpt2"`).

    `path`: a .gguf path or a reader from `spectax.io.gguf.open_gguf` (parse a big file once, share it).
    Vocabulary from `tokenizer.ggml.tokens`, merges from `tokenizer.ggml.merges`, special tokens = the tokens of
    type CONTROL in `tokenizer.ggml.token_type` (USER_DEFINED ones become plain added tokens), pre-tokenizer from
    `tokenizer.ggml.pre` (SmolLM2: "smollm" = each digit on its own, then the GPT-2 regex, exactly like its
    Hugging Face tokenizer.json and llama.cpp), BOS/EOS/PAD from `tokenizer.ggml.{bos,eos,padding}_token_id`,
    chat template from `tokenizer.chat_template`.
    """
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as _Backend

    from spectax.io.gguf import reader_and_name

    reader, path = reader_and_name(path)

    def meta(key: str, default: Any = None) -> Any:
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    kind = meta("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF file {path}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') is "
                         "supported")
    tokens = meta("tokenizer.ggml.tokens")
    merges = meta("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ValueError(f"GGUF file {path} lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    types = meta("tokenizer.ggml.token_type") or [_GGUF_TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ValueError(f"GGUF file {path}: {len(types)} token types for {len(tokens)} tokens")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise ValueError(f"GGUF file {path}: token {t!r} appears twice (ids {vocab[t]} and {i})")
        vocab[t] = i
    pairs = []
    for rank, m in enumerate(merges):
        parts = m.split(" ")
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab:
            raise ValueError(f"GGUF file {path}: merge {rank} {m!r} is not two vocabulary tokens")
        pairs.append((parts[0], parts[1]))

    backend = _Backend(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = _gguf_pre_tokenizer(meta("tokenizer.ggml.pre"), path)
    backend.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False)
                for t, ty in zip(tokens, types) if ty == _GGUF_TOKEN_CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types) if ty == _GGUF_TOKEN_USER_DEFINED]
    if specials:
        backend.add_special_tokens(specials)
    if user:
        backend.add_tokens(user)
    if backend.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ValueError(f"GGUF file {path}: tokenizer has {backend.get_vocab_size(with_added_tokens=True)} ids "
                         f"for {len(tokens)} tokens")

    def opt_id(key: str) -> int | None:
        v = meta(key)
        return None if v is None else int(v)

    return HFTokenizer(backend, bos_id=opt_id("tokenizer.ggml.bos_token_id"),
                       eos_id=opt_id("tokenizer.ggml.eos_token_id"),
                       pad_id=opt_id("tokenizer.ggml.padding_token_id"),
                       chat_template=meta("tokenizer.chat_template"),
                       add_bos_token=bool(meta("tokenizer.ggml.add_bos_token", False)))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer stored at `path`: a `.gguf` file (its metadata), a directory with tokenizer.json, or a
    tokenizer.json file. The name "byte" gives a `ByteTokenizer`."""
    if os.fspath(path) == "byte":
        return ByteTokenizer()
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return HFTokenizer.from_dir(p)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return from_gguf(ggufs[0])
        raise ValueError(f"{p} has no tokenizer.json and not exactly one .gguf file")
    if p.is_file():
        if p.suffix == ".gguf":
            return from_gguf(p)
        if p.name.endswith(".json"):
            return HFTokenizer.from_file(p)
        raise ValueError(f"{p}: not a .gguf file or a tokenizer.json")
    raise ValueError(f"tokenizer path {p} does not exist")
