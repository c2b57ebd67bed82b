"""Lossless mode: one encode at the codec's lossless setting, bit-exact (bound 0)."""

from __future__ import annotations

from medlossy.codecs import Setting
from medlossy.ratecontrol.base import RATIO_TOLERANCE, Encodes, Found


def encode_lossless(encodes: Encodes) -> Found:
    """Codestreams that decode to exactly the codes."""
    return Found(Setting("lossless"), encodes(Setting("lossless")), True, 0.0)


def lossless_fits(lossless_bytes: int, budget: int) -> bool:
    """Whether a lossless output of ``lossless_bytes`` fits a ratio's byte ``budget``: then
    it is stored instead of a lossy one, being exact and within the budget (the ratio
    achieved is reported, above the one asked)."""
    return lossless_bytes <= budget * (1.0 + RATIO_TOLERANCE)
