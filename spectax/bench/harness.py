"""The measurement: every method interleaved with plain decoding, prompt batch by prompt batch, in one process.

Each method decodes through spectax's own programs (the `Decoder`'s prefill, its loop run to the end, its result:
the three programs `decode_stream` uses, here with one chunk), so the prefill and the decode loop are timed apart,
every result blocked on before a clock stops. A batch is padded as decode() pads it (to the power of two that holds
its longest prompt); a method's programs for a width are compiled ahead of its first batch of that width (the compile
time and count measured through JAX's events, XLA's memory analysis of each program kept) and warmed up once; every
batch is timed `repeats` times (median). Under greedy decoding each method's tokens are compared with
its reference's (plain decoding of the same target) for every batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spectax.api import Decoder, advance_program, bucket, result_program, start_program
from spectax.bench.methods import Method
from spectax.compilation import watch_compiles
from spectax.drafters import NoDraft
from spectax.sampling import Sampling

UNTIL_THE_END = 2 ** 30          # advance_program's call limit: more target calls than any decode makes


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: its Spec-Bench category and question id, and its token ids (chat template applied)."""

    category: str
    question_id: int | str
    ids: tuple[int, ...]


@dataclasses.dataclass
class BatchRecord:
    """One method on one prompt batch: seconds (median of the repeats), counters summed over the rows."""

    categories: list[str]
    prefill_seconds: float
    decode_seconds: float
    total_seconds: float          # prefill + decode loop + the result program
    tokens: int                   # new tokens in the output (the prefill's first one included)
    target_calls: int             # loop steps summed over the rows (DecodeStats.row_calls)
    loop_tokens: int              # tokens the loop steps committed (DecodeStats.new_tokens)
    accepted_hist: list[int]      # [D + 1] speculating steps by accepted draft tokens
    same_as_reference: bool | None
    rows: list[list[int]]         # each row's output tokens (not in the JSON: the reference comparison reads them)


@dataclasses.dataclass
class MethodRecord:
    """Everything measured for one method in one run."""

    method: Method
    compile_seconds: float = 0.0
    compiles: int = 0
    program_memory_bytes: int = 0
    batches: list[BatchRecord] = dataclasses.field(default_factory=list)


class Programs:
    """One method's three compiled programs for a batch shape (compile seconds and count, XLA's memory estimate),
    and a timed run of them."""

    def __init__(self, decoder: Decoder, example_args: tuple):
        self.decoder = decoder
        self.pad = jnp.int32(decoder.pad_id)
        with watch_compiles() as compiles:
            start = start_program.lower(decoder, *example_args).compile()
            state = jax.eval_shape(lambda *a: start_program(decoder, *a), *example_args)
            model, drafter, _, _, _, params, max_new, end_ids = example_args
            loop_args = (model, drafter, state, params, max_new, end_ids, jnp.int32(UNTIL_THE_END))
            advance = advance_program.lower(decoder, *loop_args).compile()
            result = result_program.lower(decoder, state, self.pad).compile()
        self.compile_seconds, self.compiles = compiles.seconds, compiles.programs
        self.memory_bytes = max(_program_bytes(p) for p in (start, advance, result))

    def run(self, args: tuple) -> tuple[float, float, float, object]:
        """(prefill s, decode s, total s, DecodeResult) of one decode of `args`, each phase blocked on."""
        model, drafter, _, _, _, params, max_new, end_ids = args
        t0 = time.perf_counter()
        state = jax.block_until_ready(start_program(self.decoder, *args))
        t1 = time.perf_counter()
        state = jax.block_until_ready(advance_program(self.decoder, model, drafter, state, params, max_new, end_ids,
                                                      jnp.int32(UNTIL_THE_END)))
        t2 = time.perf_counter()
        out = jax.block_until_ready(result_program(self.decoder, state, self.pad))
        return t1 - t0, t2 - t1, time.perf_counter() - t0, out


