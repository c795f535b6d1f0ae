"""What the benchmarks share: the model and prompt set, a timer, the decode loop from a prefilled state, JSON output."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # the repository root: recipes' Spec-Bench setting
from recipes import spec_bench  # noqa: E402
from spectax.api import bucket, prepare_prompt, row_keys  # noqa: E402
from spectax.bench.report import machine  # noqa: E402,F401  (re-exported: where a measurement ran)
from spectax.loop import Loop  # noqa: E402
from spectax.models import Model  # noqa: E402
from spectax.sampling import make_sampling  # noqa: E402
from spectax.step_types import LoopSpec  # noqa: E402

SPEC_BENCH = spec_bench.question_file()
MODEL = "smollm2-135m-instruct"


def spec_bench_prompts(path: Path) -> list[dict]:
    """The Spec-Bench questions (question_id, category, turns)."""
    if not path.is_file():
        raise SystemExit(f"Spec-Bench prompts not found at {path} (pass --spec-bench)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def timed(fn) -> tuple[float, object]:
    """(seconds, result) of one call, waiting for the device."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t, out


class LoopProgram:
    """The decode loop (spectax.loop.Loop.run, the while_loop decode() runs) for one drafter and prompt batch, from a
    prefilled state built once; calling it runs the loop and returns the final DecodeState.

    Prompts are right-padded to `prompt_bucket`; `cache_scale` multiplies the KV cache allocation; `temperature`
    0 is greedy (sampling: rng seed 0, no top-k / top-p). `model`: a Model or an Ensemble."""

    def __init__(self, model: Model, drafter, prompts: list[list[int]], new: int, prompt_bucket: int,
                 cache_scale: int = 1, temperature: float = 0.0):
        sampler, self.sp = make_sampling(temperature, 0, 1.0)
        self.spec = LoopSpec(sampler=sampler, out_size=bucket(new), vocab_size=model.config.vocab_size)
        tokens, lengths = prepare_prompt(prompts, None, model.config.vocab_size)
        prompt = np.zeros((len(prompts), prompt_bucket), np.int32)
        prompt[:, :tokens.shape[1]] = tokens
        self.model, self.drafter, self.new = model, drafter, new
        size = cache_scale * (prompt_bucket + bucket(new) + drafter.tree.num_nodes + 1)
        self.state = _start(model, drafter, prompt, lengths, np.int32(new), self.sp, spec=self.spec, size=size)

    def __call__(self):
        return _loop(self.model, self.drafter, self.state, np.int32(self.new), self.sp, spec=self.spec)


def _loop_of(model, drafter, new, sp, spec) -> Loop:
    return Loop(model=model, drafter=drafter, spec=spec, sampling=sp, max_new=new,
                eos_ids=jnp.full((1,), -1, jnp.int32))


@jax.jit(static_argnames=("spec", "size"))
def _start(model, drafter, prompt, lengths, new, sp, *, spec, size):
    cache = model.create_cache(prompt.shape[0], size)
    return _loop_of(model, drafter, new, sp, spec).prefill(prompt, lengths, row_keys(0, prompt.shape[0]), cache)


@jax.jit(static_argnames=("spec",))
def _loop(model, drafter, state, new, sp, *, spec):
    return _loop_of(model, drafter, new, sp, spec).run(state)


def write_result(path: Path, result: dict) -> None:
    """Writes the JSON atomically (a temp file renamed into place) and prints it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    print(json.dumps(result, indent=1))
