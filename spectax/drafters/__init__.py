"""Drafters fill the nodes of a static DraftTree each step. `None` (no drafter) is the zero-node `NoDraft`."""

from spectax.drafters.base import NoDraft
from spectax.drafters.block import Block
from spectax.drafters.combined import Combined
from spectax.drafters.cos import CoS
from spectax.drafters.draft_model import DraftModel
from spectax.drafters.heads import Heads
from spectax.drafters.ngram import NGram
from spectax.drafters.replay import Replay
from spectax.step_types import Draft, Drafter

__all__ = ["Block", "Combined", "CoS", "Draft", "DraftModel", "Drafter", "Heads", "NGram", "NoDraft", "Replay"]
