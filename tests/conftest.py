"""Shared fixtures: tiny random models for fast CPU tests."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest  # noqa: E402

import spectax.api as api  # noqa: E402
from spectax.models import Model, ModelConfig  # noqa: E402

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


@pytest.fixture
def fresh_trace():
    """Clears decode()'s compiled programs before and after the test: a monkeypatched function is traced into a
    fresh program (whatever shapes earlier tests compiled), and no later test reuses that patched program."""
    program = api.decode_program   # the jitted program itself, even while a test has it monkeypatched
    program.clear_cache()
    yield
    program.clear_cache()
