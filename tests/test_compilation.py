"""spectax.compilation: the persistent compile cache switch and the compile watcher."""

import jax
import jax.numpy as jnp
import pytest

from spectax.compilation import compile_cache_dir, enable_compile_cache, watch_compiles


def test_watch_compiles_sees_a_fresh_compile_and_not_a_cached_call():
    f = jax.jit(lambda x: jnp.sin(x) * 3 + 1)
    x = jnp.arange(7.0)
    with watch_compiles() as first:
        jax.block_until_ready(f(x))
    with watch_compiles() as again:
        jax.block_until_ready(f(x))
    assert first.programs >= 1 and first.seconds > 0
    assert again.programs == 0 and again.seconds == 0
    with watch_compiles() as after:
        pass
    jax.block_until_ready(f(jnp.arange(9.0)))     # a compile after the block is not counted
    assert after.programs == 0


@pytest.mark.parametrize("bad", [-1.0, "1", True, float("nan")])
def test_bad_min_compile_seconds(bad, tmp_path):
    with pytest.raises(ValueError, match="min_compile_seconds"):
        enable_compile_cache(tmp_path, min_compile_seconds=bad)


def test_a_file_is_not_a_cache_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    before = compile_cache_dir()
    with pytest.raises(ValueError, match="not a directory"):
        enable_compile_cache(tmp_path / "file")
    assert compile_cache_dir() == before       # nothing changed
