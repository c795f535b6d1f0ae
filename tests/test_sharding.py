"""Sharded decoding (spectax.sharding) on 8 fake CPU devices (tests/conftest.py sets them up before JAX starts):
the same tokens on every mesh, params / cache / state sharded as the rules say, shard-by-shard loading, one compile
per configuration, clear errors."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import spectax
import spectax.api as api
import spectax.sharding as sharding
from hlo_copies import cache_copies
from spectax import DraftTree
from spectax.drafters import Block, Combined, CoS, DraftModel, Heads, NGram, NoDraft
from spectax.loop import Loop
from spectax.models import Model, ModelConfig
from spectax.sampling import make_sampling, top_k
from spectax.sharding import Layout, ShardingRules, make_mesh
from spectax.step_types import LoopSpec
from spectax.verify import Typical

# heads and vocabulary divide every model axis here; kv heads (2) only 1 and 2: replicated at model 4 and 8
TARGET = ModelConfig(arch="llama", vocab_size=96, hidden_size=32, num_layers=1, num_heads=8, num_kv_heads=2,
                     head_dim=8, intermediate_size=64, max_position=512)
# an odd vocabulary (97: replicated everywhere) and one kv head
DRAFT = ModelConfig(arch="llama", vocab_size=97, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                    head_dim=8, intermediate_size=32, max_position=512)
# GPT-2: 4 heads = 4 kv heads (sharded at model 2 and 4, replicated at 8), vocabulary 97
GPT2 = ModelConfig(arch="gpt2", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=4,
                   head_dim=8, intermediate_size=64, max_position=256, tie_embeddings=True)
# (data, model): the model axis splits the target's 2 kv heads at 1 and 2 only, its vocabulary (96) at every size
MESHES = [(1, 8), (2, 4), (4, 2), (8, 1)]
TWO_MESHES = [(4, 2), (1, 8)]    # kv heads split over model 2; the vocabulary in blocks of 12 over model 8
CERBERUS_GATE = 0.5              # nats: the gated Cerberus case checks that it both opens and closes on PROMPTS
PROMPTS = [[5, 17, 3], [9, 9, 9, 9, 9, 2], [40, 41], [7, 8, 9, 10, 11, 12, 13], [88], [1, 2, 1, 2, 1, 2],
           [60, 3, 33, 72], [20, 21, 22]]          # 8 rows: the (8, 1) mesh's data axis
NEW = 10

pytestmark = pytest.mark.filterwarnings("ignore:.*does not divide mesh axis:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
    assert jax.device_count() >= 8, ("the sharding tests need 8 devices: XLA_FLAGS="
                                     "--xla_force_host_platform_device_count=8 before JAX starts (tests/conftest.py)")


@pytest.fixture(scope="module")
def target():
    return Model.random(TARGET, seed=0, scale=3.0)


@pytest.fixture(scope="module")
def drafters(target):
    small = Model.random(DRAFT, seed=4, scale=3.0)
    heads = Heads.create(target, kind="medusa", num_heads=2, tree=DraftTree.kary((2, 2)), seed=3)
    return {
        "plain": None,
        "chain": DraftModel(target, tree=DraftTree.chain(3)),       # drafts with the target: long accepted runs
        "tree": DraftModel(small, tree=DraftTree.kary((3, 2))),
        "heads": heads,
        "cerberus": Heads.create(target, kind="cerberus", num_heads=2, tree=DraftTree.kary((2, 2)), seed=3,
                                 gate=CERBERUS_GATE),
        "block": Block.create(target, block_size=2, tree=DraftTree.kary((2, 2)), seed=5),
        "ngram": NGram(max_n=2, tree=DraftTree.chain(3)),
        "combined": Combined((NGram(max_n=2, tree=DraftTree.chain(2)), heads)),
        # CoS decodes its Ensemble: the target and the small model (97 tokens: one padding row, never sharded)
        "cos": CoS(spectax.Ensemble((target, small)), tree=DraftTree.chain(3)),
    }


def tokens(out) -> np.ndarray:
    return np.asarray(out.tokens)


# name: (drafter, temperature, other decode arguments, meshes). Greedy plain, draft-model chain and tree, and heads
# run on every mesh; the other cases on (4, 2) and (1, 8), where the kv heads, resp. the vocabulary, are split the
# furthest (sampled draws do not depend on the mesh, so the other meshes add no case the greedy runs miss).
CASES = {
    "plain": ("plain", 0.0, {}, MESHES),
    "chain": ("chain", 0.0, {}, MESHES),
    "tree": ("tree", 0.0, {}, MESHES),
    "heads": ("heads", 0.0, {}, MESHES),
    "cerberus gated": ("cerberus", 0.0, {}, TWO_MESHES),
    "block": ("block", 0.0, {}, TWO_MESHES),
    "ngram": ("ngram", 0.0, {}, TWO_MESHES),
    "combined": ("combined", 0.0, {}, TWO_MESHES),
    "cos": ("cos", 0.0, {}, TWO_MESHES),
    "sampled plain top-k": ("plain", 1.0, {"top_k": 20}, TWO_MESHES),
    "sampled tree": ("tree", 1.0, {}, TWO_MESHES),
    "sampled heads": ("heads", 1.0, {}, TWO_MESHES),
    "sampled tree top-p": ("tree", 1.0, {"top_p": 0.8}, TWO_MESHES),
    "sampled heads lossy": ("heads", 0.7, {"lossy": Typical()}, TWO_MESHES),
}


def decode_case(drafters, target, name, mesh=None):
    """decode() of one CASES entry (CoS decodes its ensemble, every other drafter the target), rng 11."""
    kind, temperature, extra, _ = CASES[name]
    drafter = drafters[kind]
    model = drafter.ensemble if isinstance(drafter, CoS) else target
    return spectax.decode(model, PROMPTS, NEW, drafter=drafter, temperature=temperature, rng=11, mesh=mesh, **extra)


@pytest.mark.parametrize("name", list(CASES))
def test_same_tokens_on_every_mesh(target, drafters, name):
    """Sharded decoding gives exactly the tokens (and the acceptance statistics) of the unsharded program, greedy and
    sampled (fixed rng: draws do not depend on the mesh), with every drafter kind, a lossy rule and top-k / top-p
    filtering. The chain case accepts long runs (tau > 2), so the sharded commit path is exercised; the gated
    Cerberus case both speculates and declines. Chain speculative sampling runs in the two-process test."""
    ref = decode_case(drafters, target, name)
    if name == "chain":
        assert ref.stats.tau > 2
    if name == "cerberus gated":
        speculated, calls = np.asarray(ref.stats.speculated), np.asarray(ref.stats.row_calls)
        assert 0 < speculated.sum() < calls.sum(), "the gate must both open and close on this run"
    for shape in CASES[name][3]:
        mesh = make_mesh(*shape)
        out = decode_case(drafters, target, name, mesh)
        np.testing.assert_array_equal(tokens(out), tokens(ref), err_msg=f"mesh {shape}")
        np.testing.assert_array_equal(np.asarray(out.lengths), np.asarray(ref.lengths))
        for stat in ("speculated", "accepted_hist", "rank_hist"):
            np.testing.assert_array_equal(np.asarray(getattr(out.stats, stat)), np.asarray(getattr(ref.stats, stat)),
                                          err_msg=f"{stat} on mesh {shape}")
        assert out.tokens.sharding.is_equivalent_to(NamedSharding(mesh, P("data", None)), 2)


def test_gpt2_same_tokens_on_every_mesh():
    model = Model.random(GPT2, seed=1, scale=3.0)
    ref = tokens(spectax.decode(model, PROMPTS, NEW))
    for shape in MESHES:
        np.testing.assert_array_equal(tokens(spectax.decode(model, PROMPTS, NEW, mesh=make_mesh(*shape))), ref)


def expected_llama_specs(model_axis_shards_kv: bool):
    kv = "model" if model_axis_shards_kv else None
    return {
        "['embed']['embedding']": P("model", None),
        "['layers_0']['attn']['qkv']['kernel']": P(None, kv, None, None),
        "['layers_0']['attn']['o']['kernel']": P("model", None),
        "['layers_0']['mlp']['gate_up']['kernel']": P(None, None, "model"),
        "['layers_0']['mlp']['down']['kernel']": P("model", None),
        "['layers_0']['attn_norm']['scale']": P(),
        "['final_norm']['scale']": P(),
        "['lm_head']['kernel']": P(None, "model"),
    }


def check_params(model, mesh, expected, model_size):
    """Every listed param has the expected sharding; per-device bytes shrink by the model axis for the sharded."""
    got = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(model.params)}
    assert set(expected) <= set(got)
    for name, spec in expected.items():
        x = got[name]
        assert x.sharding.is_equivalent_to(NamedSharding(mesh, spec), x.ndim), (name, x.sharding.spec, spec)
        per_device = x.addressable_shards[0].data.nbytes
        assert per_device * (model_size if "model" in spec else 1) == x.nbytes, name
    sharded = sum(x.addressable_shards[0].data.nbytes for x in got.values())
    return sharded, sum(x.nbytes for x in got.values())


def test_param_shardings_and_per_device_bytes(target):
    norms = sum(x.nbytes for x in jax.tree_util.tree_leaves(target.params) if x.ndim == 1)
    qkv = target.params["layers_0"]["attn"]["qkv"]["kernel"].nbytes
    for shape, kv_split in [((2, 4), False), ((4, 2), True)]:
        mesh = make_mesh(*shape)
        placed = Layout(mesh).place(target)
        per_device, total = check_params(placed, mesh, expected_llama_specs(kv_split), shape[1])
        replicated = norms + (0 if kv_split else qkv)          # everything else shrinks by the model axis
        assert per_device == (total - replicated) // shape[1] + replicated
        np.testing.assert_array_equal(np.asarray(placed.params["lm_head"]["kernel"]),
                                      np.asarray(target.params["lm_head"]["kernel"]))
    gpt2 = Layout(make_mesh(2, 4)).place(Model.random(GPT2, seed=1))
    check_params(gpt2, make_mesh(2, 4), {
        "['wte']['embedding']": P(),                                       # 97 rows: replicated
        "['wpe']['embedding']": P(),
        "['layers_1']['attn']['qkv']['kernel']": P(None, None, "model", None),   # [D, 3, H, hd]
        "['layers_1']['attn']['qkv']['bias']": P(None, "model", None),
        "['layers_1']['attn']['o']['kernel']": P("model", None),
        "['layers_1']['mlp']['fc']['kernel']": P(None, "model"),
        "['layers_1']['mlp']['proj']['kernel']": P("model", None),
        "['layers_1']['mlp']['proj']['bias']": P()}, 4)


def test_block_params_shard_like_the_target_layers(target, drafters):
    """Layout.place shards the block drafter's layers as the target's (heads, kv heads, MLP over the model axis) and
    replicates the rest: the fusion [m E, E] feeds an RMSNorm over E (a split E would need an all-reduce per draft
    step for a matrix of m E^2 floats, 4 MiB at SmolLM2's E = 576 and m = 3, next to ~2.6 MiB per layer split), and
    the mask vectors and norms are a few E floats."""
    block = drafters["block"]
    layer_specs = {k: v for k, v in expected_llama_specs(False).items() if k.startswith("['layers_0']")}
    replicated = {"['fuse']": P(), "['fuse_norm']": P(), "['mask']": P(), "['final_norm']": P()}
    for shape, kv_split in [((2, 4), False), ((4, 2), True)]:
        mesh = make_mesh(*shape)
        expected = {**{k: v for k, v in expected_llama_specs(kv_split).items() if k in layer_specs}, **replicated}
        placed = Layout(mesh).place(block)
        per_device, total = check_params(placed, mesh, expected, shape[1])
        whole = {jax.tree_util.keystr(p): x.nbytes for p, x in jax.tree_util.tree_leaves_with_path(block.params)}
        kept = sum(n for k, n in whole.items() if "model" not in expected.get(k, P()))
        assert per_device == (total - kept) // shape[1] + kept and per_device < 0.6 * total
        for a, b in zip(jax.tree_util.tree_leaves(placed.params), jax.tree_util.tree_leaves(block.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_replication_is_said_once(target):
    import warnings

    sharding.forget_warnings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            Layout(make_mesh(2, 4)).place(target)
    said = [str(w.message) for w in caught if "does not divide" in str(w.message)]
    assert said == ["kv_heads of size 2 does not divide mesh axis 'model' of size 4: replicated along it"]


def layout_of_2x4() -> Layout:
    return Layout(make_mesh(2, 4))


def test_every_array_is_declared_or_said_to_be_replicated(target, drafters):
    """Sharding names no one's fields: each owner declares its arrays' axes. Every spectax drafter and target declares
    all of its arrays; a drafter that declares nothing is replicated, with one warning naming what is undeclared."""
    import warnings

    from flax import struct

    block = Block.create(target, block_size=2, target_layers=(0,))
    for tree in [target, *drafters.values(), block, NGram(), Combined((NGram(), drafters["heads"]))]:
        sharding.logical_axes(tree)                          # raises Undeclared for an undeclared array
    placed = layout_of_2x4().place(block)                    # Block's layers shard like the target's
    assert placed.params["layers_0"]["mlp"]["gate_up"]["kernel"].sharding.spec[-1] == "model"

    @struct.dataclass
    class Opaque:
        table: jax.Array

    layout = layout_of_2x4()
    with pytest.raises(sharding.Undeclared, match="Opaque.table"):
        sharding.logical_axes(Opaque(jnp.ones((8, 4))))
    sharding.forget_warnings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        placed = layout.place(Opaque(jnp.ones((8, 4))))
        layout.place(Opaque(jnp.ones((8, 4))))
    said = [str(w.message) for w in caught if "replicating" in str(w.message)]
    assert len(said) == 1 and "Opaque.table" in said[0]
    assert placed.table.sharding.is_fully_replicated


def test_load_places_shard_by_shard(target, tmp_path, monkeypatch):
    """load(path, mesh=) hands each device only its slices (never a whole sharded tensor, never a device_put of a
    whole array) and the loaded model decodes the same tokens."""
    spectax.save(target, tmp_path / "ckpt")
    blocks = []
    real = jax.make_array_from_callback

    def spy(shape, s, callback, *a, **k):
        def recorded(index):
            block = callback(index)
            blocks.append((tuple(shape), block.shape))
            return block
        return real(shape, s, recorded, *a, **k)

    def no_device_put(*a, **k):
        raise AssertionError("load(mesh=) must not device_put whole arrays")

    monkeypatch.setattr(sharding.jax, "make_array_from_callback", spy)
    monkeypatch.setattr(sharding.jax, "device_put", no_device_put)
    mesh = make_mesh(2, 4)
    loaded = spectax.load(tmp_path / "ckpt", mesh=mesh)
    monkeypatch.undo()
    check_params(loaded, mesh, expected_llama_specs(False), 4)
    full = {s for s, b in blocks if s == b}
    assert len(blocks) > 8 and any(s != b for s, b in blocks)
    qkv = (TARGET.hidden_size, TARGET.num_kv_heads, TARGET.num_heads // TARGET.num_kv_heads + 2, TARGET.head_dim)
    assert full == {(TARGET.hidden_size,), qkv}, "only the replicated tensors (norms, 2 kv heads on 4) go whole"
    np.testing.assert_array_equal(tokens(spectax.decode(loaded, PROMPTS, NEW, mesh=mesh)),
                                  tokens(spectax.decode(target, PROMPTS, NEW)))


@pytest.mark.parametrize("fixture", ["llama_gqa", "gpt2"])
def test_load_hugging_face_dir_onto_a_mesh(fixture):
    """A Hugging Face directory loads onto a (2, 4) mesh (llama: heads, MLP sharded; GPT-2: heads, MLP; both
    vocabularies 300 split 4 ways) and computes the logits of the unsharded load."""
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "hf" / fixture
    mesh = make_mesh(2, 4)
    sharded, plain = spectax.load(path, mesh=mesh), spectax.load(path)
    mlp = sharded.params["layers_0"]["mlp"]
    kernel = mlp["gate_up"]["kernel"] if fixture == "llama_gqa" else mlp["fc"]["kernel"]
    assert kernel.sharding.spec[-1] == "model" and kernel.addressable_shards[0].data.shape[-1] * 4 == kernel.shape[-1]
    tokens_BT = np.arange(2 * 12).reshape(2, 12) % sharded.config.vocab_size
    np.testing.assert_allclose(np.asarray(sharded.logits(tokens_BT)), np.asarray(plain.logits(tokens_BT)),
                               atol=1e-5, rtol=1e-5)


def test_cache_and_state_shardings(target, drafters):
    """The KV caches, the decode state and every drafter's state carry the rules' shardings after prefill."""
    mesh = make_mesh(2, 4)
    layout = Layout(mesh)
    sampler, sp = make_sampling(0.0, 0, 1.0)
    spec = LoopSpec(sampler=sampler, out_size=16, vocab_size=TARGET.vocab_size, layout=layout)
    gpt2 = layout.place(Model.random(GPT2, seed=1))
    combined = Combined((NGram(max_n=2, tree=DraftTree.chain(2)), drafters["heads"]))
    B, S = 8, 40
    prompt = np.ones((B, 16), np.int32)

    def run(model, drafter):
        def fn(model, drafter, prompt, lengths, keys):
            cache = spec.constrain(model.create_cache(B, S))
            loop = Loop(model=model, drafter=drafter, spec=spec, sampling=sp, max_new=jnp.int32(8),
                        eos_ids=jnp.full((1,), -1, jnp.int32))
            return spec.constrain(loop.prefill(prompt, lengths, keys, cache))
        return jax.jit(fn)(layout.place(model), layout.place(drafter), layout.rows(prompt),
                           layout.rows(np.full(B, 3, np.int32)), layout.rows(api.row_keys(0, B)))

    def has(x, *spec):
        return x.sharding.is_equivalent_to(NamedSharding(mesh, P(*spec)), x.ndim)

    state = run(gpt2, NoDraft())
    assert all(has(k, "data", "model", None, None) for k in state.cache.k + state.cache.v)    # 4 kv heads: split
    for x in (state.history.tokens_BW, state.n_out, state.history.length_B, state.done, state.cache.lengths,
              state.stats.row_calls):
        assert has(x, "data", *(None,) * (x.ndim - 1))
    state = run(target, drafters["tree"])
    assert has(state.cache.k[0], "data", None, None, None)                     # 2 kv heads on 4: replicated
    draft_state = state.drafter_state
    assert has(draft_state.cache.v[0], "data", None, None, None) and has(draft_state.x0, "data")
    ngram_state, heads_state = run(target, combined).drafter_state
    assert ngram_state == ()                                                  # NGram reads the loop's history
    assert has(heads_state.table_VpE, "model", None) and has(heads_state.logits_BDV, "data", None, "model")
    placed = layout.place(drafters["heads"])
    assert has(placed.params["w1"], None, None, "model") and has(placed.params["b1"], None, "model")
    for kind, w2 in (("blockwise", (None, "model", None)), ("cerberus", (None, None, "model"))):
        placed = layout.place(Heads.create(target, kind=kind, num_heads=2))
        assert has(placed.params["w1"], None, None, "model") and has(placed.params["w2"], *w2)
    ensemble = layout.place(spectax.Ensemble((target, gpt2.replace(config=GPT2))))     # CoS' target: every member
    assert has(ensemble.models[0].params["lm_head"]["kernel"], None, "model")
    assert has(ensemble.models[1].params["layers_0"]["mlp"]["fc"]["kernel"], None, "model")


def test_the_sharded_loop_holds_only_cache_shards():
    """The compiled (2, 4) program keeps each KV cache as per-device [B/2, K/4, S, hd] blocks: the full cache shape
    never appears (nothing gathers or replicates it) and no block is copied."""
    model = Model.random(GPT2, seed=1)
    mesh = make_mesh(2, 4)
    layout = Layout(mesh)
    size = 203
    dec = spectax.Decoder(model, max_new_tokens=16, max_prompt_len=16, cache_size=size, mesh=mesh)
    hlo = jax.jit(dec).lower(layout.place(model), layout.rows(np.ones((4, 16), np.int32)),
                             layout.rows(np.array([5, 9, 2, 16], np.int32)),
                             layout.rows(api.row_keys(0, 4))).compile().as_text()
    block, full = f"f32[2,1,{size},8]", f"f32[4,4,{size},8]"
    assert block in hlo and full not in hlo
    copies = cache_copies(hlo, [block])
    assert not copies, copies[0]


COLLECTIVE = re.compile(r"\s((?:all-gather|all-reduce|all-to-all|ragged-all-to-all|collective-permute|"
                        r"collective-broadcast|reduce-scatter)(?:-start|-done)?)\(")
SHAPE = re.compile(r"\b[a-z][a-z0-9]*\[([0-9,]*)\]")          # f32[2,96], f32[96] (rank 1), u32[] (scalar)


def collectives(hlo: str) -> list[tuple[str, list[tuple[int, ...]], str]]:
    """Every collective instruction of an HLO module's text (all-gather, all-reduce, all-to-all, collective-permute,
    reduce-scatter, ..., and their async -start / -done halves) as (op, dims of every array it names, line): the
    result's (each element of a tuple result) and the operands', not the attributes' (channel_id=96, ...)."""
    found = []
    for line in hlo.splitlines():
        match = COLLECTIVE.search(line)
        if match is None or "=" not in line[:match.start()]:
            continue
        depth, end = 1, match.end()                   # the operand list ends at the matching parenthesis
        while depth and end < len(line):
            depth += {"(": 1, ")": -1}.get(line[end], 0)
            end += 1
        dims = [tuple(int(d) for d in found_dims.split(",") if d) for found_dims in SHAPE.findall(line[:end])]
        found.append((match.group(1), dims, line.strip()))
    return found


