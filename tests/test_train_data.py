"""Self-distillation data: resumable atomic shards, cached hidden states, and the training prompt builder."""

import collections
import json
import os
from pathlib import Path

import numpy as np
import pytest

import spectax
from recipes import build_prompts, spec_bench
from spectax.train import distill, prompt_files

# Ragged token-id prompts for the tiny model (vocab 97); EOS is a token the random model emits now and then.
PROMPTS = [[int(t) for t in np.random.default_rng(i).integers(3, 97, size=3 + (7 * i) % 13)] for i in range(7)]
EOS = 5
LARGE_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "prompts" / "v2.jsonl"
APAR_PROMPTS = LARGE_PROMPTS.parent     # recipes/apar_prompts.py: structured prompts for APAR
MAX_NEW = 12


def _generate(model, out_dir):
    return distill.generate_ids(model, PROMPTS, out_dir, eos_id=EOS, max_new_tokens=MAX_NEW, batch=2,
                                shard_size=3, categories=[f"c{i}" for i in range(len(PROMPTS))])


def _all_examples(paths):
    shards = [distill.load_shard(p) for p in paths]
    return {int(i): seq for s in shards for i, seq in zip(s["prompt_index"], distill.sequences(s))}


def test_generation_shards_hold_prompt_and_response(tiny_llama, tmp_path):
    paths = _generate(tiny_llama, tmp_path)
    assert [p.name for p in paths] == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    examples = _all_examples(paths)
    assert sorted(examples) == list(range(len(PROMPTS)))
    lengths = set()
    for i, prompt in enumerate(PROMPTS):      # each answer is the prompt's own greedy decode, alone
        out = spectax.decode(tiny_llama, [prompt], MAX_NEW, eos_id=EOS)
        seq = examples[i]
        assert seq.dtype == np.int32
        np.testing.assert_array_equal(seq[:len(prompt)], prompt)
        np.testing.assert_array_equal(seq[len(prompt):], np.asarray(out.tokens[0, :out.lengths[0]]))
        response = seq[len(prompt):]
        assert 1 <= len(response) <= MAX_NEW and EOS not in response[:-1]
        lengths.add(len(response))
    assert len(lengths) > 1           # rows end at different steps, so rows were refilled mid-run
    shard = distill.load_shard(paths[0])
    assert list(shard["category"]) == [f"c{i}" for i in shard["prompt_index"]]
    assert list(shard["prompt_id"]) == [distill.prompt_id(PROMPTS[i]) for i in shard["prompt_index"]]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(i for m in manifest.values() for i in m["prompts"]) == list(range(len(PROMPTS)))
    assert int(shard["vocab_size"]) == tiny_llama.config.vocab_size


