"""Offline text the prompt builder draws topics and passages from, beyond the Python standard library: the GCIDE
dictionary (Debian `dict-gcide`, Webster 1913 + WordNet; entries carry field labels such as "(Chem.)"), fortune
cookies (Debian `fortunes`, `fortunes-min`) and Debian's package list (one-line descriptions), plus short functions
of the standard library's own source. Every reader returns a tuple in a fixed order (deterministic for the installed
files) and an empty tuple where its files are absent, so the builder runs, with fewer sources, on any machine.

    apt-get install dict-gcide fortunes fortunes-min     # the sources the shipped prompt list was built with
"""

from __future__ import annotations

import functools
import gzip
import importlib
import inspect
import re
import subprocess
from pathlib import Path

GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
FORTUNES = Path("/usr/share/games/fortunes")
APT_LISTS = Path("/var/lib/apt/lists")

STEM_FIELDS = {"Chem": "chemistry", "Med": "medicine", "Anat": "anatomy", "Physiol": "physiology",
               "Math": "mathematics", "Astron": "astronomy", "Geol": "geology", "Elec": "electricity",
               "Mech": "mechanics", "Opt": "optics", "Biol": "biology", "Min": "mineralogy", "Geom": "geometry",
               "Meteor": "meteorology", "Crystallog": "crystallography", "Metal": "metallurgy", "Mach": "machinery",
               "Engin": "engineering", "Surg": "surgery", "Alg": "algebra", "Photog": "photography",
               "Agric": "agriculture", "Hort": "horticulture", "Paleon": "paleontology", "Bot": "botany",
               "Zool": "zoology", "Naut": "seamanship"}
HUMANITIES_FIELDS = {"Mus": "music", "Arch": "architecture", "Eccl": "church history", "Gram": "grammar",
                     "Rhet": "rhetoric", "Theol": "theology", "Metaph": "metaphysics", "Paint": "painting",
                     "Pros": "prosody", "Her": "heraldry", "Ethnol": "ethnology", "Mil": "military history",
                     "Print": "printing", "Law": "law", "Com": "commerce", "Fort": "fortification",
                     "Philos": "philosophy", "Myth": "mythology", "Logic": "logic", "Phon": "phonetics",
                     "Script": "biblical studies", "Geog": "geography", "Polit. Econ": "political economy"}
# fortune files with sayings, quips and short literature; the rest (offensive, ASCII art, chat logs) are left out
FORTUNE_FILES = ("cookie", "education", "food", "fortunes", "humorists", "law", "literature", "love", "medicine",
                 "miscellaneous", "paradoxum", "people", "pets", "platitudes", "science", "songs-poems", "sports",
                 "wisdom", "work", "computers", "goedel", "magic", "riddles")

_HEAD = re.compile(r'^([A-Z][a-z]+(?: [a-z]+)?) \\[^\\]*\\, (n|a|v\. t|v\. i|adv)\.')
_FIELD = re.compile(r"\(([A-Z][A-Za-z]*(?:\. [A-Z][a-z]+)?)\.\)")


@functools.cache
def gcide_entries() -> tuple[tuple[str, str, str, str], ...]:
    """(word, part of speech, field label or "", first definition) for GCIDE's single-sense-headed entries whose
    definition is plain prose of 6..60 words; archaic and obsolete senses are skipped."""
    if not GCIDE.exists():
        return ()
    with gzip.open(GCIDE, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    out = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        head = _HEAD.match(lines[0])
        if not head:
            continue
        body = " ".join(line.strip() for line in lines[1:] if line.strip() and not line.strip().startswith("["))
        field = _FIELD.search(lines[0]) or _FIELD.match(body)
        body = _FIELD.sub("", body).strip()
        definition = re.split(r"(?<=\.) (?:--|Syn:|\d+\. )", body)[0].strip()
        words = definition.split()
        if not 6 <= len(words) <= 60 or re.search(r"[{}\\]|\[Obs|\[R\.|\[Archaic|--[A-Z]", definition):
            continue
        out.append((head.group(1), head.group(2), field.group(1) if field else "", definition))
    return tuple(out)


def gcide_by_field(fields: dict[str, str]) -> tuple[tuple[str, str, str], ...]:
    """(word, field name, definition) for the GCIDE nouns labelled with one of `fields` (label -> name)."""
    return tuple((w, fields[f], d) for w, pos, f, d in gcide_entries() if pos == "n" and f in fields)


@functools.cache
def fortunes() -> tuple[str, ...]:
    """The fortunes of FORTUNE_FILES with 8..90 words of prose (attribution lines kept)."""
    out = []
    for name in FORTUNE_FILES:
        path = FORTUNES / name
        if not path.exists():
            continue
        for item in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = re.sub(r"[ \t]+", " ", item.strip())
            if 8 <= len(text.split()) <= 90 and not re.search(r"[<>|_]{2}|\b(Q|A):", text):
                out.append(text)
    return tuple(out)


@functools.cache
def debian_packages() -> tuple[tuple[str, str], ...]:
    """(package, one-line description) from apt's package lists (lz4-compressed or plain)."""
    out = []
    for path in sorted(APT_LISTS.glob("*_Packages*")):
        if path.suffix == ".lz4":
            data = subprocess.run(["lz4cat", str(path)], capture_output=True, text=True, check=False).stdout
        else:
            data = path.read_text(errors="replace")
        for stanza in data.split("\n\n"):
            name = re.search(r"^Package: (\S+)", stanza, re.M)
            desc = re.search(r"^Description: (.+)", stanza, re.M)
            if name and desc and len(desc.group(1).split()) >= 4:
                out.append((name.group(1), desc.group(1).strip()))
    return tuple(dict.fromkeys(out))


@functools.cache
def stdlib_functions(modules: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(qualified name, source) of the pure-Python functions of `modules` with 5..30 source lines, docstring and
    comments kept."""
    out = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
                continue
            try:
                source = inspect.getsource(obj)
            except (OSError, TypeError):
                continue
            if 5 <= source.count("\n") <= 30:
                out.append((f"{module_name}.{name}", source.rstrip()))
    return tuple(out)
