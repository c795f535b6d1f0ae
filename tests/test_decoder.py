"""The traceable core: `spectax.Decoder` called as a pure function under jax.jit (every input traced), jax.vmap
(over seeds and temperatures) and lax.scan (a rollout that updates the params each round) equals decode(); its
validation happens on the host, before tracing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectax
import spectax.api as api
from spectax import DraftTree, Sampling
from spectax.drafters import Block, Combined, DraftModel, Heads, NGram
from test_speculative import noisy_copy

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 11, [3]]
SEEDS = np.array([11, 7, 2024, 5], np.int32)
NEW = 10
WIDTH = 16    # decode()'s prompt bucket for these prompts


@pytest.fixture(scope="module")
def flat():
    """Small weights: spread-out distributions, so samples vary and drafts are partly accepted."""
    return spectax.Model.random(spectax.ModelConfig(arch="llama", vocab_size=97, hidden_size=32, num_layers=2,
                                                    num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64,
                                                    max_position=256), seed=3, scale=1.0)


def all_drafters(model):
    ngram = NGram(max_n=3, tree=DraftTree.kary((2, 2)), occurrences=2)
    heads = Heads.create(model, kind="cerberus", num_heads=2, tree=DraftTree.kary((2, 1)), gate=4.15, seed=1)
    return {"plain": None, "draft-model-tree": DraftModel(noisy_copy(model, 0.3, 2), tree=DraftTree.kary((2, 2))),
            "heads": heads, "block": Block.create(model, block_size=3, target_layers=(0, 1)), "ngram": ngram,
            "combined": Combined((ngram, heads))}


def right_padded(prompts):
    tokens, lengths = api.prepare_prompt(prompts, None, 97)
    out = np.zeros((len(prompts), WIDTH), np.int32)
    out[:, :tokens.shape[1]] = tokens
    return out, lengths


def decoder_like_decode(model, drafter, **kw):
    """A Decoder with decode()'s cache size for these prompts (so both attend over the same slots)."""
    nodes = 0 if drafter is None else drafter.tree.num_nodes
    return spectax.Decoder(model, drafter, max_new_tokens=NEW, max_prompt_len=WIDTH,
                           cache_size=WIDTH + api.bucket(NEW) + nodes + 1, **kw)


@pytest.mark.parametrize("kind", ["plain", "draft-model-tree", "heads", "block", "ngram", "combined"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_jit_with_every_input_traced_equals_decode(flat, kind, temperature):
    drafter = all_drafters(flat)[kind]
    want = spectax.decode(flat, PROMPTS, NEW, drafter=drafter, temperature=temperature, rng=SEEDS)
    dec = decoder_like_decode(flat, drafter, sampling=Sampling(temperature))
    prompt_BP, lengths = right_padded(PROMPTS)

    @jax.jit
    def run(model, prompt_BP, prompt_len_B, seeds_B, drafter, temperature):
        sampling = None if dec.spec.sampler.greedy else Sampling(temperature)
        return dec(model, prompt_BP, prompt_len_B, seeds_B, drafter=drafter, sampling=sampling)

    got = run(flat, prompt_BP, lengths, SEEDS, dec.drafter, jnp.float32(temperature))
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(want.lengths))
    for name in ("target_calls", "new_tokens", "accepted_hist"):
        np.testing.assert_array_equal(np.asarray(getattr(got.stats, name)), np.asarray(getattr(want.stats, name)))
    if kind in ("draft-model-tree", "heads") or (kind, temperature) == ("ngram", 0.0):   # (a random Block's
        # drafts are never accepted, nor sampled n-gram drafts on this flat model: their params
        # still flow, traced, through propose and update)
        assert want.stats.tau > 1.0, "the draft must be accepted sometimes, or the comparison is only plain decoding"


def test_vmap_over_seeds_and_temperatures_equals_separate_calls(flat):
    drafter = all_drafters(flat)["draft-model-tree"]
    dec = decoder_like_decode(flat, drafter, sampling=Sampling(1.0, top_k=30))
    prompt_BP, lengths = right_padded(PROMPTS)
    keys = jax.random.split(jax.random.key(4), 4)
    by_key = jax.vmap(lambda k: dec(flat, prompt_BP, lengths, k).tokens)(keys)
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(by_key[i]), np.asarray(dec(flat, prompt_BP, lengths, keys[i]).tokens))
    temperatures = jnp.asarray([0.5, 0.8, 1.2, 2.0], jnp.float32)
    by_t = jax.vmap(lambda t: dec(flat, prompt_BP, lengths, SEEDS, sampling=Sampling(t, top_k=30)).tokens)(temperatures)
    for i, t in enumerate([0.5, 0.8, 1.2, 2.0]):
        one = dec(flat, prompt_BP, lengths, SEEDS, sampling=Sampling(t, top_k=30)).tokens
        np.testing.assert_array_equal(np.asarray(by_t[i]), np.asarray(one))
    assert len({tuple(np.asarray(by_t[i]).ravel()) for i in range(4)}) == 4, "temperatures must change the samples"


