"""Plain decoding through the final loop shape: exactness, per-row behaviour, cache invariance, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectax
import spectax.api as api
from hlo_copies import cache_copies
from spectax.api import decode_with_poison

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 11, [3]]


def greedy_by_full_forward(model, prompt, n, width=64):
    """Oracle: re-run the cache-free causal forward for every new token (fixed width: later slots cannot matter;
    one compile of the forward)."""
    seq = list(prompt)
    buf = np.zeros((1, width), np.int32)
    for _ in range(n):
        buf[0, :len(seq)] = seq
        seq.append(int(jnp.argmax(model.logits(buf)[0, len(seq) - 1])))
    return seq[len(prompt):]


def run(model, prompts, n, **kw):
    args = dict(prompt_lengths=None, drafter=None, temperature=0.0, top_k=0, top_p=1.0, rng=0, eos_id=None,
                pad_id=0, attn_impl="auto", cache_size=None, lossy=None, poison_cache=False)
    args.update(kw)
    return decode_with_poison(model, prompts, n, **args)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_greedy_matches_full_forward_ragged_batch(name, request):
    model = request.getfixturevalue(name)
    out = spectax.decode(model, PROMPTS, max_new_tokens=24)
    assert out.tokens.shape == (4, 24) and out.tokens.dtype == jnp.int32
    np.testing.assert_array_equal(out.lengths, [24] * 4)
    for i, p in enumerate(PROMPTS):
        assert out.tokens[i].tolist() == greedy_by_full_forward(model, p, 24), f"row {i}"
    assert out.stats.tau == pytest.approx(1.0)
    assert int(out.stats.target_calls) == 23  # the first token comes from the prefill


def test_batch_rows_are_independent(tiny_llama):
    together = spectax.decode(tiny_llama, PROMPTS, max_new_tokens=16).tokens
    for i, p in enumerate(PROMPTS):
        np.testing.assert_array_equal(spectax.decode(tiny_llama, [p], max_new_tokens=16).tokens[0], together[i])


def test_array_prompt_with_lengths_equals_list_prompt(tiny_llama):
    arr = np.zeros((4, 11), np.int32)
    for i, p in enumerate(PROMPTS):
        arr[i, :len(p)] = p
        arr[i, len(p):] = 55  # padding content must not matter
    a = spectax.decode(tiny_llama, arr, max_new_tokens=12, prompt_lengths=[len(p) for p in PROMPTS])
    b = spectax.decode(tiny_llama, PROMPTS, max_new_tokens=12)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_bigger_and_nan_poisoned_cache_change_nothing(tiny_llama):
    base = run(tiny_llama, PROMPTS, 20)
    needed = 16 + 32 + 1
    big = run(tiny_llama, PROMPTS, 20, cache_size=4 * needed)
    poisoned = run(tiny_llama, PROMPTS, 20, cache_size=4 * needed, poison_cache=True)
    np.testing.assert_array_equal(big.tokens, base.tokens)
    np.testing.assert_array_equal(poisoned.tokens, base.tokens)


def test_eos_stops_each_row_and_pads(tiny_llama):
    free = spectax.decode(tiny_llama, PROMPTS, max_new_tokens=20)
    eos = int(free.tokens[0, 6])  # a token row 0 emits at step 6
    out = spectax.decode(tiny_llama, PROMPTS, max_new_tokens=20, eos_id=eos, pad_id=-1)
    for i in range(4):
        row = free.tokens[i].tolist()
        stop = row.index(eos) + 1 if eos in row else 20
        assert int(out.lengths[i]) == stop
        assert out.tokens[i, :stop].tolist() == row[:stop]
        assert (np.asarray(out.tokens[i, stop:]) == -1).all()
    assert int(out.lengths[0]) <= 7


def test_max_new_tokens_one(tiny_llama):
    out = spectax.decode(tiny_llama, PROMPTS, max_new_tokens=1)
    assert out.tokens.shape == (4, 1) and int(out.stats.target_calls) == 0
    for i, p in enumerate(PROMPTS):
        assert out.tokens[i, 0] == greedy_by_full_forward(tiny_llama, p, 1)[0]


def test_sampling_is_deterministic_per_seed(tiny_llama):
    kw = dict(max_new_tokens=16, temperature=1.0, top_k=20, top_p=0.9)
    a = spectax.decode(tiny_llama, PROMPTS, rng=3, **kw).tokens
    b = spectax.decode(tiny_llama, PROMPTS, rng=3, **kw).tokens
    c = spectax.decode(tiny_llama, PROMPTS, rng=4, **kw).tokens
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any()
    d = spectax.decode(tiny_llama, PROMPTS, rng=jax.random.key(3), **kw).tokens
    np.testing.assert_array_equal(a, d)


def test_numpy_scalars_are_accepted(tiny_llama):
    a = spectax.decode(tiny_llama, PROMPTS, max_new_tokens=np.int64(8), temperature=np.float32(0.7),
                       top_k=np.int32(20), top_p=np.float64(0.9), rng=np.int64(2), eos_id=np.int32(5))
    b = spectax.decode(tiny_llama, PROMPTS, max_new_tokens=8, temperature=0.7, top_k=20, top_p=0.9, rng=2, eos_id=5)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_one_compile_per_bucket(tiny_llama, monkeypatch, fresh_trace):
    traces = []
    original = api.run
    monkeypatch.setattr(api, "run", lambda *a, **k: (traces.append(1), original(*a, **k))[1])
    spectax.decode(tiny_llama, [[5] * 3], max_new_tokens=9)   # prompt bucket 16, output bucket 16
    after_first = len(traces)
    assert after_first == 1                                    # the compiled programs were cleared
    spectax.decode(tiny_llama, [[6] * 14], max_new_tokens=13)  # same buckets: no new trace
    assert len(traces) == after_first
    spectax.decode(tiny_llama, [[6] * 20], max_new_tokens=13)  # prompt bucket 32: one new trace
    assert len(traces) == after_first + 1


BAD = [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.0), "top_k"),
    (dict(temperature=True), "temperature"),
    (dict(eos_id=97), "eos_id"),
    (dict(attn_impl="magic"), "attn_impl"),
    (dict(cache_size=10), "cache_size"),
    (dict(pad_id=2 ** 31), "pad_id"),
    (dict(pad_id=-2 ** 31 - 1), "pad_id"),
    (dict(pad_id=1.0), "pad_id"),
    (dict(pad_id=True), "pad_id"),
    (dict(pad_id=None), "pad_id"),
]


@pytest.mark.parametrize("kwargs,word", BAD)
def test_bad_arguments_raise_before_tracing(tiny_llama, kwargs, word, monkeypatch):
    monkeypatch.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    kw = dict(max_new_tokens=4)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=word):
        spectax.decode(tiny_llama, [[1, 2]], **kw)


@pytest.mark.parametrize("prompt,word", [
    ([], "empty"), ([[1, 2], []], "empty prompt"), ([[1, 97]], "outside the vocabulary"),
    ([[-1]], "outside the vocabulary"), ([[1.5, 2]], "int"), (np.zeros((2,), np.int32), r"\[B, P\]"),
])
def test_bad_prompts_raise(tiny_llama, prompt, word, monkeypatch):
    monkeypatch.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    with pytest.raises(ValueError, match=word):
        spectax.decode(tiny_llama, prompt, max_new_tokens=4)


@pytest.mark.parametrize("prompt_lengths", [[1.0, 2.0], [True, 2], np.array([True, True]), [2], [[1], [2]],
                                            [1, [2]], "ab", np.int32(2), [0, 2], [-1, 2], [1, 4]])
def test_bad_prompt_lengths_raise(tiny_llama, prompt_lengths, monkeypatch):
    """prompt_lengths: ints (not bools or floats), shape [B], each in [1, prompt width]."""
    monkeypatch.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    with pytest.raises(ValueError, match="prompt_lengths|empty prompt"):
        spectax.decode(tiny_llama, np.ones((2, 3), np.int32), max_new_tokens=4, prompt_lengths=prompt_lengths)


def test_prompt_lengths_go_with_array_prompts_only(tiny_llama, monkeypatch):
    monkeypatch.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    with pytest.raises(ValueError, match="prompt_lengths"):
        spectax.decode(tiny_llama, [[1, 2], [3]], max_new_tokens=4, prompt_lengths=[2, 1])


def test_prompt_longer_than_context(tiny_gpt2, monkeypatch):
    monkeypatch.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    with pytest.raises(ValueError, match="context"):
        spectax.decode(tiny_gpt2, [[1] * 300], max_new_tokens=4)
    with pytest.raises(ValueError, match="context"):
        spectax.decode(tiny_gpt2, [[1] * 250], max_new_tokens=10)


def test_not_a_model():
    with pytest.raises(ValueError, match="spectax Model"):
        spectax.decode(object(), [[1]], max_new_tokens=2)


def test_chunked_prefill_of_long_ragged_prompts(tiny_llama):
    """Prompts spanning several 256-token prefill chunks (bucket 512), one row ending inside the first chunk."""
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, 97, 300).tolist(), rng.integers(0, 97, 20).tolist(), rng.integers(0, 97, 257).tolist()]
    out = run(tiny_llama, prompts, 6, poison_cache=True)
    buf = np.zeros((3, 512), np.int32)
    seqs = [list(p) for p in prompts]
    for _ in range(6):
        for i, s in enumerate(seqs):
            buf[i, :len(s)] = s
        logits = tiny_llama.logits(buf)
        for i, s in enumerate(seqs):
            s.append(int(jnp.argmax(logits[i, len(s) - 1])))
    for i, p in enumerate(prompts):
        assert out.tokens[i].tolist() == seqs[i][len(p):], f"row {i}"


@pytest.mark.parametrize("drafter", ["plain", "ngram-depth-cuts"])
def test_the_loop_never_copies_the_kv_cache(tiny_llama, drafter):
    """The compiled decode program holds no copy of a KV cache array: the attention's block loops carry the caches
    and hand them back, and the step's K/V are written into those (a loop that only closed over the cache made XLA
    copy every layer's cache twice per step). The plain step and the lax.switch over n-gram depth cuts alike.
    Teeth: without reference.py's optimization_barrier the plain program holds 8 such copies and this fails."""
    from spectax.drafters import NGram, NoDraft
    from spectax.tree import DraftTree

    draft = NoDraft() if drafter == "plain" else NGram(max_n=2, tree=DraftTree.chain(3), depth_by_n=(1, 3))
    prompt = np.ones((2, 16), np.int32)
    size = 203  # a slot count no other array has
    dec = spectax.Decoder(tiny_llama, draft, max_new_tokens=16, max_prompt_len=16, cache_size=size)
    hlo = jax.jit(dec).lower(tiny_llama, prompt, np.array([5, 9], np.int32), api.row_keys(0, 2)).compile().as_text()
    c = tiny_llama.config
    cache_shape = f"f32[2,{c.num_kv_heads},{size},{c.head_dim}]"
    assert cache_shape in hlo, "the cache shape must appear in the program (else the check below proves nothing)"
    copies = cache_copies(hlo, [cache_shape])
    assert not copies, f"{len(copies)} copies of a KV cache array, e.g. {copies[0]}"


