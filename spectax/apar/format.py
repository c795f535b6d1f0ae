"""APAR training data: an ordinary answer restructured into a main stream that forks, and one child per fork.

Two rules, tried in order (after APAR, Liu et al. 2024, section 3.1); an answer neither fits stays one unstructured
sample, and so does an answer with code, formulas or a table (their lines depend on each other):
1. A numbered list of >= 3 items written "N. Title: details" (the title may be bold, "N. **Title**: details"): the
   main stream keeps each item's "N. Title:" followed by `[Fork]`; each item's details (>= 10 characters) become a
   child.
2. Otherwise >= 3 paragraphs (separated by blank lines): a paragraph of >= 2 sentences keeps its first sentence
   followed by `[Fork]` in the main stream, and the rest of the paragraph becomes a child; one-sentence paragraphs
   stay in the main stream whole.
Every cut is exact: putting each child's text back in place of its fork gives the answer again (`reassemble`).
"""

from __future__ import annotations

import re

FORK, CHILD = "[Fork]", "[Child]"
MIN_FORKS = 3
MIN_ITEM_DETAILS = 10        # characters of an item's details (rule 1)
MIN_PARAGRAPH_PIECE = 20     # characters of a kept first sentence and of its child (rule 2)

_UNSTRUCTURED = re.compile(r"```|\$\$|\\\(|\\\[|^\s*\|.*\|\s*$", re.MULTILINE)   # code, formulas, tables
_ITEM = re.compile(r"^[ \t]*\d{1,2}\.[ \t]+(?:\*\*[^*\n]{1,80}?\*\*[ \t]*:|\*\*[^*\n]{1,80}?:\*\*|[^:\n]{1,80}?:)",
                   re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])(?=\s+[A-Z\"'(])")
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|St|vs|etc|e\.g|i\.e|No|Fig|approx)\.$|\b[A-Z]\.$|\d\.$")


def _split(text: str, cuts: list[tuple[int, int]]) -> tuple[str, list[str]]:
    """The main stream (each cut [start, end) replaced by FORK) and the children (the cut texts)."""
    main, children, at = [], [], 0
    for start, end in cuts:
        main.append(text[at:start] + FORK)
        children.append(text[start:end])
        at = end
    main.append(text[at:])
    return "".join(main), children


def _list_cuts(text: str) -> list[tuple[int, int]] | None:
    """Rule 1: the details span of each item of the answer's one numbered list, or None."""
    items = list(_ITEM.finditer(text))
    if len(items) < MIN_FORKS:
        return None
    cuts = []
    for i, item in enumerate(items):
        if i + 1 < len(items):
            end = items[i + 1].start()
            if "\n\n" in text[item.end():end].strip("\n"):   # a paragraph between two items: not one list
                return None
        else:                              # the last item's details end at its paragraph's end
            blank = text.find("\n\n", item.end())
            end = len(text) if blank < 0 else blank
        details = text[item.end():end].rstrip()
        if len(details.strip()) < MIN_ITEM_DETAILS:
            return None
        cuts.append((item.end(), item.end() + len(details)))
    return cuts


def _paragraph_cuts(text: str) -> list[tuple[int, int]] | None:
    """Rule 2: in each paragraph of >= 2 sentences, the span after its first sentence; None for < 3 forks."""
    cuts, paragraphs = [], [m for m in re.finditer(r"[^\n](?:.|\n(?!\s*\n))*", text)]
    if len(paragraphs) < MIN_FORKS:
        return None
    for paragraph in paragraphs:
        body = paragraph.group().rstrip()
        ends = (m.start() for m in _SENTENCE_END.finditer(body) if not _ABBREVIATION.search(body[:m.start()]))
        first = next(ends, None)          # the first sentence's end ("Dr." or "e.g." is not one)
        if first is None or first < MIN_PARAGRAPH_PIECE or len(body[first:].strip()) < MIN_PARAGRAPH_PIECE:
            continue
        cuts.append((paragraph.start() + first, paragraph.start() + len(body)))
    return cuts if len(cuts) >= MIN_FORKS else None


def structure(text: str) -> tuple[str, list[str]] | None:
    """The answer as (main stream with FORKs, children in fork order), or None when it stays unstructured."""
    if FORK in text or CHILD in text or _UNSTRUCTURED.search(text):
        return None
    cuts = _list_cuts(text) or _paragraph_cuts(text)
    return None if cuts is None else _split(text, cuts)


def format_answer(text: str) -> list[str]:
    """The APAR training samples of one answer, control tokens spelled `[Fork]` / `[Child]`.

    A structured answer gives 1 + (number of forks) samples: the main stream, then for each fork k the main stream
    up to and including fork k, `[Child]`, and child k's text (train with the loss after the last `[Child]` only).
    An answer neither rule fits (or one with code, formulas, a table) gives [text] unchanged.

    Worked example (rule 1, a numbered list)::

        format_answer("Three tips:\\n1. Sleep: eight hours a night.\\n2. Food: eat vegetables daily.\\n"
                      "3. Sport: walk after every meal.\\nGood luck!")
        == ["Three tips:\\n1. Sleep:[Fork]\\n2. Food:[Fork]\\n3. Sport:[Fork]\\nGood luck!",       # the main stream
            "Three tips:\\n1. Sleep:[Fork][Child] eight hours a night.",                        # child 1
            "Three tips:\\n1. Sleep:[Fork]\\n2. Food:[Fork][Child] eat vegetables daily.",      # child 2
            "Three tips:\\n1. Sleep:[Fork]\\n2. Food:[Fork]\\n3. Sport:[Fork][Child] walk after every meal."]

    Each `[Fork]` goes right after an item's "N. Title:"; the item's details (the text up to the next item, or to
    the list's end) are its child. A child sees the prompt and its parent up to its fork (not the parent's later
    items, not its siblings); decoding puts each child's text back after its fork (`reassemble`).
    """
    if not isinstance(text, str):
        raise ValueError(f"format_answer takes the answer's text (a str), got {type(text).__name__}")
    structured = structure(text)
    if structured is None:
        return [text]
    main, children = structured
    pieces = main.split(FORK)
    return [main] + [FORK.join(pieces[:k + 1]) + FORK + CHILD + child for k, child in enumerate(children)]


def reassemble(main: str, children: list[str]) -> str:
    """The answer in document order: each child's text in place of its FORK in the main stream."""
    pieces = main.split(FORK)
    if len(pieces) != len(children) + 1:
        raise ValueError(f"the main stream has {len(pieces) - 1} forks for {len(children)} children")
    return "".join(piece + child for piece, child in zip(pieces, children)) + pieces[-1]
