"""The Pallas tree-attention kernels (TPU Mosaic, GPU Triton) in interpret mode against the dense oracle and the jnp
reference, their block-size checks, backend selection, and decoding end to end with each kernel."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_kernels.tree_attention.gpu as gpu_module
import spectax
import spectax.api as api
from attention_oracle import dense_attention, random_tree_mask
from pallas_kernels.tree_attention import AttnImpl, BlockSizes, resolve_impl, tree_attention, tree_attention_reference
from pallas_kernels.tree_attention.block_sizes import check_gpu_block, check_tpu_block
from spectax import DraftTree
from spectax.drafters import DraftModel, Heads
from spectax.models import Model, ModelConfig
from spectax.step_types import LoopSpec

KERNELS = ("pallas_tpu", "pallas_gpu")

# (B, T, H, K, D, S, lengths, mask, dtype, block_kv): T in {1, 3, 8, 64, 128, 256} (256: a prefill chunk), GQA
# 1 / 3 / 8, head_dim 64 / 128, lengths 0, 1, a block's multiple and not, the whole cache, ragged, masks: "chain" (a
# causal [T, T]), "tree" (bushy, per row [B, T, T]), "tree2d" (one bushy [T, T] for all rows), fp32 and bf16;
# block_kv None = backend default
CASES = [
    (3, 1, 2, 2, 64, 37, (0, 1, 36), "chain", "float32", 16),
    (2, 3, 6, 2, 128, 50, (17, 50), "tree", "float32", 16),
    (2, 8, 8, 1, 64, 45, (44, 3), "tree", "bfloat16", 32),
    (2, 64, 2, 2, 128, 70, (5, 70), "chain", "float32", 32),
    (2, 64, 6, 2, 64, 33, (33, 0), "tree", "bfloat16", 16),
    (2, 8, 6, 2, 128, 600, (512, 555), "tree", "float32", None),
    (2, 1, 8, 1, 128, 40, (39, 40), "chain", "bfloat16", 16),
    (1, 3, 2, 2, 64, 24, (0,), "chain", "float32", 16),
    (2, 8, 4, 2, 64, 45, (45, 20), "tree2d", "float32", 16),
    (2, 128, 6, 2, 128, 77, (77, 13), "tree2d", "bfloat16", 32),
    (1, 256, 2, 2, 64, 300, (300,), "tree2d", "float32", 64),
    (1, 256, 8, 1, 64, 40, (21,), "chain", "bfloat16", 16),
]


def _inputs(case, seed):
    B, T, H, K, D, S, lengths, mask_kind, dtype, _ = case
    rng = np.random.default_rng(seed)
    round_ = lambda a: np.array(jnp.asarray(a, dtype).astype(jnp.float32))  # the oracle sees what the kernel sees
    q = round_(rng.normal(size=(B, T, H, D)))
    k_new, v_new = (round_(rng.normal(size=(B, T, K, D))) for _ in range(2))
    k_cache, v_cache = (round_(rng.normal(size=(B, S, K, D))) for _ in range(2))
    lengths = np.array(lengths, np.int32)
    for b, L in enumerate(lengths):  # dead slots hold NaN: they must not change the result
        k_cache[b, L:] = np.nan
        v_cache[b, L:] = np.nan
    if mask_kind == "chain":
        mask = np.tril(np.ones((T, T), bool))
    elif mask_kind == "tree2d":
        mask = random_tree_mask(rng, T)
    else:
        mask = np.stack([random_tree_mask(rng, T) for _ in range(B)])
    return q, k_new, v_new, k_cache, v_cache, lengths, mask


def _run(impl, case, inputs, interpret=True):
    q, k_new, v_new, k_cache, v_cache, lengths, mask = inputs
    T, dtype, block_kv = case[1], case[8], case[9]
    block_q = 16 if T <= 64 else 128                 # prefill-sized T: fewer, taller tiles (as the defaults have)
    bs = None if block_kv is None else BlockSizes(block_q=block_q, block_kv=block_kv, edge_block_kv=min(16, block_kv))
    cast = lambda a: jnp.asarray(a, dtype)
    return tree_attention(cast(q), cast(k_new), cast(v_new), cast(k_cache.transpose(0, 2, 1, 3)),
                          cast(v_cache.transpose(0, 2, 1, 3)), lengths, mask, impl=impl,
                          interpret=interpret if impl != "xla" else False, block_sizes=bs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[1]}-G{c[2] // c[3]}-D{c[4]}-{c[7]}-{c[8]}")
@pytest.mark.parametrize("impl", KERNELS)
def test_kernel_matches_oracle_and_reference(impl, case):
    inputs = _inputs(case, seed=case[1] * 7 + case[5])
    got = np.asarray(_run(impl, case, inputs).astype(jnp.float32))
    want = dense_attention(*inputs)
    tol = 2e-5 if case[8] == "float32" else 2e-2
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    ref = np.asarray(_run("xla", case, inputs).astype(jnp.float32))
    np.testing.assert_allclose(got, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", KERNELS)
def test_poisoned_slots_catch_a_kernel_that_reads_one_slot_too_many(impl):
    """The check above has teeth: the same kernel told each row is one slot longer reads a NaN slot."""
    case = CASES[1]
    q, k_new, v_new, k_cache, v_cache, lengths, mask = _inputs(case, seed=1)
    got = _run(impl, case, (q, k_new, v_new, k_cache, v_cache, lengths + 1, mask))
    assert not np.isfinite(np.asarray(got)).all()


def _reads_outside(ref, mask):
    """bool scalar: whether a load of `ref` (a kernel ref, or ref.at[indexer]) reads an element outside the ref where
    its mask is on. Masked-off lanes may point anywhere: Triton neither reads nor faults on them."""
    if not hasattr(ref, "transforms"):                   # a whole ref
        return jnp.bool_(False)
    (indexer,) = ref.transforms
    outside_N = []                                       # per sliced dim: which of its indices lie outside the ref
    scalar_outside = jnp.bool_(False)
    for index, size in zip(indexer.indices, ref.ref.shape):
        if isinstance(index, pl.Slice):
            positions = index.start + index.stride * jnp.arange(index.size)
            outside_N.append((positions < 0) | (positions >= size))
        else:                                            # a scalar index drops its dim
            scalar_outside |= (index < 0) | (index >= size)
    outside = jnp.broadcast_to(scalar_outside, tuple(o.shape[0] for o in outside_N))
    for axis, o in enumerate(outside_N):
        outside = outside | o.reshape([-1 if a == axis else 1 for a in range(len(outside_N))])
    return (outside if mask is None else outside & mask).any()


class _BoundsChecked:
    """Triton's `plgpu` as gpu.py sees it, with each `load` checked against its ref's bounds as the interpreted kernel
    runs (a debug callback): `loads` counts the loads run, `outside` those that read outside their ref."""

    def __init__(self, plgpu):
        self._plgpu, self.loads, self.outside = plgpu, 0, 0

    def __getattr__(self, name):
        return getattr(self._plgpu, name)

    def _count(self, outside):
        self.loads += 1
        self.outside += int(outside)

    def load(self, ref, *, mask=None, other=None):
        """plgpu.load, counted."""
        jax.debug.callback(self._count, _reads_outside(ref, mask))
        return self._plgpu.load(ref, mask=mask, other=other)


class _UnmaskedKeyLoads(_BoundsChecked):
    """A broken kernel: its cache key loads (the first masked load it traces) have lost their mask, so the last block
    of a cache of no block's multiple is read past S."""

    traced_key_load = False

    def load(self, ref, *, mask=None, other=None):
        """plgpu.load, counted; the first masked one without its mask."""
        if mask is not None and not self.traced_key_load:
            self.traced_key_load = True
            return super().load(ref)
        return super().load(ref, mask=mask, other=other)


