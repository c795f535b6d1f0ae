"""The `spectax` command line on tiny saved models: tokenizer discovery, chat template, EOS stop, output, errors."""

import io
import json
import re

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models

import spectax
from spectax import cli
from spectax.io.tokenizer import ByteTokenizer, load_tokenizer
from spectax.models import Model, ModelConfig

CHARS = ["\n"] + [chr(c) for c in range(32, 126)]  # with the two ChatML specials: 97 ids = tiny_llama's vocab
SPEED = re.compile(r"^\[spectax\] (\d+) tokens in [0-9.]+ s: [0-9.]+ tokens/s \(prefill (\d+) prompt tokens")
N = 20  # output bucket 32: keeps clear of the (B=1, prompt 32, output 16) shape test_decode counts compiles of


def write_char_tokenizer(directory, eos_token):
    """A character-level HF tokenizer (ids: <|im_start|>=0, <|im_end|>=1, then CHARS) with `eos_token` as EOS."""
    vocab = {"<|im_start|>": 0, "<|im_end|>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")])
    tok.decoder = decoders.Fuse()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos_token}))


def run_cli(capsys, *argv):
    assert cli.main(list(argv)) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def run_failing(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    return exc.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory, tiny_llama):
    """tiny_llama saved as a checkpoint that carries a tokenizer.json next to its spectax.json."""
    d = spectax.save(tiny_llama, tmp_path_factory.mktemp("cli") / "ckpt")
    write_char_tokenizer(d, eos_token="<|im_end|>")
    return d


@pytest.fixture(scope="module")
def byte_ckpt(tmp_path_factory):
    config = ModelConfig(arch="llama", vocab_size=259, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, intermediate_size=64, max_position=512)
    return spectax.save(Model.random(config, seed=5, scale=3.0), tmp_path_factory.mktemp("cli") / "byte")


def test_generate_with_the_checkpoints_tokenizer_stops_at_eos(char_ckpt, capsys, tmp_path):
    # Find a token the model emits mid-way, then declare it the EOS: the CLI must stop right after it.
    tok = load_tokenizer(char_ckpt)
    prompt_text = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"  # ChatML, no default system
    ids = tok.encode(prompt_text)
    assert ids[0] == 0 and len(ids) == len(prompt_text) - 2 * len("<|im_start|>") - len("<|im_end|>") + 3
    model = spectax.load(char_ckpt)
    free = np.asarray(spectax.decode(model, [ids], max_new_tokens=N).tokens[0]).tolist()
    stop = next(i for i, t in enumerate(free) if i >= 2 and t not in free[:i] and t >= 2)  # a char, new at i
    d = tmp_path / "ckpt_eos"
    spectax.save(model, d)
    write_char_tokenizer(d, eos_token=CHARS[free[stop] - 2])

    out, err = run_cli(capsys, "generate", "--model", str(d), "--max-new-tokens", str(N), "hello")
    assert out == tok.decode(free[:stop], skip_special_tokens=True) + "\n"  # EOS itself not printed
    m = SPEED.match(err.strip())
    assert m, err
    assert (int(m[1]), int(m[2])) == (stop + 1, len(ids))


def test_generate_without_eos_hit_and_system_message(char_ckpt, capsys):
    tok = load_tokenizer(char_ckpt)
    model = spectax.load(char_ckpt)
    ids = tok.encode("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
                     "<|im_start|>assistant\n")
    want = np.asarray(spectax.decode(model, [ids], max_new_tokens=N, eos_id=1).tokens[0]).tolist()
    n = want.index(1) + 1 if 1 in want else N
    out, err = run_cli(capsys, "generate", "--model", str(char_ckpt), "--system", "be brief",
                       "--max-new-tokens", str(N), "hello")
    assert out == tok.decode(want[:n], skip_special_tokens=True) + "\n"
    m = SPEED.match(err.strip())
    assert m and (int(m[1]), int(m[2])) == (n, len(ids))


@pytest.mark.parametrize("kind", ["heads", "block"])
def test_generate_with_a_drafter_directory(char_ckpt, capsys, tmp_path, kind):
    """`--drafter DIR` takes a saved heads or block drafter: the same text as plain decoding, and a tau line."""
    from spectax.drafters import Block, Heads
    model = spectax.load(char_ckpt)
    drafter = (Heads.create(model, num_heads=2) if kind == "heads" else Block.create(model, block_size=2))
    drafter.save(tmp_path / kind)
    plain, _ = run_cli(capsys, "generate", "--model", str(char_ckpt), "--max-new-tokens", str(N), "hello")
    out, err = run_cli(capsys, "generate", "--model", str(char_ckpt), "--max-new-tokens", str(N), "--drafter",
                       str(tmp_path / kind), "hello")
    assert out == plain and "tau" in err
    code, err = run_failing(capsys, "generate", "--model", str(char_ckpt), "--drafter", str(tmp_path), "hello")
    assert code == 2 and "not a drafter directory" in err


