"""Self-distillation data: resumable atomic shards, cached hidden states, and the training prompt builder."""

import json

import numpy as np
import pytest

import spectax
from recipes import build_prompts
from spectax.train import distill, prompt_files

# Ragged token-id prompts for the tiny model (vocab 97); EOS is a token the random model emits now and then.
PROMPTS = [[int(t) for t in np.random.default_rng(i).integers(3, 97, size=3 + (7 * i) % 13)] for i in range(7)]
EOS = 5
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
    for i in range(0, len(PROMPTS) - 1, 2):
        out = spectax.decode(tiny_llama, PROMPTS[i:i + 2], MAX_NEW, eos_id=EOS)
        for row, prompt in enumerate(PROMPTS[i:i + 2]):
            seq = examples[i + row]
            assert seq.dtype == np.int32
            np.testing.assert_array_equal(seq[:len(prompt)], prompt)
            np.testing.assert_array_equal(seq[len(prompt):], np.asarray(out.tokens[row, :out.lengths[row]]))
            response = seq[len(prompt):]
            assert 1 <= len(response) <= MAX_NEW and EOS not in response[:-1]
    shard = distill.load_shard(paths[0])
    assert list(shard["category"]) == [f"c{i}" for i in shard["prompt_index"]]
    assert int(shard["vocab_size"]) == tiny_llama.config.vocab_size


def test_interrupted_generation_resumes_without_redoing_shards(tiny_llama, tmp_path, monkeypatch):
    real_decode, calls = distill.decode, []

    def crash_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # shard 1's first batch: shard 0 is written, shard 1 is not
            raise KeyboardInterrupt
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(distill, "decode", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        _generate(tiny_llama, tmp_path / "run")
    assert [p.name for p in distill.shard_paths(tmp_path / "run")] == ["shard-00000.npz"]
    assert not list((tmp_path / "run").glob("*.tmp"))
    first = distill.shard_path(tmp_path / "run", 0).stat().st_mtime_ns

    monkeypatch.setattr(distill, "decode", real_decode)
    paths = _generate(tiny_llama, tmp_path / "run")
    assert distill.shard_path(tmp_path / "run", 0).stat().st_mtime_ns == first
    clean = _all_examples(_generate(tiny_llama, tmp_path / "clean"))
    resumed = _all_examples(paths)
    assert all(np.array_equal(resumed[i], clean[i]) for i in clean)

    monkeypatch.setattr(distill, "decode", None)  # a finished directory needs no decoding at all
    assert _generate(tiny_llama, tmp_path / "run") == paths
    with pytest.raises(ValueError, match="other settings"):
        distill.generate_ids(tiny_llama, PROMPTS, tmp_path / "run", eos_id=EOS, max_new_tokens=MAX_NEW + 1)


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


@pytest.mark.skipif(not build_prompts.SPEC_BENCH.exists(), reason="Spec-Bench questions not present")
def test_prompts_share_no_8_word_sequence_with_spec_bench():
    shipped = prompt_files.read_prompts()
    assert len(shipped) >= 2900 and not build_prompts.overlaps_spec_bench(shipped)
    turn = json.loads(build_prompts.SPEC_BENCH.read_text().splitlines()[0])["turns"][0]
    planted = {"category": "qa", "text": f"Please tell me: {turn}"}
    assert build_prompts.overlaps_spec_bench([planted]) == [planted]