def test_scan_rollout_equals_rounds_one_by_one_with_one_compile(flat, monkeypatch, fresh_trace):
    """An RL-style rollout: each round decodes (sampled, heads drafting), then perturbs the target's and the
    drafter's params with the round's tokens; lax.scan over 3 rounds equals the rounds run one by one."""
    heads = Heads.create(flat, kind="medusa", num_heads=2, seed=3)
    dec = decoder_like_decode(flat, heads, sampling=Sampling(0.9))
    prompt_BP, lengths = right_padded(PROMPTS)
    traces = []
    original = api.run
    monkeypatch.setattr(api, "run", lambda *a, **k: (traces.append(1), original(*a, **k))[1])

    def one_round(carry, seed):
        model, drafter = carry
        out = dec(model, prompt_BP, lengths, SEEDS + seed, drafter=drafter)
        scale = 1.0 + 1e-3 * jnp.mean(out.tokens.astype(jnp.float32)) / 97
        perturb = lambda tree: jax.tree_util.tree_map(lambda a: a * scale.astype(a.dtype), tree)   # noqa: E731
        return (model.replace(params=perturb(model.params)), drafter.replace(params=perturb(drafter.params))), \
            out.tokens

    (_, _), scanned = jax.jit(lambda m, d: jax.lax.scan(one_round, (m, d), jnp.arange(3, dtype=jnp.int32)))(flat,
                                                                                                          heads)
    assert len(traces) == 1, "the whole scan is one program: the decode inside it is traced once"
    carry, rounds = (flat, heads), []
    for seed in range(3):
        carry, tokens = jax.jit(one_round)(carry, jnp.int32(seed))
        rounds.append(np.asarray(tokens))
    np.testing.assert_array_equal(np.asarray(scanned), np.stack(rounds))
    assert (rounds[0] != rounds[1]).any(), "the rounds must differ (seeds and params change)"


def test_stats_are_arrays_under_jit(flat):
    dec = decoder_like_decode(flat, NGram(max_n=2, tree=DraftTree.chain(2)))
    prompt_BP, lengths = right_padded(PROMPTS)
    stats = jax.jit(lambda p: dec(flat, p, lengths, 0).stats)(prompt_BP)
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(stats))
    assert stats.tau >= 1.0                       # the host convenience still works on the result


def test_several_end_tokens(flat):
    base = np.asarray(spectax.decode(flat, PROMPTS, NEW).tokens)
    a, b = int(base[0, 3]), int(base[2, 5])
    out = spectax.decode(flat, PROMPTS, NEW, eos_id=(a, b))
    for row, got in zip(base, np.asarray(out.tokens)):
        hits = [j for j, t in enumerate(row) if t in (a, b)]
        stop = hits[0] + 1 if hits else NEW
        np.testing.assert_array_equal(got[:stop], row[:stop])
        assert (got[stop:] == 0).all()
    dec = decoder_like_decode(flat, None, eos_id=[a, b])
    prompt_BP, lengths = right_padded(PROMPTS)
    np.testing.assert_array_equal(np.asarray(dec(flat, prompt_BP, lengths, 0).tokens), np.asarray(out.tokens))


