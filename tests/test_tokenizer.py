"""Tokenizers: byte-level round trips, the GGUF-metadata BPE tokenizer, ChatML formatting, load_tokenizer."""

import json

import pytest

from gguf_writer_util import CHAT_TEMPLATE, random_llama_params, tiny_bpe_vocab, write_llama_gguf
from spectax.io.tokenizer import ByteTokenizer, HFTokenizer, format_chatml, from_gguf, load_tokenizer
from spectax.models.config import ModelConfig

TEXTS = ["", "hello", "the cat and the hat", "  leading, trailing  ", "line one\n\nline two\r\n\ttab",
         "Café naïve — “quotes”", "日本語 你好", "emoji 😀👍🏽🇺🇸", "def f(x):\n    return x ** 2\n", "a  1 22 333",
         "\x00\x01 control \x7f"]


def tiny_gguf(tmp_path, pre="gpt2", name="tiny.gguf", chat_template=CHAT_TEMPLATE):
    tokens = tiny_bpe_vocab()[0]
    cfg = ModelConfig(arch="llama", vocab_size=len(tokens), hidden_size=32, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=16, intermediate_size=32, max_position=64, bos_id=1, eos_id=2)
    return write_llama_gguf(tmp_path / name, cfg, random_llama_params(cfg), q8_0=(), pre=pre,
                            chat_template=chat_template)


# ---------------------------------------------------------------- ByteTokenizer
def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    assert tok.vocab_size == 259 and (tok.bos_id, tok.eos_id, tok.pad_id) == (256, 257, 258)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert tok.encode("hi", add_bos=True) == [256, 104, 105]
    assert tok.decode([256, 104, 105, 257, 258]) == "<bos>hi<eos><pad>"
    assert tok.decode([256, 104, 105, 257], skip_special_tokens=True) == "hi"
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # a cut-off UTF-8 sequence decodes to U+FFFD, never raises


def test_byte_tokenizer_bad_input():
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([259])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])
    with pytest.raises(ValueError):
        tok.encode(b"bytes")


# ---------------------------------------------------------------- GGUF tokenizer
def test_gguf_tokenizer_round_trip(tmp_path):
    tok = from_gguf(tiny_gguf(tmp_path))
    tokens, _, _ = tiny_bpe_vocab()
    assert tok.vocab_size == len(tokens)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    for text in TEXTS:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    # merges are applied: " the" is one token, "the" two ("t", "he")
    assert tok.encode(" the") == [tokens.index("Ġthe")]
    assert tok.encode("the") == [tokens.index("t"), tokens.index("he")]
    assert tok.encode("x", add_bos=True)[0] == 1


def test_gguf_tokenizer_special_tokens(tmp_path):
    tok = from_gguf(tiny_gguf(tmp_path))
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert ids.count(1) == 1 and ids.count(2) == 1
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert tok.token_to_id("<|endoftext|>") == 0


def test_gguf_pre_tokenizer_follows_metadata(tmp_path):
    """"smollm" splits every digit off before the GPT-2 regex, so whitespace before a digit merges ("ĠĠ")."""
    tokens = tiny_bpe_vocab()[0]
    gpt2 = from_gguf(tiny_gguf(tmp_path, pre="gpt2", name="gpt2.gguf"))
    smollm = from_gguf(tiny_gguf(tmp_path, pre="smollm", name="smollm.gguf"))
    a, sp, spsp, one = (tokens.index(t) for t in ("a", "Ġ", "ĠĠ", "1"))
    assert gpt2.encode("a  1") == [a, sp, sp, one]
    assert smollm.encode("a  1") == [a, spsp, one]
    assert smollm.encode("123") == [tokens.index(c) for c in "123"]
    for text in TEXTS:
        assert smollm.decode(smollm.encode(text)) == text
    with pytest.raises(ValueError, match="llama-bpe"):
        from_gguf(tiny_gguf(tmp_path, pre="llama-bpe", name="llama3.gguf"))


# ---------------------------------------------------------------- chat formatting
def test_chat_injects_the_templates_default_system(tmp_path):
    tok = from_gguf(tiny_gguf(tmp_path))
    assert tok.default_system == "You are a tiny test model"
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.chat(msgs) == ("<|im_start|>system\nYou are a tiny test model<|im_end|>\n"
                              "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with_system = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello."}]
    assert tok.chat(with_system, add_generation_prompt=False) == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n")
    ids = tok.encode_chat(msgs)
    assert ids == tok.encode(tok.chat(msgs))
    assert ids.count(1) == 3 and ids.count(2) == 2  # three <|im_start|>, two <|im_end|>


