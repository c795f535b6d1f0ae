"""Which copies in a compiled program's HLO text copy a KV cache array (the checks that the loop never copies one)."""

import re

INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?(%[\w.\-]+)\s*=\s*(.*)$")
COPY_OPERAND = re.compile(r"\scopy\((%[\w.\-]+)\)")


def is_fill(definition: str) -> bool:
    """Whether an instruction materialises a broadcast constant (an empty cache's fill): a `broadcast(` or a loop
    fusion that wraps one (`calls=%wrapped_broadcast...`; how XLA:CPU names it depends on its fusion emitters)."""
    return bool(re.match(r"[\w\[\]{},.: ]*\bbroadcast\(", definition)) or "calls=%wrapped_broadcast" in definition


def cache_copies(hlo: str, shapes) -> list[str]:
    """The `copy` instructions of `hlo` that name one of `shapes` (e.g. "f32[2,2,613,12]"; a tuple result too), except
    copies of the empty cache's fill (materialised once per array before the loop: not a copy of a cache)."""
    definitions = {m.group(1): m.group(2) for m in map(INSTRUCTION.match, hlo.splitlines()) if m}
    copies = []
    for line in hlo.splitlines():
        operand = COPY_OPERAND.search(line)
        if operand and any(s in line for s in shapes) and not is_fill(definitions.get(operand.group(1), "")):
            copies.append(line.strip()[:160])
    return copies