class _OneTripTooMany:
    """jax.lax as gpu.py sees it, for a broken kernel: each fori_loop runs one trip more (a block count off by one)."""

    def __init__(self, lax):
        self._lax = lax

    def __getattr__(self, name):
        return getattr(self._lax, name)

    def fori_loop(self, lower, upper, body, init):
        """lax.fori_loop with one trip more."""
        return self._lax.fori_loop(lower, upper + 1, body, init)


@pytest.mark.parametrize("case", [CASES[3], CASES[10]], ids=lambda c: f"T{c[1]}-S{c[5]}-L{max(c[6])}")
def test_gpu_kernel_reads_nothing_outside_its_refs(case, monkeypatch):
    """Every load of the Triton kernel stays inside its ref where its mask is on: the generic interpreter would pad a
    read past the end with NaN, which a masked-off score hides, where a GPU reads another buffer or faults. Rows of
    the whole cache's length, a cache of no block's multiple, several splits, 256 new tokens in 4 blocks."""
    checked = _BoundsChecked(gpu_module.plgpu)
    monkeypatch.setattr(gpu_module, "plgpu", checked)
    inputs = _inputs(case, seed=5)
    got = np.asarray(_run("pallas_gpu", case, inputs).astype(jnp.float32))
    assert checked.loads > 0 and checked.outside == 0, f"{checked.outside} of {checked.loads} loads read outside"
    np.testing.assert_allclose(got, dense_attention(*inputs), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("broken", ["unmasked key loads", "one trip too many"])
def test_bounds_check_catches_a_kernel_that_reads_past_its_refs(broken, monkeypatch):
    """The check above has teeth. Unmasked key loads read the last cache block past S, and the output stays right
    (the interpreter's NaN there lands on masked-off scores): only the bounds check sees them. Loops one trip too
    long read a block of new tokens past the padded T (the cache loop's extra trip is masked off, and legal)."""
    checked = (_UnmaskedKeyLoads if broken == "unmasked key loads" else _BoundsChecked)(gpu_module.plgpu)
    monkeypatch.setattr(gpu_module, "plgpu", checked)
    if broken == "one trip too many":
        monkeypatch.setattr(gpu_module, "lax", _OneTripTooMany(gpu_module.lax))
    inputs = _inputs(CASES[0], seed=5)
    got = np.asarray(_run("pallas_gpu", CASES[0], inputs))
    assert checked.outside > 0
    if broken == "unmasked key loads":
        np.testing.assert_allclose(got, dense_attention(*inputs), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("impl", ("xla",) + KERNELS)
def test_hand_worked_case(impl):
    """One row, one head, head_dim 16 (only dim 0 used), 2 cached slots + a dead NaN slot, 2 new tokens in a chain.
    q = 4 e0 and the scale is 1/sqrt(16), so a score is k[0]: keys 0 (slot 0), ln 2 (slot 1), 0 (new tokens) give
    weights 1, 2, 1, 1. Values v[0]: slot 0 = 1, slot 1 = 5, new token 0 = 3, new token 1 = 9.
      token 0 sees slots 0, 1 and itself:        (1 * 1 + 2 * 5 + 1 * 3) / (1 + 2 + 1)         = 14 / 4 = 3.5
      token 1 sees slots 0, 1, token 0, itself:  (1 * 1 + 2 * 5 + 1 * 3 + 1 * 9) / (1 + 2 + 1 + 1) = 23 / 5 = 4.6
    """
    D = 16
    e0 = np.eye(D, dtype=np.float32)[0]
    q = np.stack([4 * e0, 4 * e0])[None, :, None]                                   # [1, 2, 1, 16]
    k_cache = np.stack([0 * e0, np.log(2) * e0, np.nan * e0])[None, None]         # [1, 1, 3, 16]
    v_cache = np.stack([1 * e0, 5 * e0, np.nan * e0])[None, None]
    k_new = np.zeros((1, 2, 1, D), np.float32)
    v_new = np.stack([3 * e0, 9 * e0])[None, :, None]
    mask = np.array([[True, False], [True, True]])
    out = tree_attention(q, k_new, v_new, k_cache, v_cache, np.array([2], np.int32), mask, impl=impl,
                         interpret=impl != "xla",
                         block_sizes=BlockSizes(block_q=16, block_kv=16, edge_block_kv=16))
    np.testing.assert_allclose(np.asarray(out)[0, :, 0, 0], [3.5, 4.6], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out)[0, :, 0, 1:], 0.0, atol=1e-6)


def test_tpu_kernel_fetches_no_block_past_a_rows_end():
    """The cache blocks a row's grid steps ask for: each live block once, then the last live one repeated (the
    pipeline skips a repeated block index), for lengths 0, 1, a block's multiple and not."""
    from pallas_kernels.tree_attention.tpu import fetched_block
    fetched = lambda length: [int(fetched_block(j, length, 16)) for j in range(5)]
    assert fetched(0) == [0, 0, 0, 0, 0]
    assert fetched(1) == [0, 0, 0, 0, 0]
    assert fetched(32) == [0, 1, 1, 1, 1]
    assert fetched(40) == [0, 1, 2, 2, 2]
    assert fetched(80) == [0, 1, 2, 3, 4]


def test_tpu_kernel_has_no_races_on_two_cores():
    """The interpreter's happens-before race detector, with the parallel grid dims split over 2 simulated cores."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as interp
    case = CASES[1]
    inputs = _inputs(case, seed=3)
    params = pltpu.InterpretParams(detect_races=True, num_cores_or_threads=2)
    got = _run("pallas_tpu", case, inputs, interpret=params)
    np.testing.assert_allclose(np.asarray(got), dense_attention(*inputs), atol=2e-5, rtol=2e-5)
    assert interp.races is not None and not interp.races.races_found


def test_block_sizes_are_validated():
    with pytest.raises(ValueError, match="block_kv"):
        BlockSizes(block_kv=0)
    with pytest.raises(ValueError, match="edge_block_kv"):
        BlockSizes(block_kv=64, edge_block_kv=128)
    with pytest.raises(ValueError, match="num_splits"):
        BlockSizes(num_splits=-1)
    with pytest.raises(ValueError, match="backend"):
        BlockSizes.default("npu", 1, 64)
    assert hash(BlockSizes()) == hash(BlockSizes())  # a static argument
    with pytest.raises(ValueError, match="block_sizes must be None or a BlockSizes"):
        AttnImpl("xla", block_sizes=(16, 64))


def test_tpu_tiling_checker():
    check_tpu_block("k", (512, 128), (4096, 128), jnp.float32)
    check_tpu_block("k", (37, 64), (37, 64), jnp.float32)            # whole dims are always legal
    check_tpu_block("k", (24, 64), (4096, 64), jnp.float32)          # 8 sublanes for 4-byte types
    with pytest.raises(ValueError, match="multiple of 16"):
        check_tpu_block("k", (24, 64), (4096, 64), jnp.bfloat16)     # 16 for 2-byte types
    with pytest.raises(ValueError, match="multiple of 8"):
        check_tpu_block("k", (100, 128), (4096, 128), jnp.float32)
    with pytest.raises(ValueError, match="multiple of 128"):
        check_tpu_block("k", (512, 64), (4096, 256), jnp.float32)
    check_gpu_block("block_kv", 64)
    for bad in (8, 48):
        with pytest.raises(ValueError, match="power of two"):
            check_gpu_block("block_kv", bad)


@pytest.mark.parametrize("impl,block_sizes,word", [
    ("pallas_tpu", BlockSizes(block_q=16, block_kv=100, edge_block_kv=16), "multiple of 8"),
    ("pallas_gpu", BlockSizes(block_q=16, block_kv=48, edge_block_kv=16), "power of two"),
    ("pallas_gpu", BlockSizes(block_q=12, block_kv=64, edge_block_kv=16), "power of two"),
])
def test_bad_block_sizes_fail_in_interpret_mode_as_on_hardware(impl, block_sizes, word):
    q, k_new, v_new, k_cache, v_cache, lengths, mask = _inputs(CASES[5], seed=0)
    with pytest.raises(ValueError, match=word):
        tree_attention(q, k_new, v_new, k_cache.transpose(0, 2, 1, 3), v_cache.transpose(0, 2, 1, 3), lengths, mask,
                       impl=impl, interpret=True, block_sizes=block_sizes)


def test_backend_selection():
    assert resolve_impl("auto", backend="cpu") == "xla"
    assert resolve_impl("auto", backend="gpu") == "pallas_gpu"
    assert resolve_impl("auto", backend="tpu") == "pallas_tpu"
    assert resolve_impl("pallas_tpu", interpret=True, backend="cpu") == "pallas_tpu"
    for impl, backend in (("pallas_tpu", "cpu"), ("pallas_tpu", "gpu"), ("pallas_gpu", "cpu"), ("pallas_gpu", "tpu")):
        with pytest.raises(ValueError, match="interpret=True"):
            resolve_impl(impl, backend=backend)
    with pytest.raises(ValueError, match="unknown"):
        resolve_impl("cuda-magic", backend="cpu")
    with pytest.raises(ValueError, match="interpret applies"):
        resolve_impl("xla", interpret=True, backend="cpu")


KERNEL_LLAMA = ModelConfig(arch="llama", vocab_size=97, hidden_size=64, num_layers=2, num_heads=6, num_kv_heads=2,
                           head_dim=16, intermediate_size=96, max_position=512)


@pytest.fixture(scope="module")
def kernel_models():
    target = Model.random(KERNEL_LLAMA, seed=0, scale=3.0)
    small = Model.random(dataclasses.replace(KERNEL_LLAMA, num_layers=1), seed=1, scale=3.0)
    return target, small


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="runs the kernels interpreted on CPU")
def test_a_kernel_the_backend_cannot_run_is_a_clear_error(kernel_models):
    target, _ = kernel_models
    for impl in KERNELS:
        with pytest.raises(ValueError, match="attn_impl.*interpret=True"):
            spectax.decode(target, [[1, 2, 3]], 4, attn_impl=impl)
    with pytest.raises(ValueError, match="attn_impl"):
        spectax.decode(target, [[1, 2, 3]], 4, attn_impl=42)


@pytest.mark.parametrize("impl", KERNELS)
def test_decoding_with_each_kernel_equals_xla(kernel_models, impl):
    """Plain, draft-model tree and heads decoding, batch 2 ragged, greedy: the interpreted kernel gives the XLA
    path's tokens (prefill chunks, verification trees and the plain step all go through the kernel)."""
    target, small = kernel_models
    prompts = [[5, 9, 14, 3, 7, 22, 41, 8, 2], [11, 4]]
    kernel = AttnImpl(impl, interpret=True, block_sizes=BlockSizes(block_q=16, block_kv=16, edge_block_kv=16))
    drafters = [None, DraftModel(small, tree=DraftTree.kary((2, 2))),
                Heads.create(target, kind="medusa", num_heads=2, tree=DraftTree.kary((2, 1)), seed=3)]
    for drafter in drafters:
        want = spectax.decode(target, prompts, 12, drafter=drafter, attn_impl="xla")
        got = spectax.decode(target, prompts, 12, drafter=drafter, attn_impl=kernel)
        np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
        np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(want.lengths))