def test_raw_prompt_from_stdin_with_explicit_tokenizer(char_ckpt, tiny_llama, capsys, monkeypatch, tmp_path):
    bare = spectax.save(tiny_llama, tmp_path / "bare")  # no tokenizer in the directory
    tok = load_tokenizer(char_ckpt)
    ids = tok.encode("hello there")
    want = np.asarray(spectax.decode(tiny_llama, [ids], max_new_tokens=N, eos_id=1).tokens[0]).tolist()
    n = want.index(1) + 1 if 1 in want else N
    monkeypatch.setattr("sys.stdin", io.StringIO("hello there"))
    out, err = run_cli(capsys, "generate", "--model", str(bare), "--tokenizer", str(char_ckpt / "tokenizer.json"),
                       "--raw", "--max-new-tokens", str(N), "-")
    assert out == tok.decode(want[:n], skip_special_tokens=True) + "\n"
    assert SPEED.match(err.strip())[2] == str(len(ids))


def test_byte_tokenizer_and_sampling_flags(byte_ckpt, capsys):
    tok = ByteTokenizer()
    model = spectax.load(byte_ckpt)
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    kw = dict(max_new_tokens=N, eos_id=tok.eos_id, temperature=0.8, top_k=50, top_p=0.95, rng=7)
    want = np.asarray(spectax.decode(model, [ids], **kw).tokens[0]).tolist()
    n = want.index(tok.eos_id) + 1 if tok.eos_id in want else N
    argv = ["generate", "--model", str(byte_ckpt), "--tokenizer", "byte", "--max-new-tokens", str(N),
            "--temperature", "0.8", "--top-k", "50", "--top-p", "0.95", "--seed", "7", "hi"]
    out, err = run_cli(capsys, *argv)
    answer = [t for t in want[:n] if t != tok.eos_id]
    assert out == tok.decode(answer, skip_special_tokens=True) + "\n"
    assert SPEED.match(err.strip())[1] == str(n)
    greedy = np.asarray(spectax.decode(model, [ids], max_new_tokens=N, eos_id=tok.eos_id).tokens[0]).tolist()
    assert want != greedy  # the sampling flags reached decode()


def test_list(capsys):
    out, _ = run_cli(capsys, "list")
    names = [line.split("\t")[0] for line in out.splitlines()]
    assert names == sorted(spectax.io.hub.REGISTRY) and "smollm2-135m-instruct" in names


def test_bad_model_path(capsys, tmp_path):
    code, err = run_failing(capsys, "generate", "--model", str(tmp_path / "missing"), "hi")
    assert code == 2
    assert err.startswith("spectax: error: ") and "neither a registered model" in err and "missing" in err


def test_model_without_tokenizer(capsys):
    from pathlib import Path

    hf_dir = Path(__file__).parent / "fixtures" / "hf" / "gpt2"
    code, err = run_failing(capsys, "generate", "--model", str(hf_dir), "hi")
    assert code == 2 and "no tokenizer found" in err and "--tokenizer" in err


def test_tokenizer_bigger_than_the_model(char_ckpt, capsys):
    code, err = run_failing(capsys, "generate", "--model", str(char_ckpt), "--tokenizer", "byte", "hi")
    assert code == 2 and "259 ids" in err and "97" in err


@pytest.mark.parametrize("extra,word", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--raw", "--system", "x"], "--system"),
])
def test_library_value_errors_exit_2(char_ckpt, capsys, extra, word):
    code, err = run_failing(capsys, "generate", "--model", str(char_ckpt), *extra, "hi")
    assert code == 2 and err.startswith("spectax: error: ") and word in err


@pytest.mark.parametrize("argv", [
    [],
    ["generate", "hi"],                                          # --model missing
    ["generate", "--model", "x"],                                # prompt missing
    ["generate", "--model", "x", "--max-new-tokens", "0", "hi"],
    ["generate", "--model", "x", "--max-new-tokens", "many", "hi"],
    ["generate", "--model", "x", "--temperature", "hot", "hi"],
    ["frobnicate"],
])
def test_argument_errors_exit_2(argv, capsys):
    code, err = run_failing(capsys, *argv)
    assert code == 2 and "usage: spectax" in err
