"""Verifiers: pick, per batch row, the accepted draft path and the bonus/correction token. Branch-free."""

from spectax.verify.verdict import Verdict
from spectax.verify.greedy import verify_greedy
from spectax.verify.sample_root import verify_sample_root

__all__ = ["Verdict", "verify_greedy", "verify_sample_root"]
