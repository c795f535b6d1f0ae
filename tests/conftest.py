"""Shared fixtures: tiny random models for fast CPU tests; how the test processes compile.

XLA runs the tests with 8 host devices (the sharding tests' meshes), backend optimization level 0 and XLA:CPU's
classic (LLVM IR) fusion emitters in place of its MLIR ones. Most of the suite's time is XLA:CPU compiling small
decode programs: level 0 compiles them ~2.5x faster, and the classic emitters ~2x faster again (the MLIR emitters
set up a context per fusion, a fixed cost that dominates tiny models' programs; the 30-layer real model compiles
1.4-2x slower with the classic ones). Suite, measured back to back: 24:23 -> 18:25. The benchmarks and library users
keep XLA's defaults. Compiled programs go to a persistent cache under .pytest_cache/jax, shared by the xdist workers
and by the tests that clear decode()'s in-memory cache to trace a patched program afresh.
"""

import os
from pathlib import Path

TEST_XLA_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
                  "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + [
    flag for flag in TEST_XLA_FLAGS if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

import spectax.api as api  # noqa: E402
from spectax import programs  # noqa: E402
from spectax.models import Model, ModelConfig  # noqa: E402

jax.config.update("jax_compilation_cache_dir", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

TINY_LLAMA = ModelConfig(arch="llama", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, intermediate_size=64, max_position=1024)
TINY_GPT2 = ModelConfig(arch="gpt2", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=4,
                        head_dim=8, intermediate_size=128, max_position=256, tie_embeddings=True)


@pytest.fixture(scope="session")
def tiny_llama():
    # scale > 1 makes the logits peaked enough that greedy decoding has no near-ties
    return Model.random(TINY_LLAMA, seed=0, scale=3.0)


@pytest.fixture(scope="session")
def tiny_gpt2():
    return Model.random(TINY_GPT2, seed=1, scale=3.0)


@pytest.fixture(autouse=True)
def no_program_store():
    """The program store (spectax.programs) stays off between tests: an in-process CLI test turns it on, and a saved
    program would hide a later test's monkeypatched trace."""
    yield
    programs.disable()


@pytest.fixture
def fresh_trace():
    """Clears decode()'s compiled programs before and after the test: a monkeypatched function is traced into a
    fresh program (whatever shapes earlier tests compiled), and no later test reuses that patched program."""
    program = api.decode_program   # the jitted program itself, even while a test has it monkeypatched
    program.clear_cache()
    yield
    program.clear_cache()


# The modules that take longest (measured, `.ci/run --durations`): with `--dist loadfile` each module runs whole on one
# worker (its module fixtures built once), and starting these first keeps the two workers' loads even at the end.
HEAVY_FIRST = ("test_sharding.py", "test_smollm2.py", "test_cos.py", "test_block.py", "test_every_drafter.py",
               "test_speculative_sampling.py", "test_heads.py", "test_kernels.py", "test_rng.py")


def pytest_collection_modifyitems(config, items):
    """Runs the modules of HEAVY_FIRST first, in that order; the others after, in collection order."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