def full_vocabulary_collectives(hlo: str, vocab_size: int) -> list[str]:
    """The collective instructions of `hlo` that move an array with a dimension of `vocab_size` (any position, any
    rank: logits [B, T, V], a row [V], an embedding [V, E])."""
    return [line for _, dims, line in collectives(hlo) if any(vocab_size in d for d in dims)]


def test_the_collective_parser_finds_every_full_vocabulary_collective():
    """Hand-written HLO: each collective kind once moving a 96-token vocabulary (rank 1, tuple results of async
    starts, a reduce-scatter whose result is only a shard) and once moving shards of 12 only; a non-collective op on
    the full vocabulary and a 96 in an attribute are not collectives that move it."""
    full = """
  %ag = f32[2,96]{1,0} all-gather(f32[2,12]{1,0} %x), channel_id=1, replica_groups=[1,8]<=[8], dimensions={1}
  %ags = (f32[2,12]{1,0}, f32[2,96]{1,0}) all-gather-start(f32[2,12]{1,0} %x), channel_id=2, dimensions={1}
  %agd = f32[2,96]{1,0} all-gather-done((f32[2,12]{1,0}, f32[2,96]{1,0}) %ags)
  %ar = f32[96]{0} all-reduce(f32[96]{0} %p), channel_id=3, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  ROOT %ars = f32[96,32]{1,0} all-reduce-start(f32[96,32]{1,0} %e), channel_id=4, to_apply=%add
  %ard = f32[96,32]{1,0} all-reduce-done(f32[96,32]{1,0} %ars)
  %a2a = (f32[1,96]{1,0}, f32[1,96]{1,0}) all-to-all(f32[1,96]{1,0} %a, f32[1,96]{1,0} %b), channel_id=5
  %cp = f32[4,96]{1,0} collective-permute(f32[4,96]{1,0} %c), source_target_pairs={{0,1},{1,0}}
  %cps = (f32[4,96]{1,0}, f32[4,96]{1,0}, u32[], u32[]) collective-permute-start(f32[4,96]{1,0} %c), channel_id=6
  %cpd = f32[4,96]{1,0} collective-permute-done((f32[4,96]{1,0}, f32[4,96]{1,0}, u32[], u32[]) %cps)
  %rs = f32[2,12]{1,0} reduce-scatter(f32[2,96]{1,0} %x), channel_id=7, dimensions={1}, to_apply=%add
  %rss = ((f32[2,96]{1,0}), f32[2,12]{1,0}) reduce-scatter-start(f32[2,96]{1,0} %x), dimensions={1}
  %ra2a = s32[8,96]{1,0} ragged-all-to-all(s32[8,96]{1,0} %i, s32[8,96]{1,0} %o, s32[8]{0} %n), channel_id=8
  %cb = bf16[96]{0} collective-broadcast(bf16[96]{0} %v), replica_groups={{0,1}}"""
    small = """
  %ag.1 = f32[2,12]{1,0} all-gather(f32[2,3]{1,0} %x), channel_id=96, replica_groups=[2,4]<=[8], dimensions={1}
  %ags.1 = (f32[2,3]{1,0}, f32[2,12]{1,0}) all-gather-start(f32[2,3]{1,0} %x), channel_id=9, dimensions={1}
  %agd.1 = f32[2,12]{1,0} all-gather-done((f32[2,3]{1,0}, f32[2,12]{1,0}) %ags.1)
  %ar.1 = f32[2]{0} all-reduce(f32[2]{0} %q), channel_id=10, replica_groups={{0,96}}, to_apply=%add.96
  %ars.1 = (f32[2,1]{1,0}, s32[2,1]{1,0}) all-reduce-start(f32[2,1]{1,0} %m, s32[2,1]{1,0} %i), to_apply=%max
  %a2a.1 = (f32[1,12]{1,0}, f32[1,12]{1,0}) all-to-all(f32[1,12]{1,0} %a, f32[1,12]{1,0} %b), channel_id=11
  %cp.1 = u32[] collective-permute(u32[] %c), source_target_pairs={{0,1},{1,0}}
  %rs.1 = f32[2,3]{1,0} reduce-scatter(f32[2,12]{1,0} %x), channel_id=12, dimensions={1}, to_apply=%add
  %logits = f32[2,96]{1,0} dot(f32[2,32]{1,0} %h, f32[32,96]{1,0} %w), lhs_contracting_dims={1}
  %all-gather.96 = f32[2,96]{1,0} fusion(f32[2,96]{1,0} %p), kind=kLoop, calls=%fused_computation"""
    found = collectives(full + small)
    assert len(found) == len(full.strip().splitlines()) + len(small.strip().splitlines()) - 2
    assert {op for op, _, _ in found} >= {"all-gather", "all-gather-start", "all-gather-done", "all-reduce",
                                          "all-reduce-start", "all-to-all", "collective-permute",
                                          "collective-permute-start", "reduce-scatter", "reduce-scatter-start"}
    assert full_vocabulary_collectives(full + small, 96) == [line.strip() for line in full.strip().splitlines()]
    assert full_vocabulary_collectives(small, 96) == []


