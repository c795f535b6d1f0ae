"""Where the Spec-Bench prompts (the benchmark workload, never training data) are: the recipes use the same setting as
`spectax bench` (spectax.bench.workload.question_file): $SPECTAX_SPEC_BENCH names the directory holding
`question.jsonl`; by default it is `../shared/data/spec_bench` relative to the repository root."""

from spectax.bench.workload import question_file

__all__ = ["question_file"]
