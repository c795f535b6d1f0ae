"""The native CPU product (cpu_kernels.matmul) against its pure-jnp reference, its dispatch, and decoding with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectax
from cpu_kernels import build
from cpu_kernels import matmul as mm
from pallas_kernels.tree_attention import AttnImpl

needs_kernel = pytest.mark.skipif(build.library() is None, reason="no C++ compiler here (the fallback is tested)")

SHAPES = [(576, 1536), (37, 53), (16, 16), (100, 17), (1, 5)]   # K, N: vector-width multiples and ragged edges


def _close(kernel_out, ref_out) -> bool:
    scale = max(1.0, float(np.abs(ref_out).max()))
    return kernel_out.shape == ref_out.shape and float(np.abs(kernel_out - ref_out).max()) <= 1e-5 * scale


@needs_kernel
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 64])
def test_kernel_equals_reference(T, transposed):
    rng = np.random.default_rng(T)
    for K, N in SHAPES:
        x = rng.standard_normal((T, K), np.float32)
        w = rng.standard_normal((N, K) if transposed else (K, N), np.float32)
        out = np.asarray(jax.jit(lambda x, w: mm.kernel(x, w, transposed))(x, w))
        assert _close(out, np.asarray(mm.reference(x, w, transposed))), (T, K, N)


@needs_kernel
def test_the_check_catches_an_off_by_one_edge():
    # a kernel that drops the last contraction element (an off-by-one tile edge) must fail the same check
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 37), np.float32), rng.standard_normal((37, 53), np.float32)
    broken = np.asarray(mm.kernel(jnp.asarray(x[:, :-1]), jnp.asarray(w[:-1])))
    assert not _close(broken, np.asarray(mm.reference(x, w)))


@needs_kernel
def test_leading_dims_vmap_and_the_xla_fallback_for_many_rows():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 40), np.float32)
    x = rng.standard_normal((3, 2, 64), np.float32)
    ref = np.asarray(mm.reference(x, w))
    assert _close(np.asarray(jax.jit(lambda x: mm.matmul(x, w))(x)), ref)           # 6 rows: the kernel
    assert _close(np.asarray(jax.vmap(lambda x: mm.matmul(x, w))(x)), ref)          # vmapped: rows batch up
    assert "spectax_skinny" in jax.jit(lambda x: mm.matmul(x, w)).lower(x).as_text()
    big = rng.standard_normal((40, 64), np.float32)                                   # > MAX_ROWS: XLA's GEMM
    assert "spectax_skinny" not in jax.jit(lambda x: mm.matmul(x, w)).lower(big).as_text()
    assert _close(np.asarray(mm.matmul(big, w)), np.asarray(mm.reference(big, w)))


@needs_kernel
def test_a_program_lowered_for_another_platform_holds_no_cpu_call():
    x, w = jnp.ones((2, 64)), jnp.ones((64, 40))
    text = jax.jit(lambda x: mm.matmul(x, w)).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert "spectax_skinny" not in text


@needs_kernel
@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt2"])
def test_decoding_with_the_kernel_products_gives_the_same_tokens(model_name, request):
    model = request.getfixturevalue(model_name)
    prompt = [[3, 14, 15, 92, 65], [35, 89, 79]]
    on = spectax.decode(model, prompt, 12, attn_impl=AttnImpl("xla", products="auto"))
    off = spectax.decode(model, prompt, 12, attn_impl="xla")
    np.testing.assert_array_equal(np.asarray(on.tokens), np.asarray(off.tokens))


@needs_kernel
@pytest.mark.parametrize("attn_impl", ["auto", "xla"])
def test_the_default_decode_uses_xla_products(attn_impl, tiny_llama):
    """The kernel is slower than XLA at one row (README, CPU kernels): an attn_impl name never opts into it."""
    from spectax.api import _attn_impl

    assert _attn_impl(attn_impl).products == "xla"
    dec = spectax.Decoder(tiny_llama, max_new_tokens=4, max_prompt_len=8, attn_impl=attn_impl)
    args = dec.program_args(tiny_llama, jnp.zeros((1, 8), jnp.int32), jnp.array([3]), 0, None, None, 4, dec.eos_ids)
    text = spectax.api.decode_program.lower(dec, *args, jnp.int32(0)).as_text()
    assert "spectax_skinny" not in text
    opted = spectax.Decoder(tiny_llama, max_new_tokens=4, max_prompt_len=8, attn_impl=AttnImpl("xla", products="auto"))
    assert "spectax_skinny" in spectax.api.decode_program.lower(opted, *args, jnp.int32(0)).as_text()


def test_disabled_kernels_fall_back_to_xla(monkeypatch, tiny_llama):
    monkeypatch.setattr(mm, "library", lambda: None)
    x, w = jnp.ones((2, 64)), jnp.ones((64, 40))
    assert "spectax_skinny" not in jax.jit(lambda x: mm.matmul(x, w)).lower(x).as_text()
    out = spectax.decode(tiny_llama, [[3, 14, 15]], 6, attn_impl=AttnImpl("xla", products="auto"))
    ref = spectax.decode(tiny_llama, [[3, 14, 15]], 6, attn_impl="xla")
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