def test_a_program_that_moves_the_vocabulary_is_caught():
    """The check's tooth on compiled programs: logits [2, 96] split over 8 devices and then replicated (an
    all-gather), and an LM head split on its embedding rows (the logits summed across devices: an all-reduce) are
    both found; the vocabulary-split head moves no full-vocabulary array."""
    mesh = make_mesh(1, 8)
    h_BE = jnp.ones((2, 32))
    w_EV = jax.device_put(jnp.ones((32, 96)), NamedSharding(mesh, P(None, "model")))
    replicated = NamedSharding(mesh, P())

    def gathered(h, w):
        return jax.lax.with_sharding_constraint(h @ w, replicated)

    def split_head(h, w):
        return jax.nn.log_softmax(h @ w)

    def compiled(fn, w):
        return jax.jit(fn).lower(h_BE, w).compile().as_text()

    assert "all-gather" in " ".join(full_vocabulary_collectives(compiled(gathered, w_EV), 96))
    summed = full_vocabulary_collectives(compiled(split_head, jax.device_put(w_EV, NamedSharding(mesh, P("model")))),
                                         96)
    assert "all-reduce" in " ".join(summed), summed
    hlo = compiled(split_head, w_EV)
    assert collectives(hlo) and not full_vocabulary_collectives(hlo, 96)


