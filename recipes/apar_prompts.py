"""Structured prompts for APAR (issue 24): questions whose answers are numbered lists of "Title: details" items
(tips, steps, comparisons, reasons), the shape APAR's rule 1 forks.

Two files from disjoint topics: `data/prompts/apar_train.jsonl` (the target answers them, `spectax.train.distill
generate`, and those answers train the adapter) and `data/prompts/apar_bench.jsonl` (48 held-out prompts for
`benchmarks/apar.py`). Prompts sharing an 8-word sequence with a Spec-Bench turn are dropped.

    python -m recipes.apar_prompts
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

from recipes.build_prompts import SPEC_BENCH, overlaps_spec_bench
from spectax.train.prompt_files import write_prompts

TEMPLATES = (
    "Give {n} tips for {topic}. Number them, and start each with a short title followed by a colon.",
    "What are {n} common mistakes in {topic}? Answer as a numbered list; each item is 'Title: explanation'.",
    "Explain {topic} in {n} numbered points. Begin each point with a two- or three-word title and a colon.",
    "Write a short guide to {topic} in {n} numbered steps, each step a title, a colon and one or two sentences.",
    "List {n} reasons why {topic} matters, numbered, each as a short title, a colon and a sentence of detail.",
    "Compare the main approaches to {topic} in {n} numbered items, each naming the approach before a colon.",
)

TOPICS = (
    "saving money on groceries", "learning a new language", "keeping houseplants alive", "writing a cover letter",
    "running a first marathon", "organizing a small kitchen", "studying for exams", "taking better photos with a phone",
    "planning a road trip", "starting a vegetable garden", "giving a short speech", "sleeping better",
    "working from home", "reducing screen time", "making friends in a new city", "baking bread at home",
    "training a puppy", "keeping a journal", "staying safe while hiking", "decluttering a closet",
    "preparing for a job interview", "cooking for one person", "learning to swim as an adult", "caring for a cat",
    "riding a bicycle in traffic", "writing clear emails", "planning a birthday party", "choosing a used car",
    "keeping a budget", "reading more books", "painting a room", "moving to a new apartment",
    "brewing good coffee", "camping with children", "learning the guitar", "staying focused while studying",
    "hosting a board game night", "writing a short story", "volunteering in a community", "recycling at home",
    "buying a laptop", "saving energy at home", "packing light for travel", "learning to cook rice",
    "running a book club", "drawing with pencils", "caring for leather shoes", "building a birdhouse",
    "teaching a child to read", "starting to meditate", "making a weekly meal plan", "cleaning a bathroom quickly",
    "protecting online accounts", "writing a resume", "stretching after exercise", "visiting a museum with kids",
    "keeping bees", "making candles", "learning chess", "growing tomatoes on a balcony",
)

BENCH_TOPICS = (
    "restoring an old wooden chair", "learning to juggle", "planning a picnic", "keeping fish in an aquarium",
    "writing thank-you notes", "preparing for a long flight", "starting a podcast", "caring for a sourdough starter",
    "organizing family photos", "learning to knit", "choosing running shoes", "hosting a dinner for eight",
    "teaching a dog to fetch", "repairing a flat bicycle tyre", "keeping a small boat clean", "writing a toast",
)


def structured_prompts(topics, counts=(3, 4, 5), seed: int = 0) -> list[dict]:
    """Every (template, topic, count) prompt, shuffled deterministically, as {"category": "structured", "text"}."""
    texts = [t.format(n=n, topic=topic) for t, topic, n in itertools.product(TEMPLATES, topics, counts)]
    random.Random(seed).shuffle(texts)
    return [{"category": "structured", "text": text} for text in texts]


def build(spec_bench_path=SPEC_BENCH) -> tuple[list[dict], list[dict]]:
    """(training prompts, the 48 benchmark prompts): disjoint topics, no 8-word sequence shared with Spec-Bench."""
    if set(TOPICS) & set(BENCH_TOPICS):
        raise ValueError("the training and benchmark topics overlap")
    train = structured_prompts(TOPICS)
    bench = structured_prompts(BENCH_TOPICS, counts=(4,))[:48]
    clean = lambda prompts: [p for p in prompts if p not in overlaps_spec_bench(prompts, spec_bench_path)]  # noqa
    return clean(train), clean(bench)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/prompts")
    parser.add_argument("--spec-bench", default=str(SPEC_BENCH), help="Spec-Bench question.jsonl to keep out")
    args = parser.parse_args(argv)
    if not Path(args.spec_bench).exists():
        raise SystemExit(f"{args.spec_bench} not found: it is needed to keep benchmark text out of the prompts")
    train, bench = build(args.spec_bench)
    write_prompts(train, Path(args.out) / "apar_train.jsonl")
    write_prompts(bench, Path(args.out) / "apar_bench.jsonl")
    print(f"wrote {len(train)} training and {len(bench)} benchmark prompts to {args.out}")


if __name__ == "__main__":
    main()
