"""Host-side checks of user values, shared by every layer (a leaf: imports nothing of spectax)."""

from __future__ import annotations

import numpy as np


def is_int(x) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_real(x) -> bool:
    """A Python or numpy real number (ints included), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))