def test_vocabulary_is_never_gathered(target, drafters):
    """With the vocabulary split over 8 devices, no collective in the greedy or sampled (unfiltered) chain program
    moves a full-vocabulary array: argmax, softmax, residuals, Gumbel top-k and categorical draws reduce per shard.
    The program does communicate (the attention and MLP all-reduces), so the parser has collectives to read."""
    mesh = make_mesh(1, 8)
    layout = Layout(mesh)
    for temperature in (0.0, 1.0):
        dec = spectax.Decoder(target, drafters["chain"], max_new_tokens=16, max_prompt_len=16, cache_size=48,
                              sampling=spectax.Sampling(temperature), mesh=mesh)
        hlo = jax.jit(dec).lower(layout.place(target), layout.rows(np.ones((2, 16), np.int32)),
                                 layout.rows(np.array([3, 4])), layout.rows(api.row_keys(0, 2)),
                                 layout.place(drafters["chain"])).compile().as_text()
        assert {op for op, _, _ in collectives(hlo)} & {"all-reduce", "all-reduce-start"}
        moved = full_vocabulary_collectives(hlo, TARGET.vocab_size)
        assert not moved, moved[:3]


def test_top_k_in_blocks_equals_top_k():
    x = jnp.asarray(np.random.default_rng(0).integers(0, 5, (3, 4, 96)).astype(np.float32))   # many ties
    for shards in (1, 2, 4, 8, 5):
        for k in (1, 3, 12):
            v, i = top_k(x, k, shards)
            v0, i0 = jax.lax.top_k(x, k)
            np.testing.assert_array_equal(np.asarray(i), np.asarray(i0))
            np.testing.assert_array_equal(np.asarray(v), np.asarray(v0))


