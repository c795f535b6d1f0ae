"""The kernels lowered for real hardware on this CPU: both Pallas kernels, and the whole decode program with each,
lowered with `jax.export` for TPU (Mosaic) and CUDA (Triton). Lowering only, no compile and no device: a block or an
operation that Pallas' Mosaic or Triton lowering rejects fails here instead of on the first TPU or GPU run. What the
device's own compiler does afterwards (Mosaic's layout passes, Triton to PTX) is not checked."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import pallas_kernels.tree_attention.gpu as gpu_module
import pallas_kernels.tree_attention.tpu as tpu_module
from pallas_kernels.tree_attention import BlockSizes, target_backend
from spectax import Decoder, DraftTree
from spectax.drafters import DraftModel, Heads
from spectax.models import Model, ModelConfig

# impl -> (jax.export's platform, the backend attention choices resolve for, the custom call the kernel lowers to)
TARGETS = {"pallas_tpu": ("tpu", "tpu", "tpu_custom_call"), "pallas_gpu": ("cuda", "gpu", "__gpu$xla.gpu.triton")}
KERNELS = {"pallas_tpu": tpu_module.tree_attention_tpu, "pallas_gpu": gpu_module.tree_attention_gpu}
# jax.export serializes only custom calls with a compatibility guarantee: Mosaic's has one, the Triton call has none
# (a serialized GPU program is tied to the jaxlib that wrote it), so its check is switched off, for it alone
UNSTABLE_CALLS = {"pallas_tpu": [], "pallas_gpu": [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]}


def _export(impl, fn, *args) -> export.Exported:
    """`fn` (jitted) exported for `impl`'s hardware."""
    return export.export(fn, platforms=[TARGETS[impl][0]], disabled_checks=UNSTABLE_CALLS[impl])(*args)

# (B, T, H, K, hd, S, mask rank): T 1..256, GQA 1 / 3 / 8, head_dim 64 / 128, caches of no block's multiple, a [T, T]
# (rank 2) or per-row [B, T, T] (rank 3) mask; each in fp32 and bf16, at the backend's default block sizes
SHAPES = [
    (2, 1, 8, 1, 128, 1000, 2),
    (2, 3, 6, 2, 64, 777, 3),
    (1, 8, 4, 4, 128, 600, 2),
    (2, 64, 24, 8, 64, 1500, 3),
    (1, 128, 12, 4, 128, 333, 2),
    (1, 256, 8, 1, 64, 700, 3),
    (1, 256, 2, 2, 128, 301, 2),
]


def _lower_kernel(impl, shape, dtype, block_sizes=None) -> export.Exported:
    """The kernel `impl` at `shape` (a SHAPES row) and `dtype`, exported for its hardware."""
    B, T, H, K, hd, S, mask_rank = shape
    sds = jax.ShapeDtypeStruct
    q_BTHhd = sds((B, T, H, hd), dtype)
    new_BTGhd = sds((B, T, K, hd), dtype)
    cache_BGShd = sds((B, K, S, hd), dtype)
    mask = sds((T, T) if mask_rank == 2 else (B, T, T), jnp.bool_)
    kernel = jax.jit(functools.partial(KERNELS[impl], block_sizes=block_sizes))
    return _export(impl, kernel, q_BTHhd, new_BTGhd, new_BTGhd, cache_BGShd, cache_BGShd, sds((B,), jnp.int32), mask)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"T{s[1]}-G{s[2] // s[3]}-D{s[4]}-S{s[5]}-mask{s[6]}d")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", list(KERNELS))
def test_kernel_lowers_for_its_hardware(impl, dtype, shape):
    platform, _, call = TARGETS[impl]
    exported = _lower_kernel(impl, shape, dtype)
    assert exported.platforms == (platform,)
    assert exported.mlir_module().count(call) == 1


@pytest.mark.parametrize("impl,block_kv,checker,words", [
    ("pallas_tpu", 100, "check_tpu_block", "divisible by 8"),
    ("pallas_gpu", 48, "check_gpu_block", "power of 2"),
])
def test_a_block_the_hardware_rejects_fails_to_lower(impl, block_kv, checker, words, monkeypatch):
    """The lowering has teeth: with the kernel's own tiling check switched off, a cache block Mosaic (100 slots, not a
    multiple of 8) or Triton (48, not a power of two) cannot take fails in jax.export, as it would on the device."""
    monkeypatch.setattr(tpu_module if impl == "pallas_tpu" else gpu_module, checker, lambda *args: None)
    with pytest.raises(Exception, match=words):
        _lower_kernel(impl, SHAPES[1], "float32", BlockSizes(block_q=16, block_kv=block_kv, edge_block_kv=16))


LOWERING_LLAMA = ModelConfig(arch="llama", vocab_size=97, hidden_size=128, num_layers=2, num_heads=6, num_kv_heads=2,
                             head_dim=64, intermediate_size=192, max_position=1024)


@pytest.fixture(scope="module")
def lowering_models():
    target = Model.random(LOWERING_LLAMA, seed=0)
    small = Model.random(dataclasses.replace(LOWERING_LLAMA, num_layers=1), seed=1)
    return target, small


def _drafter(kind, target, small):
    return {"plain": None,
            "draft model tree": DraftModel(small, tree=DraftTree.kary((2, 2))),
            "medusa heads": Heads.create(target, kind="medusa", num_heads=2, tree=DraftTree.kary((2, 1)), seed=3),
            }[kind]


@pytest.mark.parametrize("kind", ["plain", "draft model tree", "medusa heads"])
@pytest.mark.parametrize("impl", list(KERNELS))
def test_decode_program_lowers_with_each_kernel(lowering_models, impl, kind):
    """The whole decode (prefill of 2 chunks of 256 tokens, the while_loop, its depth-cut switch) with the kernel
    selected, built and exported for the kernel's hardware: each attention of the program is a kernel call."""
    platform, backend, call = TARGETS[impl]
    target, small = lowering_models
    drafter = _drafter(kind, target, small)
    B, P = 2, 300
    with target_backend(backend):
        dec = Decoder(target, drafter, max_new_tokens=16, max_prompt_len=P, attn_impl=impl)
        program = jax.jit(lambda model, drafter, prompt_BP, prompt_len_B, seeds_B:
                          dec(model, prompt_BP, prompt_len_B, seeds_B, drafter))
        exported = _export(impl, program, target, drafter, np.zeros((B, P), np.int32), np.array([P, 7], np.int32),
                           np.arange(B, dtype=np.int32))
    assert exported.platforms == (platform,)
    text = exported.mlir_module()
    layers = LOWERING_LLAMA.num_layers
    assert text.count(call) >= 2 * layers        # at least the prefill's and one step's per layer
    assert "dot_general" in text and "while" in text