def test_interrupted_generation_resumes_without_redoing_shards(tiny_llama, tmp_path, monkeypatch):
    real_write, steps = distill.write_atomic, []

    def crash_on_second_shard(path, *args, **kwargs):
        if path.name == "shard-00001.npz":      # killed while shard 1 is being written
            raise KeyboardInterrupt
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(distill, "write_atomic", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        _generate(tiny_llama, tmp_path / "run")
    assert [p.name for p in distill.shard_paths(tmp_path / "run")] == ["shard-00000.npz"]
    assert not list((tmp_path / "run").glob("*.tmp"))
    first = distill.shard_path(tmp_path / "run", 0).stat().st_mtime_ns
    done = json.loads((tmp_path / "run" / "manifest.json").read_text())["shard-00000.npz"]["prompts"]

    monkeypatch.setattr(distill, "write_atomic", real_write)
    real_refilled = distill.greedy_refilled

    def counting(model, prompts, *args, **kwargs):
        steps.append(len(prompts))
        return real_refilled(model, prompts, *args, **kwargs)

    monkeypatch.setattr(distill, "greedy_refilled", counting)
    paths = _generate(tiny_llama, tmp_path / "run")
    assert steps == [len(PROMPTS) - len(done)]           # the resumed run decoded only the prompts not in a shard
    assert distill.shard_path(tmp_path / "run", 0).stat().st_mtime_ns == first
    clean = _all_examples(_generate(tiny_llama, tmp_path / "clean"))
    resumed = _all_examples(paths)
    assert sorted(resumed) == sorted(clean) and all(np.array_equal(resumed[i], clean[i]) for i in clean)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert sorted(i for m in manifest.values() for i in m["prompts"]) == list(range(len(PROMPTS)))

    monkeypatch.setattr(distill, "_steps", None)  # a finished directory needs no decoding at all
    assert _generate(tiny_llama, tmp_path / "run") == paths
    with pytest.raises(ValueError, match="other settings"):
        distill.generate_ids(tiny_llama, PROMPTS, tmp_path / "run", eos_id=EOS, max_new_tokens=MAX_NEW + 1)


@pytest.mark.parametrize("prompts, kwargs", [([[3, 4], []], {}), ([[3, 4]], {"refill_rows": 0}),
                                             ([[3, 4]], {"chunk_steps": 0}), ([[3, 4]], {"batch": 0})])
def test_refilled_generation_rejects_bad_input(tiny_llama, prompts, kwargs):
    with pytest.raises(ValueError):
        next(distill.greedy_refilled(tiny_llama, prompts, MAX_NEW, EOS, **kwargs))


def test_cached_hidden_states_equal_the_forward(tiny_llama, tmp_path):
    _generate(tiny_llama, tmp_path / "gen")
    out = distill.cache_hidden(tiny_llama, tmp_path / "gen", tmp_path / "hidden", batch=2)
    shard = distill.load_shard(out[1])
    assert shard["hidden_ND"].dtype == np.float16
    for e, seq in list(enumerate(distill.sequences(shard)))[:2]:
        p = int(shard["prompt_len"][e])
        cached = shard["hidden_ND"][shard["hidden_offsets"][e]:shard["hidden_offsets"][e + 1]]
        hidden_BTE = tiny_llama.forward(seq[None], np.arange(len(seq))[None], None, np.zeros(1, np.int32),
                                        np.tril(np.ones((len(seq), len(seq)), bool))).hidden_BTE
        assert cached.shape == (len(seq) - p, tiny_llama.config.hidden_size)
        np.testing.assert_allclose(cached.astype(np.float32), np.asarray(hidden_BTE[0, p - 1:-1]), rtol=2e-3,
                                   atol=2e-3)


def test_token_frequencies_count_response_tokens(tiny_llama, tmp_path):
    paths = _generate(tiny_llama, tmp_path)
    counts = distill.token_frequencies(tmp_path)
    responses = [seq[len(PROMPTS[i]):] for i, seq in _all_examples(paths).items()]
    assert counts.shape == (tiny_llama.config.vocab_size,)
    np.testing.assert_array_equal(counts, np.bincount(np.concatenate(responses), minlength=len(counts)))


def test_training_prompts_are_deterministic_varied_and_short():
    counts = {c: 12 for c in build_prompts.CATEGORY_COUNTS}
    a, b = build_prompts.training_prompts(seed=3, counts=counts), build_prompts.training_prompts(seed=3, counts=counts)
    assert a == b and a != build_prompts.training_prompts(seed=4, counts=counts)
    assert {p["category"] for p in a} == set(counts) and len({p["text"] for p in a}) == len(a)
    assert max(len(p["text"].split()) for p in a) < 300
    train, held_out = prompt_files.split_prompts(a, eval_fraction=0.05)
    assert train + held_out == a and len(held_out) == round(0.05 * len(a))


@pytest.fixture(scope="module")
def spec_bench_file():
    """The Spec-Bench questions (recipes/spec_bench.py: $SPECTAX_SPEC_BENCH, default ../shared/data/spec_bench).
    Missing: a failure in CI (the CI variable set), a skip saying so elsewhere."""
    path = build_prompts.SPEC_BENCH
    if not path.is_file():
        message = f"{path} is needed to test decontamination (set SPECTAX_SPEC_BENCH to its directory)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_spec_bench_setting(tmp_path, monkeypatch):
    """One setting locates the benchmark prompts: the default is ../shared/data/spec_bench next to the repository,
    and SPECTAX_SPEC_BENCH moves it."""
    monkeypatch.delenv("SPECTAX_SPEC_BENCH", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert spec_bench.question_file() == repo.parent / "shared" / "data" / "spec_bench" / "question.jsonl"
    monkeypatch.setenv("SPECTAX_SPEC_BENCH", str(tmp_path))
    assert spec_bench.question_file() == tmp_path / "question.jsonl"


@pytest.mark.parametrize("path, at_least", [(prompt_files.DEFAULT_OUT, 2900), (LARGE_PROMPTS, 30000),
                                             (APAR_PROMPTS / "apar_train.jsonl", 1000),
                                             (APAR_PROMPTS / "apar_bench.jsonl", 48)])
def test_prompt_files_share_no_8_word_sequence_with_spec_bench(path, at_least, spec_bench_file):
    prompts = prompt_files.read_prompts(path)
    assert len(prompts) >= at_least and len({p["text"] for p in prompts}) == len(prompts)
    assert not build_prompts.overlaps_spec_bench(prompts)
    turn = json.loads(spec_bench_file.read_text().splitlines()[0])["turns"][0]
    planted = {"category": "qa", "text": f"Please tell me: {turn}"}
    assert build_prompts.overlaps_spec_bench([planted]) == [planted]       # the check's tooth


def test_large_prompt_list_covers_the_13_families_in_the_stated_proportions():
    counts = collections.Counter(p["category"] for p in prompt_files.read_prompts(LARGE_PROMPTS))
    assert counts == build_prompts.CATEGORY_COUNTS and len(counts) == 13


def test_apar_prompt_files_are_the_recipe_and_keep_bench_topics_out(spec_bench_file):
    """The committed APAR prompt files are what recipes/apar_prompts.py builds; no benchmark topic is trained on."""
    from recipes import apar_prompts

    train = prompt_files.read_prompts(APAR_PROMPTS / "apar_train.jsonl")
    bench = prompt_files.read_prompts(APAR_PROMPTS / "apar_bench.jsonl")
    built_train, built_bench = apar_prompts.build(spec_bench_file)
    assert (train, bench) == (built_train, built_bench) and len(train) > 1000
    assert not any(topic in p["text"] for topic in apar_prompts.BENCH_TOPICS for p in train)
    assert all(any(topic in p["text"] for topic in apar_prompts.BENCH_TOPICS) for p in bench)
