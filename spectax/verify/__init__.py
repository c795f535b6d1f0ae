"""Verifiers: pick, per batch row, the accepted draft path and the bonus/correction token. Branch-free."""

from spectax.verify.greedy import verify_greedy
from spectax.verify.lossy import TopKMatch, Typical, verify_lossy
from spectax.verify.multi_draft import verify_multi_draft
from spectax.verify.speculative import verify_speculative
from spectax.verify.verdict import Verdict

__all__ = ["TopKMatch", "Typical", "Verdict", "verify_greedy", "verify_lossy", "verify_multi_draft",
           "verify_speculative"]