def test_the_copy_check_tells_a_fill_from_a_cache():
    """cache_copies exempts a copy of the empty cache's fill under either fusion emitter's naming, and nothing else."""
    hlo = "\n".join([
        "%wrapped_broadcast = f32[2,1,203,8]{3,2,1,0} fusion(%constant.6), kind=kLoop, calls=%wrapped_broadcast_comp",
        "%broadcast.78 = f32[2,1,203,8]{3,2,1,0} broadcast(%constant.7), dimensions={}",
        "%jit_decode_program_.65 = f32[2,1,203,8]{3,2,1,0} broadcast(%constant.641.clone), dimensions={}",
        "%get-tuple-element.9 = f32[2,1,203,8]{3,2,1,0} get-tuple-element(%param.1), index=3",
        "%copy.1 = f32[2,1,203,8]{3,2,1,0} copy(%wrapped_broadcast)",
        "%copy.2 = f32[2,1,203,8]{3,2,1,0} copy(%broadcast.78)",
        "%copy.3 = f32[2,1,203,8]{3,2,1,0} copy(%jit_decode_program_.65)",
        "%copy.4 = f32[2,1,203,8]{3,2,1,0} copy(%get-tuple-element.9)",
        "ROOT %copy.5 = f32[2,1,64,8]{3,2,1,0} copy(%get-tuple-element.9)",
    ])
    assert cache_copies(hlo, ["f32[2,1,203,8]"]) == ["%copy.4 = f32[2,1,203,8]{3,2,1,0} copy(%get-tuple-element.9)"]


