"""What the drafter trainers' commands (`spectax train heads`, `spectax train block`) share: their common flags and a
flag per config field, the train -> evaluate -> save flow, top-k hit counting, and the lines of a shipped
checkpoint's README that state where it was trained and how well it does."""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

DEFAULT_MODEL = "smollm2-135m-instruct"
DATA_NOTE = ("self-distillation: the target's greedy answers to the prompts of spectax/train/data/prompts.jsonl "
             "(not Spec-Bench)")


def training_parser(prog: str, description: str, data_help: str, what: str, config_type) -> argparse.ArgumentParser:
    """--data (one or more dirs), --model, --out, --ckpt-dir, --stop-at, --data-note, the compile-cache flags (shared
    with `spectax generate` / `bench`: --model's too), and a flag per field of the config dataclass `config_type`
    (--field-name, its default; a tuple field takes one or more values)."""
    from spectax.cli import add_model_flag, compile_flags

    ap = argparse.ArgumentParser(prog=prog, description=description, parents=[compile_flags()])
    ap.add_argument("--data", nargs="+", required=True, help=data_help)
    add_model_flag(ap, default=DEFAULT_MODEL)
    ap.add_argument("--out", required=True, help=f"where to save the trained {what}")
    ap.add_argument("--ckpt-dir", help="orbax training checkpoints (default: OUT.train)")
    ap.add_argument("--stop-at", type=int, help="end this call after that step (resume later)")
    ap.add_argument("--data-note", default=DATA_NOTE)
    for f in dataclasses.fields(config_type):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, tuple):
            ap.add_argument(flag, type=type(f.default[0]), nargs="+", default=list(f.default))
        else:
            ap.add_argument(flag, type=type(f.default), default=f.default)
    return ap


def config_from_args(config_type, args: argparse.Namespace):
    """The config dataclass from the flags of `training_parser` (the values of tuple fields as tuples)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_type)}
    return config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def parse_and_load(argv: Sequence[str] | None, prog: str, description: str, data_help: str, what: str, config_type):
    """(args, config, target model, the --data dirs as Paths) of a training command line (see `training_parser`)."""
    from spectax.cli import use_compile_cache
    from spectax.io.loader import load

    args = training_parser(prog, description, data_help, what, config_type).parse_args(argv)
    use_compile_cache(args)
    return args, config_from_args(config_type, args), load(args.model), [Path(d) for d in args.data]


def train_evaluate_save(prog: str, argv: Sequence[str] | None, args: argparse.Namespace, train: Callable,
                        evaluate: Callable, row_name: Callable[[int], str], write_readme: Callable) -> Path:
    """Runs train(ckpt_dir, stop_at) -> drafter (timed), prints evaluate(drafter) (float [rows, M]: top-m accuracy,
    one line per row, named by row_name), saves the drafter to --out and calls
    write_readme(path, command, seconds, accuracy) for its README. Returns where it was saved."""
    t0 = time.perf_counter()
    drafter = train(args.ckpt_dir or str(args.out).rstrip("/") + ".train", args.stop_at)
    seconds = time.perf_counter() - t0
    acc = evaluate(drafter)
    for i, row in enumerate(acc):
        print(f"{row_name(i)}: " + " ".join(f"top-{k + 1} {a:.3f}" for k, a in enumerate(row)))
    out = drafter.save(args.out, overwrite=True)
    command = f"{prog} " + shlex.join(sys.argv[1:] if argv is None else argv)
    write_readme(out / "README.md", command, seconds, acc)
    print(f"saved {out}")
    return out


def top_k_hits(cand: np.ndarray, labels: np.ndarray, valid: np.ndarray, axis) -> tuple[np.ndarray, np.ndarray]:
    """(hits [..., M], counts [...]) summed over `axis`: per slot, how many valid labels are among its first m
    candidates, m = 1..M, and how many labels are valid. cand: [..., M] best first; labels, valid: [...]."""
    first_hit = np.cumsum(cand == labels[..., None], axis=-1) > 0
    return (first_hit & valid[..., None]).sum(axis), valid.sum(axis)


def machine_note() -> str:
    """Where this process runs, for a README: processor, JAX backend, device count, JAX version."""
    return (f"{platform.processor() or platform.machine()} ({jax.default_backend()}, {jax.device_count()} device(s), "
            f"JAX {jax.__version__})")


def accuracy_table(first_column: str, row_names: Sequence[str], acc: np.ndarray) -> str:
    """A markdown table: one row per name, its top-1 .. top-M accuracies (acc: float [rows, M])."""
    header = f"| {first_column} | " + " | ".join(f"top-{k + 1}" for k in range(acc.shape[1])) + " |"
    rows = [f"| {name} | " + " | ".join(f"{a:.3f}" for a in row) + " |" for name, row in zip(row_names, acc)]
    return "\n".join([header, "|---" * (acc.shape[1] + 1) + "|", *rows])
