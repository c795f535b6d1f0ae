"""Drafters fill the nodes of a static DraftTree each step. `None` (no drafter) is the zero-node `NoDraft`."""

from spectax.drafters.base import Draft, NoDraft
from spectax.drafters.draft_model import DraftModel

__all__ = ["Draft", "DraftModel", "NoDraft"]
