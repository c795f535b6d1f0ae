"""spectax.programs: decode programs saved compiled and read back without tracing, keyed on everything they depend on."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectax
import spectax.api as api
from spectax import programs
from spectax.drafters import NGram
from spectax.tree import DraftTree

PROMPT = [[3, 14, 15, 92, 65], [35, 89, 79]]


@pytest.fixture
def counted(monkeypatch, fresh_trace):
    """Counts traces of the decode loop (api.run): a program read from the store is not traced."""
    traces, original = [], api.run
    monkeypatch.setattr(api, "run", lambda *a, **k: (traces.append(1), original(*a, **k))[1])
    return traces


def saved(directory):
    return sorted(directory.glob(f"*{programs.SUFFIX}"))


def test_a_saved_program_runs_without_tracing(tiny_llama, tmp_path, counted):
    programs.enable(tmp_path)
    first = spectax.decode(tiny_llama, PROMPT, 10)
    assert len(counted) == 1 and len(saved(tmp_path)) == 1
    (path,) = saved(tmp_path)
    os.utime(path, (1.0, 1.0))
    programs.enable(tmp_path)                 # a new process, as far as the store knows: nothing loaded yet
    api.decode_program.clear_cache()
    again = spectax.decode(tiny_llama, PROMPT, 10)
    assert len(counted) == 1                  # read from disk: not traced again
    assert path.stat().st_mtime > 1.0         # and marked as recently used
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(first.tokens))
    programs.disable()
    api.decode_program.clear_cache()
    plain = spectax.decode(tiny_llama, PROMPT, 10)
    assert len(counted) == 2                  # off: jax.jit as usual
    np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(first.tokens))


def test_what_the_program_depends_on_is_in_its_key(tiny_llama, tmp_path, counted, monkeypatch):
    """A new shape bucket, drafter, tree or source is a new program: compiled and saved beside the others."""
    programs.enable(tmp_path)
    spectax.decode(tiny_llama, PROMPT, 10)
    spectax.decode(tiny_llama, PROMPT, 20)                                       # output bucket 32, not 16
    spectax.decode(tiny_llama, PROMPT, 10, drafter=NGram(tree=DraftTree.chain(2)))
    spectax.decode(tiny_llama, PROMPT, 10, drafter=NGram(tree=DraftTree.chain(3)))
    spectax.decode(tiny_llama, PROMPT, 10, temperature=0.7)                       # a sampling program
    assert len(saved(tmp_path)) == 5 and len(counted) == 5
    monkeypatch.setattr(programs, "source_digest", lambda: "edited")             # spectax's code changed
    programs.enable(tmp_path)
    spectax.decode(tiny_llama, PROMPT, 10)
    assert len(saved(tmp_path)) == 6


def test_key_parts():
    """Every part of a call changes the key: the program, the static key, the tree, shapes, dtypes, weak types."""
    x = np.zeros((2, 3), np.int32)
    base = programs.key("p", ("static", 1), (x, {"a": x}))
    variants = [programs.key("q", ("static", 1), (x, {"a": x})),
                programs.key("p", ("static", 2), (x, {"a": x})),
                programs.key("p", ("static", 1), (x, {"b": x})),
                programs.key("p", ("static", 1), (x, {"a": x[:, :2]})),
                programs.key("p", ("static", 1), (x, {"a": x.astype(np.float32)})),
                programs.key("p", ("static", 1), (x, {"a": jnp.int32(0)})),
                programs.key("p", ("static", 1), (x, {"a": 0}))]                  # weak-typed int
    assert base == programs.key("p", ("static", 1), (x.copy(), {"a": x.copy()}))
    assert None not in variants and len(set(variants + [base])) == len(variants) + 1
    assert programs.key("p", lambda: 0, (x,)) is None                             # a static key that cannot pickle


def test_a_corrupt_file_is_compiled_again(tiny_llama, tmp_path, counted):
    programs.enable(tmp_path)
    first = spectax.decode(tiny_llama, PROMPT, 10)
    (path,) = saved(tmp_path)
    path.write_bytes(b"not a program")
    programs.enable(tmp_path)
    api.decode_program.clear_cache()
    again = spectax.decode(tiny_llama, PROMPT, 10)
    assert len(counted) == 2 and path.stat().st_size > 1000
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(first.tokens))


def test_traced_calls_and_streams(tiny_llama, tmp_path):
    """Inside a user's jit the Decoder's arguments are traced: no program is saved; decode_stream's three programs
    are saved and give decode()'s tokens."""
    programs.enable(tmp_path)
    dec = spectax.Decoder(tiny_llama, max_new_tokens=8, max_prompt_len=8)
    prompt_BP = jnp.zeros((2, 8), jnp.int32).at[:, :3].set(7)
    jax.jit(lambda m, p: dec(m, p, jnp.array([3, 2]), 0).tokens)(tiny_llama, prompt_BP)
    assert saved(tmp_path) == []
    chunks = list(spectax.decode_stream(tiny_llama, PROMPT, 10, steps=3))
    assert len(saved(tmp_path)) == 3                  # prefill, a chunk of the loop, the result
    whole = spectax.decode(tiny_llama, PROMPT, 10)
    np.testing.assert_array_equal(np.asarray(chunks[-1].tokens), np.asarray(whole.tokens))


def test_a_file_that_loads_but_does_not_run_is_compiled_again(tiny_llama, tmp_path, monkeypatch):
    """A saved executable can load and still fail when run (one JAX read from its own cache and saved again did, in
    jaxlib 0.10.2): the call falls back to compiling, and the file is written again."""
    programs.enable(tmp_path)
    first = spectax.decode(tiny_llama, PROMPT, 10)
    (path,) = saved(tmp_path)
    path.write_bytes(b"stale")

    def broken(*_):
        raise jax.errors.JaxRuntimeError("INTERNAL: Function fusion.2 not found")

    monkeypatch.setattr(programs, "_read", lambda p: broken)
    programs.enable(tmp_path)
    again = spectax.decode(tiny_llama, PROMPT, 10)
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(first.tokens))
    assert path.stat().st_size > 1000


def test_the_store_keeps_the_recently_used_within_its_size(tmp_path):
    import time

    for i, age in enumerate([30, 10, 20]):                      # written 30, 10 and 20 s ago, 100 bytes each
        path = tmp_path / f"p{i}{programs.SUFFIX}"
        path.write_bytes(b"x" * 100)
        os.utime(path, (time.time() - age, time.time() - age))
    (tmp_path / "other.txt").write_bytes(b"x" * 1000)            # not a program: never touched
    programs.prune(tmp_path, 250)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt", f"p1{programs.SUFFIX}",
                                                          f"p2{programs.SUFFIX}"]
    programs.prune(tmp_path, 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt", f"p1{programs.SUFFIX}"]