def test_one_compile_per_configuration(target, fresh_trace):
    """Equal configurations share one compiled program (from a cleared cache: other tests compile these meshes)."""
    program = api.decode_program
    mesh = make_mesh(2, 4)
    spectax.decode(target, PROMPTS, NEW, mesh=mesh)
    before = program._cache_size()
    spectax.decode(target, PROMPTS, NEW, mesh=mesh)
    spectax.decode(target, [p[:1] + p for p in PROMPTS], NEW, mesh=make_mesh(2, 4), rng=5)   # same buckets
    assert program._cache_size() == before
    spectax.decode(target, PROMPTS, NEW, mesh=make_mesh(4, 2))
    assert program._cache_size() == before + 1


def test_clear_errors(target):
    from jax.sharding import Mesh

    odd = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4), ("x", "y"))
    with pytest.raises(ValueError, match=r"mesh axes \['x', 'y'\] are unknown"):
        spectax.decode(target, PROMPTS, NEW, mesh=odd)
    with pytest.raises(ValueError, match="batch of 3 rows does not divide"):
        spectax.decode(target, PROMPTS[:3], NEW, mesh=make_mesh(2, 4))
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(4, 4)
    with pytest.raises(ValueError, match="more than once"):
        Layout(make_mesh(2, 4), ShardingRules(embed="model")).place(target)
    with pytest.raises(ValueError, match="lacks"):
        Layout(Mesh(np.asarray(jax.devices()[:2]), ("data",)))
    with pytest.raises(ValueError, match="mesh= too"):
        spectax.decode(target, PROMPTS, NEW, rules=ShardingRules())
    with pytest.raises(ValueError, match="interpret=True"):   # a kernel this backend cannot run, mesh or not
        spectax.decode(target, PROMPTS, NEW, mesh=make_mesh(2, 4), attn_impl="pallas_tpu")


