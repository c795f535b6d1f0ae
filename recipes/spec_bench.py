"""Where the Spec-Bench prompts (the benchmark workload, never training data) are: one setting for the recipes,
the benchmarks and the tests.

SPECTAX_SPEC_BENCH names the directory holding `question.jsonl`; by default it is `../shared/data/spec_bench`
relative to the repository root.
"""

import os
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spec_bench"


def question_file() -> Path:
    """The Spec-Bench `question.jsonl`: under $SPECTAX_SPEC_BENCH if set, else under DEFAULT_DIR."""
    return Path(os.environ.get("SPECTAX_SPEC_BENCH", DEFAULT_DIR)) / "question.jsonl"
