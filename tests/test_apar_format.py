"""spectax.apar.format_answer on hand-written answers: where each [Fork] goes, what each child sample holds."""

import pytest

from spectax.apar import CHILD, FORK, format_answer, reassemble
from spectax.apar.format import structure

TIPS = ("Three tips:\n1. Sleep: eight hours a night.\n2. Food: eat vegetables daily.\n"
        "3. Sport: walk after every meal.\n\nGood luck!")


def test_a_numbered_list_forks_after_each_title():
    main, *children = format_answer(TIPS)
    assert main == "Three tips:\n1. Sleep:[Fork]\n2. Food:[Fork]\n3. Sport:[Fork]\n\nGood luck!"
    assert children == ["Three tips:\n1. Sleep:[Fork][Child] eight hours a night.",
                        "Three tips:\n1. Sleep:[Fork]\n2. Food:[Fork][Child] eat vegetables daily.",
                        "Three tips:\n1. Sleep:[Fork]\n2. Food:[Fork]\n3. Sport:[Fork][Child] walk after every meal."]


@pytest.mark.parametrize("title", ["**Sleep**:", "**Sleep:**"])
def test_bold_titles_and_blank_lines_between_items(title):
    text = (f"Tips:\n\n1. {title} eight hours a night, every night.\n\n2. **Food**: vegetables with every meal.\n\n"
            "3. **Sport**: a long walk after dinner.")
    main, children = structure(text)
    assert main == f"Tips:\n\n1. {title}[Fork]\n\n2. **Food**:[Fork]\n\n3. **Sport**:[Fork]"
    assert children == [" eight hours a night, every night.", " vegetables with every meal.",
                        " a long walk after dinner."]


def test_a_multi_line_item_keeps_its_lines_in_its_child():
    text = ("1. Plan: list the tasks,\n   then order them.\n2. Do: one task at a time.\n"
            "3. Review: what went well and what did not.")
    main, children = structure(text)
    assert children[0] == " list the tasks,\n   then order them." and main.count(FORK) == 3


PARAGRAPHS = ("Rivers shape valleys over millions of years. Water carries sand that grinds the rock below.\n\n"
              "Glaciers carve wider valleys than rivers do. Their ice drags boulders along the valley floor.\n\n"
              "A short closing paragraph stays whole.\n\n"
              "Dr. Smith studied both kinds of valley for years. She mapped hundreds of them in the Alps.")


def test_paragraphs_fork_after_their_first_sentence():
    main, children = structure(PARAGRAPHS)
    assert main == ("Rivers shape valleys over millions of years.[Fork]\n\n"
                    "Glaciers carve wider valleys than rivers do.[Fork]\n\n"
                    "A short closing paragraph stays whole.\n\n"
                    "Dr. Smith studied both kinds of valley for years.[Fork]")
    assert children == [" Water carries sand that grinds the rock below.",
                        " Their ice drags boulders along the valley floor.",
                        " She mapped hundreds of them in the Alps."]      # not cut after "Dr."


@pytest.mark.parametrize("text", [
    TIPS.replace("3. Sport: walk after every meal.\n", ""),                       # two items, one paragraph
    "1. A: short.\n2. B: also short.\n3. C: tiny.",                                # details under 10 characters
    "Intro.\n\n```python\nprint(1)\n```\n\n" + PARAGRAPHS,                          # code
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n" + PARAGRAPHS,                             # a table
    "Energy: $$E = mc^2$$ holds.\n\n" + PARAGRAPHS,                                 # a formula
    "One paragraph. With two sentences in it, nothing more to say about it.",
    PARAGRAPHS.replace(FORK, "") + " " + FORK,                                      # already holds a control token
])
def test_answers_that_stay_unstructured(text):
    assert format_answer(text) == [text]


@pytest.mark.parametrize("text", [TIPS, PARAGRAPHS, TIPS + "\n\n" + PARAGRAPHS])
def test_every_sample_is_a_prefix_of_the_main_stream_plus_its_child(text):
    main, *samples = format_answer(text)
    _, children = structure(text)
    assert reassemble(main, children) == text                     # the cuts lose nothing
    for k, (sample, child) in enumerate(zip(samples, children)):
        prefix, tail = sample.split(CHILD)
        assert tail == child and prefix.count(FORK) == k + 1 and main.startswith(prefix)
    assert CHILD not in main


def test_bad_input():
    with pytest.raises(ValueError, match="str"):
        format_answer(b"bytes")
    with pytest.raises(ValueError, match="2 forks for 1 children"):
        reassemble("a[Fork]b[Fork]c", ["x"])