@pytest.mark.parametrize("shape,kind", [((4, 2), "tree"), ((2, 4), "plain")])
def test_kernels_run_sharded_inside_one_shard_map(shape, kind, monkeypatch):
    """A Pallas kernel (interpreted) in the sharded program: per (batch, kv-head) shard inside shard_map, the
    unsharded tokens; at model 4 the 2 kv heads are replicated and every device attends all heads of its rows.
    The Triton kernel stands for both: the boundary is the same code for either, and the TPU interpreter, which
    simulates the devices of a multi-device program, stalls inside an 8-device shard_map on CPU."""
    impl = "pallas_gpu"
    from pallas_kernels.tree_attention import AttnImpl

    model = Model.random(dataclasses.replace(TARGET, head_dim=16), seed=0, scale=3.0)
    drafter = None if kind == "plain" else DraftModel(model, tree=DraftTree.kary((2, 1)))
    calls = []
    boundary = Layout.shard_attention
    monkeypatch.setattr(Layout, "shard_attention", lambda self, *a: calls.append(1) or boundary(self, *a))
    ref = spectax.decode(model, PROMPTS, 6, drafter=drafter, attn_impl="xla")
    out = spectax.decode(model, PROMPTS, 6, drafter=drafter, mesh=make_mesh(*shape),
                         attn_impl=AttnImpl(impl, interpret=True))
    np.testing.assert_array_equal(tokens(out), tokens(ref))
    assert calls   # traced through the boundary (once per layer and forward, at trace time)


def test_two_processes_decode_like_one(target, tmp_path):
    """Multi-host through jax.distributed on one machine: two processes of 4 CPU devices each form one 8-device
    (2, 4) mesh, load the checkpoint shard by shard and decode (chain drafts, sampled: speculative sampling) the
    tokens one unsharded process decodes."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    spectax.save(target, tmp_path / "ckpt")
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    worker = [sys.executable, str(root / "tests" / "multihost_worker.py"), port, str(tmp_path / "ckpt"),
              str(tmp_path / "out.npy")]
    procs = [subprocess.Popen(worker[:2] + [str(i)] + worker[2:], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    ref = spectax.decode(target, PROMPTS[:4], 8, drafter=DraftModel(target, tree=DraftTree.chain(3)),
                         temperature=1.0, rng=3)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), tokens(ref))
