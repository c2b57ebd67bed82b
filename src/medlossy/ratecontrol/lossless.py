"""Lossless mode: one encode at the codec's lossless setting, bit-exact (bound 0)."""

from __future__ import annotations

from medlossy.codecs import Setting
from medlossy.ratecontrol.base import Encodes, Found


def encode_lossless(encodes: Encodes) -> Found:
    """Codestreams that decode to exactly the codes."""
    return Found(Setting("lossless"), encodes(Setting("lossless")), True, 0.0)