def test_decoders_of_one_structure_are_equal_and_share_programs(flat):
    a = spectax.Decoder(flat, max_new_tokens=8, max_prompt_len=16)
    b = spectax.Decoder(noisy_copy(flat, 0.1, 1), max_new_tokens=8, max_prompt_len=16)
    assert a == b and hash(a) == hash(b)
    assert a != spectax.Decoder(flat, max_new_tokens=9, max_prompt_len=16)


BAD_DECODERS = [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_prompt_len=2.0), "max_prompt_len"),
    (dict(max_prompt_len=250, max_new_tokens=10), "context"),
    (dict(sampling=0.7), "Sampling"),
    (dict(eos_id=(3, 97)), "eos_id"),
    (dict(eos_id="x"), "eos_id"),
    (dict(cache_size=5), "cache_size"),
    (dict(attn_impl="cuda"), "attn"),
    (dict(drafter=NGram(), lossy="typical"), "lossy"),
]


@pytest.mark.parametrize("kw,word", BAD_DECODERS)
def test_bad_decoder_arguments_raise(flat, kw, word):
    args = dict(max_new_tokens=8, max_prompt_len=16) | kw
    drafter = args.pop("drafter", None)
    with pytest.raises(ValueError, match=word):
        spectax.Decoder(flat, drafter, **args)


@pytest.mark.parametrize("kw,word", [(dict(temperature=-1.0), "temperature"), (dict(temperature=float("inf")),
                                     "temperature"), (dict(top_k=-2), "top_k"), (dict(top_k=1.5), "top_k"),
                                     (dict(top_p=0.0), "top_p"), (dict(temperature=True), "temperature")])
def test_bad_sampling_raises_at_construction(kw, word):
    with pytest.raises(ValueError, match=word):
        Sampling(**kw)


def test_bad_calls_raise_before_tracing(flat, monkeypatch):
    monkeypatch.setattr(api, "decode_program", lambda *a, **k: pytest.fail("traced despite bad input"))
    greedy = spectax.Decoder(flat, max_new_tokens=8, max_prompt_len=16)
    sampled = spectax.Decoder(flat, max_new_tokens=8, max_prompt_len=16, sampling=Sampling(0.8))
    prompt_BP, lengths = right_padded(PROMPTS)
    cases = [
        (greedy, (flat, prompt_BP[:, :8], lengths, 0), {}, "max_prompt_len"),
        (greedy, (flat, prompt_BP.astype(np.float32), lengths, 0), {}, "int"),
        (greedy, (flat, prompt_BP, lengths[:2], 0), {}, "prompt_len_B"),
        (greedy, (flat, prompt_BP, lengths, "seed"), {}, "rng"),
        (greedy, (flat, prompt_BP, lengths, 0), dict(sampling=Sampling(0.7)), "greedy"),
        (sampled, (flat, prompt_BP, lengths, 0), dict(sampling=Sampling(0.0)), "greedy"),
        (sampled, (flat, prompt_BP, lengths, 0), dict(sampling=Sampling(0.7, top_k=5)), "top_k"),
        (sampled, (flat, prompt_BP, lengths, 0), dict(drafter=NGram()), "structure"),
        (greedy, (flat.replace(config=dataclasses.replace(flat.config, num_layers=1)), prompt_BP, lengths, 0), {},
         "structure"),
    ]
    for dec, args, kw, word in cases:
        with pytest.raises(ValueError, match=word):
            dec(*args, **kw)


def test_shard_map_over_rows_equals_one_call(flat):
    """Inside shard_map each device decodes its own rows (per-row seeds keep them independent of the split). The
    loop's state is born replicated inside the call and becomes per-shard as it runs: check_vma=False."""
    from jax.sharding import PartitionSpec as P

    from spectax.sharding import make_mesh

    mesh = make_mesh(data=2)
    dec = decoder_like_decode(flat, all_drafters(flat)["ngram"], sampling=Sampling(0.9))
    prompt_BP, lengths = right_padded(PROMPTS)
    sharded = jax.shard_map(lambda p, n, s: dec(flat, p, n, s).tokens, mesh=mesh,
                            in_specs=(P("data"), P("data"), P("data")), out_specs=P("data"), check_vma=False)
    got = jax.jit(sharded)(prompt_BP, lengths, SEEDS)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(dec(flat, prompt_BP, lengths, SEEDS).tokens))