@pytest.mark.parametrize("impl", KERNELS)
def test_decoding_a_prompt_of_several_prefill_chunks_with_each_kernel(kernel_models, impl, monkeypatch):
    """Prompts of 29 and 12 tokens prefilled 8 at a time through the kernel (4 chunks at bucket 32, for the target
    and for the draft model; the shorter row ends in chunk 1, its later chunks are padding), then draft-model tree
    decoding, greedy: the tokens of the XLA path, which prefills in one chunk."""
    target, small = kernel_models
    rng = np.random.default_rng(4)
    prompts = [rng.integers(0, KERNEL_LLAMA.vocab_size, n).tolist() for n in (29, 12)]
    drafter = DraftModel(small, tree=DraftTree.kary((2, 2)))
    want = spectax.decode(target, prompts, 6, drafter=drafter, attn_impl="xla")
    chunks_seen, prefill = [], Model.prefill

    def counted_prefill(self, prompt_BP, prompt_len_B, kv, chunk, *args, **kwargs):
        chunks_seen.append(prompt_BP.shape[1] // min(chunk, prompt_BP.shape[1]))
        return prefill(self, prompt_BP, prompt_len_B, kv, chunk, *args, **kwargs)
    monkeypatch.setattr(Model, "prefill", counted_prefill)
    monkeypatch.setattr(api, "LoopSpec", functools.partial(LoopSpec, prefill_chunk=8))
    kernel = AttnImpl(impl, interpret=True, block_sizes=BlockSizes(block_q=16, block_kv=16, edge_block_kv=16))
    got = spectax.decode(target, prompts, 6, drafter=drafter, attn_impl=kernel)
    assert chunks_seen == [4, 4]             # the target's prefill and the draft model's
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(want.lengths))