def _program_bytes(compiled) -> int:
    """XLA's estimate of a compiled program's peak memory: arguments + outputs + temporaries - aliased buffers."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _batches(prompts: Sequence[Prompt], batch: int) -> list[list[Prompt]]:
    """Whole batches (every batch of a width shares its programs): the last one wraps around to the first prompts."""
    prompts = list(prompts)
    if len(prompts) % batch:
        prompts += (prompts * batch)[:batch - len(prompts) % batch]
    return [prompts[i:i + batch] for i in range(0, len(prompts), batch)]


def measure(methods: dict[str, Method], prompts: Sequence[Prompt], *, batch: int, new_tokens: int,
            prompt_bucket: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
            eos_ids: Sequence[int] = (), repeats: int = 1,
            progress: Callable[[int], None] | None = None) -> dict[str, MethodRecord]:
    """Times every method of `methods` on `prompts` (each truncated to its last `prompt_bucket` tokens, padded as
    decode() pads them: to the power of two that holds the batch's longest, one compile per such width) in batches
    of `batch` (sampling: `temperature`, `top_k`, `top_p`, row seeds from `seed`), interleaved batch by batch in the
    dict's order; a method whose `reference` is not in `methods` gets it added (plain decoding of its target).
    `progress(n)` is called after each batch with its number of prompts not yet measured (the wrapped-around ones
    are not counted twice). Returns {name: MethodRecord}."""
    methods = dict(methods)
    for m in list(methods.values()):
        if m.reference not in methods:
            methods = {m.reference: Method(m.reference, m.target, NoDraft(), reference=m.reference, max_depth=0),
                       **methods}
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    greedy = temperature == 0
    programs: dict[tuple[str, int], Programs] = {}
    records = {name: MethodRecord(m) for name, m in methods.items()}
    left = len(prompts)
    for group in _batches(prompts, batch):
        ids = [p.ids[-prompt_bucket:] for p in group]
        width = min(bucket(max(map(len, ids))), prompt_bucket)   # as decode() pads: a power of two
        prompt_BP = np.zeros((batch, width), np.int32)
        lengths = np.array([len(x) for x in ids], np.int32)
        for b, x in enumerate(ids):
            prompt_BP[b, :len(x)] = x
        outputs = {}
        for name, m in methods.items():
            if (name, width) not in programs:
                dec = Decoder(m.target, m.drafter, max_new_tokens=new_tokens, max_prompt_len=width,
                              sampling=sampling, eos_id=list(eos_ids) or None)
                args = dec.program_args(m.target, prompt_BP, lengths, seed, None, None, dec.max_new_tokens,
                                         dec.eos_ids)
                programs[name, width] = prog = Programs(dec, args)
                records[name].compile_seconds += prog.compile_seconds
                records[name].compiles += prog.compiles
                records[name].program_memory_bytes = max(records[name].program_memory_bytes, prog.memory_bytes)
                prog.run(args)                               # warm-up: the first call after a compile is slow
            prog = programs[name, width]
            args = prog.decoder.program_args(m.target, prompt_BP, lengths, seed, None, None,
                                              prog.decoder.max_new_tokens, prog.decoder.eos_ids)
            runs = [prog.run(args) for _ in range(repeats)]
            out = runs[-1][3]
            outputs[name] = out
            ref = outputs.get(m.reference) if name != m.reference else None
            same = None
            if greedy and ref is not None:
                same = bool(np.array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
                            and np.array_equal(np.asarray(out.lengths), np.asarray(ref.lengths)))
            st = out.stats
            records[name].batches.append(BatchRecord(
                categories=[p.category for p in group],
                prefill_seconds=float(np.median([r[0] for r in runs])),
                decode_seconds=float(np.median([r[1] for r in runs])),
                total_seconds=float(np.median([r[2] for r in runs])),
                tokens=int(np.asarray(out.lengths).sum()), target_calls=int(np.asarray(st.row_calls).sum()),
                loop_tokens=int(np.asarray(st.new_tokens).sum()),
                accepted_hist=np.asarray(st.accepted_hist).sum(0).astype(int).tolist(), same_as_reference=same,
                rows=[np.asarray(t)[:n].tolist() for t, n in zip(out.tokens, np.asarray(out.lengths))]))
        if progress is not None:
            progress(min(len(group), left))
        left -= len(group)
    return records
