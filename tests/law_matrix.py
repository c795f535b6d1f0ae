"""The sampling settings every lossless drafter's law test covers, and which of them run today.

The matrix is temperature {0.5, 1, 1.5} x filter {none, top-k 3, top-p 0.8}: 9 settings. A default run gives each
drafter's law test 3 of them, a Latin square of the day: setting (t, f) runs on the days d with
(t + f + d + salt) % 3 == 0, where salt is fixed per drafter. Every temperature and every filter runs every day, and
any 3 consecutive days run all 9 pairs for every drafter. The other 6 are marked `heavy` (deselected by default).

    SPECTAX_LAW_MATRIX=all   runs all 9 settings of every drafter as unmarked tests
    SPECTAX_LAW_DAY=<int>    fixes the day (default: today's UTC date as a proleptic ordinal)
"""

import datetime
import os
import zlib

import pytest

TEMPERATURES = (0.5, 1.0, 1.5)
FILTERS = {"none": (0, 1.0), "top-k": (3, 1.0), "top-p": (0, 0.8)}


def today() -> int:
    """The day that picks the settings: SPECTAX_LAW_DAY, else today's UTC date as an ordinal."""
    if "SPECTAX_LAW_DAY" in os.environ:
        return int(os.environ["SPECTAX_LAW_DAY"])
    return datetime.datetime.now(datetime.timezone.utc).date().toordinal()


def runs_on(drafter: str, t: int, f: int, day: int) -> bool:
    """Whether setting (temperature index t, filter index f) of `drafter`'s law test runs by default on `day`."""
    return (t + f + day + zlib.crc32(drafter.encode())) % 3 == 0


def law_settings(drafter: str) -> list:
    """The 9 (temperature, top_k, top_p) settings as pytest params for `drafter`'s law test: today's 3 unmarked,
    the others marked heavy (all unmarked under SPECTAX_LAW_MATRIX=all)."""
    everything, day = os.environ.get("SPECTAX_LAW_MATRIX") == "all", today()
    params = []
    for t, temperature in enumerate(TEMPERATURES):
        for f, (name, (top_k, top_p)) in enumerate(FILTERS.items()):
            marks = () if everything or runs_on(drafter, t, f, day) else (pytest.mark.heavy,)
            params.append(pytest.param(temperature, top_k, top_p, marks=marks, id=f"T{temperature}-{name}"))
    return params
