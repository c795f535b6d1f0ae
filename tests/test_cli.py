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
    ["generate", "--model", "x", "--batch-file", "f.txt", "hi"],  # a prompt and a batch file
    ["generate", "--model", "x", "--max-new-tokens", "0", "hi"],
    ["generate", "--model", "x", "--max-new-tokens", "many", "hi"],
    ["generate", "--model", "x", "--temperature", "hot", "hi"],
    ["frobnicate"],
])
def test_argument_errors_exit_2(argv, capsys):
    code, err = run_failing(capsys, *argv)
    assert code == 2 and "usage: spectax" in err


def test_batch_file_decodes_every_line_as_one_batch(char_ckpt, capsys, tmp_path):
    """--batch-file: one ragged batch, one JSON line per prompt in order, each the row decode() gives."""
    tok = load_tokenizer(char_ckpt)
    texts = ["hello", "a longer question here", "hi"]
    (tmp_path / "prompts.txt").write_text("\n".join(texts) + "\n\n", encoding="utf-8")   # blank lines skipped
    ids = [tok.encode(f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n") for t in texts]
    want = spectax.decode(spectax.load(char_ckpt), ids, max_new_tokens=N, eos_id=1)
    out, err = run_cli(capsys, "generate", "--model", str(char_ckpt), "--max-new-tokens", str(N), "--batch-file",
                       str(tmp_path / "prompts.txt"))
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == texts
    for r, tokens, n in zip(rows, np.asarray(want.tokens).tolist(), np.asarray(want.lengths).tolist()):
        assert r["tokens"] == n
        assert r["reply"] == tok.decode([t for t in tokens[:n] if t != 1], skip_special_tokens=True)
    m = SPEED.match(err.strip())
    assert m and (int(m[1]), int(m[2])) == (int(want.lengths.sum()), sum(map(len, ids)))


def test_compare_plain_reports_a_speedup_and_equal_tokens(char_ckpt, capsys, tmp_path):
    from spectax.drafters import Heads
    Heads.create(spectax.load(char_ckpt), num_heads=2).save(tmp_path / "heads")
    out, err = run_cli(capsys, "generate", "--model", str(char_ckpt), "--max-new-tokens", str(N), "--drafter",
                       str(tmp_path / "heads"), "--tree", "chain:1", "--compare-plain", "hello")
    plain, _ = run_cli(capsys, "generate", "--model", str(char_ckpt), "--max-new-tokens", str(N), "hello")
    assert out == plain
    assert re.search(r"^\[spectax\] plain: \d+ tokens in [0-9.]+ s; speedup [0-9.]+x; tokens identical$", err, re.M)


@pytest.mark.parametrize("extra,word", [
    (["--batch-file", "missing.txt"], "not a file"),
    (["--compare-plain", "hi"], "give --drafter"),
    (["--compile-cache", "cc", "--no-compile-cache", "hi"], "contradict"),
    (["--tree", "chain:2", "hi"], "give --drafter"),
    (["--drafter", "SHIPPED_MEDUSA", "--tree", "optimal", "hi"], "spectax bench --tree optimal"),
    (["--drafter", "SHIPPED_MEDUSA", "--tree", "star:2", "hi"], "chain:K"),
    (["--drafter", "SHIPPED_MEDUSA", "hi"], "vocabulary"),          # a drafter made for another model
])
def test_generate_flag_errors_exit_2(char_ckpt, capsys, tmp_path, monkeypatch, extra, word):
    from spectax.io import hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("hello\n", encoding="utf-8")
    medusa = str(hub.shipped_drafter("smollm2-135m-instruct", "medusa"))
    extra = [medusa if a == "SHIPPED_MEDUSA" else a for a in extra]
    code, err = run_failing(capsys, "generate", "--model", str(char_ckpt), *extra)
    assert code == 2 and err.startswith("spectax: error: ") and word in err


def test_a_second_generate_compiles_nothing(char_ckpt, tmp_path):
    """Two `spectax generate` processes with one --compile-cache: the first compiles and writes its programs, the
    second compiles nothing: the decode program runs from the program store (not even traced), the few small
    programs around it are read from JAX's cache (JAX's compile events, as the speed line reports them); the same
    text."""
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "spectax.cli", "generate", "--model", str(char_ckpt), "--max-new-tokens", str(N),
            "--compile-cache", str(tmp_path / "cc"), "hello"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    runs = [subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr[-2000:]
    cached = [re.search(r"(\d+) of (\d+) programs read from the compile cache", r.stderr) for r in runs]
    assert all(cached), [r.stderr for r in runs]
    (hits0, programs0), (hits1, programs1) = [(int(m[1]), int(m[2])) for m in cached]
    assert hits0 == 0 and programs0 >= 2 and "program store" not in runs[0].stderr   # the first call compiled ...
    assert "1 run from the program store" in runs[1].stderr                         # ... the second loaded the loop
    assert hits1 == programs1 == programs0 - 1                                       # and read everything else
    assert runs[1].stdout == runs[0].stdout and len(list((tmp_path / "cc" / "programs").iterdir())) == 1


def test_streamed_text_is_the_text(char_ckpt, capsys):
    """--stream prints, chunk by chunk, exactly the text a single run prints (and the same speed line); chunks
    with drafters are tested in test_decode.py."""
    argv = ["generate", "--model", str(char_ckpt), "--max-new-tokens", str(N), "hello"]
    whole, _ = run_cli(capsys, *argv)
    streamed, err = run_cli(capsys, *argv[:1], "--stream", "--stream-steps", "2", *argv[1:])
    assert streamed == whole and SPEED.match(err.strip())
    code, err = run_failing(capsys, "generate", "--model", str(char_ckpt), "--stream", "--batch-file", "x.txt")
    assert code == 2 and "--stream" in err


def test_subcommands_share_their_flags_and_help_texts(capsys):
    """One definition per shared flag: demo, generate, bench and train print the same help for what they share."""
    def help_of(*argv) -> str:
        with pytest.raises(SystemExit) as e:
            cli.main([*argv, "--help"])
        assert e.value.code == 0
        return " ".join(capsys.readouterr().out.split())

    helps = {argv: help_of(*argv) for argv in [("demo",), ("generate",), ("bench",), ("train", "heads"),
                                                ("train", "block")]}
    cache = "--compile-cache DIR JAX's persistent compilation cache: a later call with the same shapes reads"
    model = "--model MODEL a registered name (see `spectax list`), a spectax checkpoint directory"
    tree = '--tree SPEC the drafter\'s tree: "chain:K"'
    sampling = "--top-p TOP_P 1 = off (default)"
    for argv, text in helps.items():
        assert cache in text, argv
        assert (model in text) == (argv != ("demo",)), argv
        assert (tree in text) == (argv[0] != "train"), argv
        assert (sampling in text) == (argv[0] != "train"), argv


def test_generate_apar_prints_the_reassembled_answer_and_the_comparison(tmp_path, capsys, byte_ckpt):
    """`generate --apar`: the answer apar.decode reassembles, its streams and steps, and plain decoding of the base
    model (here the model itself) timed beside it; a model without control tokens is refused."""
    import dataclasses

    from spectax import apar
    from spectax.io.tokenizer import ByteTokenizer

    config = dataclasses.replace(spectax.load(byte_ckpt).config, vocab_size=261, apar_ids=(259, 260), eos_id=257)
    model = Model.random(config, seed=5, scale=3.0)
    emitted = int(spectax.decode(model, [list(b"hello there")], 8).tokens[0, 5])   # a token it writes early on
    head = model.params["lm_head"]["kernel"]                    # [Fork] takes that token's place wherever it wins
    head = head.at[:, 259].set(head[:, emitted]).at[:, emitted].set(0.0)
    model = model.replace(params={**model.params, "lm_head": {"kernel": head}})
    d = spectax.save(model, tmp_path / "apar")
    out, err = run_cli(capsys, "generate", "--model", str(d), "--tokenizer", "byte", "--raw", "--apar",
                       "--max-new-tokens", "40", "hello there")
    want = apar.decode(model, [list(b"hello there")], 40, eos_id=257)
    seq = want.sequences[0]
    assert out == ByteTokenizer().decode(seq[:-1] if seq[-1:] == [257] else seq, skip_special_tokens=True) + "\n"
    assert want.streams[0] >= 2 and f"{int(want.streams[0])} streams, {want.stats.target_calls} steps" in err
    assert "plain decoding of the base model" in err
    code, err = run_failing(capsys, "generate", "--model", str(byte_ckpt), "--tokenizer", "byte", "--raw", "--apar",
                            "hi")
    assert code == 2 and "no APAR control tokens" in err