def test_chat_without_template_is_plain_chatml(tmp_path):
    msgs = [{"role": "user", "content": "2+2?"}]
    expected = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert ByteTokenizer().chat(msgs) == expected
    assert from_gguf(tiny_gguf(tmp_path, chat_template=None)).chat(msgs) == expected
    assert format_chatml(msgs, add_generation_prompt=False) == "<|im_start|>user\n2+2?<|im_end|>\n"


def test_chat_bad_messages():
    tok = ByteTokenizer()
    for bad in ([], "hello", [{"role": "user"}], [{"role": "user", "content": 3}], ["hi"]):
        with pytest.raises(ValueError):
            tok.chat(bad)


# ---------------------------------------------------------------- tokenizer.json directories, load_tokenizer
def test_load_tokenizer_dispatch(tmp_path):
    gguf_path = tiny_gguf(tmp_path)
    from_file = load_tokenizer(gguf_path)
    assert isinstance(from_file, HFTokenizer) and from_file.vocab_size == len(tiny_bpe_vocab()[0])
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    from_file.backend.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "chat_template": CHAT_TEMPLATE}))
    tok = load_tokenizer(hf_dir)
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.default_system == "You are a tiny test model"
    for text in TEXTS:
        assert tok.encode(text) == from_file.encode(text)
    assert isinstance(load_tokenizer(hf_dir / "tokenizer.json"), HFTokenizer)

    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        load_tokenizer(tmp_path / "empty")


def test_hf_dir_ids_fall_back_to_config_json(tmp_path):
    src = from_gguf(tiny_gguf(tmp_path))
    d = tmp_path / "hf"
    d.mkdir()
    src.backend.save(str(d / "tokenizer.json"))
    (d / "config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [2, 0]}))
    tok = HFTokenizer.from_dir(d)
    assert (tok.bos_id, tok.eos_id, tok.chat_template) == (0, 2, None)


def test_save_and_read_back_is_the_same_tokenizer(tmp_path):
    """HFTokenizer.save writes what from_dir reads back: ids, specials, chat template, add_bos_token."""
    src = from_gguf(tiny_gguf(tmp_path))
    saved = src.save(tmp_path / "saved")
    back = HFTokenizer.from_dir(saved)
    for text in ["hello world", "<|im_start|>user\nhi<|im_end|>", "  spaces  and 123", ""]:
        assert back.encode(text) == src.encode(text)
    ids = src.encode("hello world")
    assert back.decode(ids) == src.decode(ids)
    assert (back.vocab_size, back.bos_id, back.eos_id, back.pad_id, back.chat_template, back.add_bos_token,
            back.default_system) == (src.vocab_size, src.bos_id, src.eos_id, src.pad_id, src.chat_template,
                                     src.add_bos_token, src.default_system)
    msgs = [{"role": "user", "content": "hi"}]
    assert back.chat(msgs) == src.chat(msgs)
    with pytest.raises(ValueError, match="already exists"):
        src.save(saved)


def test_special_tokens_appended_after_the_vocabulary(tmp_path):
    """APAR's control tokens: the next ids, one id each when spelled in text, dropped by skip_special_tokens, and
    nothing else changes."""
    src = from_gguf(tiny_gguf(tmp_path))
    tok = src.with_special_tokens(["[Fork]", "[Child]"])
    v = src.vocab_size
    assert (tok.vocab_size, tok.token_to_id("[Fork]"), tok.token_to_id("[Child]")) == (v + 2, v, v + 1)
    ids = tok.encode("hello[Fork] world[Child]!")
    assert ids == src.encode("hello") + [v] + src.encode(" world") + [v + 1] + src.encode("!")
    assert tok.decode(ids, skip_special_tokens=True) == "hello world!"
    for text in ["hello world", "<|im_start|>user\nhi<|im_end|>"]:
        assert tok.encode(text) == src.encode(text)
    assert src.token_to_id("[Fork]") is None                                  # the original is untouched
    with pytest.raises(ValueError, match="already holds"):
        tok.with_special_tokens(["[Fork]"])
