"""The benchmark's prompts: Spec-Bench (a stratified sample, or all 480), held-out prompts for calibrating trees,
and the smoke run's fixed texts."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from spectax.bench.harness import Prompt

DEFAULT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "spec_bench"
HELD_OUT = Path(__file__).resolve().parents[1] / "train" / "data" / "prompts.jsonl"   # never Spec-Bench
SMOKE_TEXTS = ("the cat sat on the mat and the cat sat on the mat and the",
               "one two three four one two three four one two",
               "abc abc abc abd abc abc abc abd abc",
               "Write a poem about the sea. The sea, the sea, the")


def question_file() -> Path:
    """The Spec-Bench `question.jsonl`: under $SPECTAX_SPEC_BENCH if set, else `../shared/data/spec_bench` next to the
    repository holding this package."""
    return Path(os.environ.get("SPECTAX_SPEC_BENCH", DEFAULT_DIR)) / "question.jsonl"


def spec_bench(tok, path: Path | None = None, per_category: int | None = 1) -> list[Prompt]:
    """Spec-Bench first turns, chat-templated by `tok`: the first `per_category` questions of every category (None:
    all of them). ValueError when the file is missing."""
    path = question_file() if path is None else Path(path)
    if not path.is_file():
        raise ValueError(f"Spec-Bench prompts not found at {path} (pass --spec-bench FILE or set SPECTAX_SPEC_BENCH)")
    seen: dict[str, int] = defaultdict(int)
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        q = json.loads(line)
        if per_category is None or seen[q["category"]] < per_category:
            seen[q["category"]] += 1
            out.append(Prompt(q["category"], q["question_id"],
                              tuple(tok.encode_chat([{"role": "user", "content": q["turns"][0]}]))))
    return out


def held_out(tok, n: int) -> list[Prompt]:
    """The first n held-out prompts (the drafters' training prompts: never Spec-Bench), chat-templated."""
    rows = [json.loads(line) for line in HELD_OUT.read_text().splitlines()[:n]]
    return [Prompt("held-out", i, tuple(tok.encode_chat([{"role": "user", "content": r["text"]}])))
            for i, r in enumerate(rows)]


def smoke(tok) -> list[Prompt]:
    """The smoke run's prompts: short repetitive texts (so n-gram lookup finds matches), raw (no chat template)."""
    return [Prompt("smoke", i, tuple(tok.encode(t))) for i, t in enumerate(SMOKE_TEXTS)]