@pytest.mark.parametrize("impl", KERNELS)
def test_bf16_model_and_cache_end_to_end(kernel_models, impl):
    """The whole model and its KV cache in bf16 (the GPU / TPU dtype) through each kernel: the cache is bf16, the
    tokens are valid, and they match the bf16 XLA path's."""
    target, _ = kernel_models
    bf16 = Model.create(target.config, jax.tree_util.tree_map(np.asarray, target.params), dtype=jnp.bfloat16)
    assert bf16.create_cache(1, 8).k[0].dtype == jnp.bfloat16
    prompts = [[5, 9, 14, 3], [11, 4, 6]]
    want = spectax.decode(bf16, prompts, 10, attn_impl="xla")
    got = spectax.decode(bf16, prompts, 10, attn_impl=AttnImpl(impl, interpret=True))
    tokens = np.asarray(got.tokens)
    assert ((tokens >= 0) & (tokens < KERNEL_LLAMA.vocab_size)).all()
    np.testing.assert_array_equal(tokens, np.asarray(want.tokens))


def test_reference_rejects_interpret():
    with pytest.raises(ValueError, match="interpret"):
        tree_attention_reference(*_inputs(CASES[0], seed=0), interpret=True)  # rejected before any shape is read


@pytest.mark.parametrize("impl,backend", [pytest.param("pallas_gpu", "gpu", marks=pytest.mark.gpu),
                                          pytest.param("pallas_tpu", "tpu", marks=pytest.mark.tpu)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[1]}-G{c[2] // c[3]}-D{c[4]}-{c[7]}-{c[8]}")
def test_kernel_compiled_on_hardware(impl, backend, case):
    if jax.default_backend() != backend:
        pytest.skip(f"needs a {backend.upper()}")
    inputs = _inputs(case, seed=case[1] * 7 + case[5])
    got = np.asarray(_run(impl, case, inputs, interpret=False).astype(jnp.float32))
    tol = 5e-3 if case[8] == "float32" else 2e-2   # TF32 (GPU) / default MXU precision (TPU) fp32 products
    np.testing.assert_allclose(got, dense_attention(*inputs), atol=tol, rtol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
def test_auto_decoding_on_gpu_equals_xla(kernel_models):
    target, small = kernel_models
    prompts = [[5, 9, 14, 3, 7, 22, 41, 8, 2], [11, 4]]
    for drafter in (None, DraftModel(small, tree=DraftTree.kary((2, 2)))):
        want = spectax.decode(target, prompts, 12, drafter=drafter, attn_impl="xla")
        got = spectax.decode(target, prompts, 12, drafter=drafter, attn_impl="auto")
        np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
