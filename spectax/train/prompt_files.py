"""The training prompt list on disk: one `{"category", "text"}` JSON object a line.

The list that ships with the package (`DEFAULT_OUT`, spectax/train/data/prompts.jsonl) is built offline by
`recipes/build_prompts.py`, which is not part of the installed package.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "prompts.jsonl"


def split_prompts(prompts: Sequence[dict], eval_fraction: float = 0.05) -> tuple[list[dict], list[dict]]:
    """(train, eval): the last `eval_fraction` of the (shuffled) prompt list is held out for evaluation."""
    n_eval = max(1, round(len(prompts) * eval_fraction))
    return list(prompts[:-n_eval]), list(prompts[-n_eval:])


def write_prompts(prompts: Sequence[dict], path) -> None:
    """Writes the prompts as JSON lines (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts)


def read_prompts(path=DEFAULT_OUT) -> list[dict]:
    """The prompts of a JSON-lines file (default: the list that ships with the package)."""
    with open(path) as f:
        return [json.loads(line) for line in f]