@pytest.mark.parametrize("case", ["plain-eos", "tree-sampled"])
def test_streamed_decoding_is_decoding_in_chunks(tiny_llama, case):
    """decode_stream yields the prefill's token, then the tokens after every `steps` target calls; every chunk is a
    prefix of the last, and the last is decode()'s result token for token (sampled, with a draft tree, too: the
    chunks carry the caches, the drafter's state and the random keys). Plain decoding makes one token per call, so
    its chunks grow by exactly `steps` tokens per row (a chunk that ran past its bound would show)."""
    from spectax import DraftTree
    from spectax.drafters import DraftModel

    if case == "plain-eos":
        kw, steps = dict(eos_id=int(spectax.decode(tiny_llama, PROMPTS[:1], 24).tokens[0, 9])), 3
    else:
        kw, steps = dict(drafter=DraftModel(tiny_llama, tree=DraftTree.kary((2, 1))), temperature=1.0, rng=5), 2
    whole = spectax.decode(tiny_llama, PROMPTS, 24, **kw)
    chunks = list(spectax.decode_stream(tiny_llama, PROMPTS, 24, steps=steps, **kw))
    last = chunks[-1]
    np.testing.assert_array_equal(last.tokens, whole.tokens)
    np.testing.assert_array_equal(last.lengths, whole.lengths)
    assert int(last.stats.target_calls) == int(whole.stats.target_calls)
    np.testing.assert_array_equal(chunks[0].lengths, [1] * len(PROMPTS))
    final_len = np.asarray(whole.lengths)
    for k, chunk in enumerate(chunks):
        n = np.asarray(chunk.lengths)
        assert (n <= final_len).all()
        for b in range(len(PROMPTS)):
            assert np.asarray(chunk.tokens[b, :n[b]]).tolist() == np.asarray(whole.tokens[b, :n[b]]).tolist()
        if case == "plain-eos":
            np.testing.assert_array_equal(n, np.minimum(1 + k * steps, final_len))
    assert len(chunks) == -(-int(whole.stats.target_calls) // steps) + 1


def test_stream_steps_must_be_positive(tiny_llama):
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="steps"):
            spectax.decode_stream(tiny_llama, PROMPTS, 8, steps=bad)
