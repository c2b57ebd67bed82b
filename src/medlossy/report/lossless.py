"""Which requested ratios were stored losslessly, so tables and curves can say so.

Where lossless coding already beats a requested ratio (x2 on most CT), the sweep stores the
image losslessly: a flat line at x2 then means "no compression loss at all", not "x2 lossy
is safe". Ratio 1 is lossless by definition and not labelled.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd


def lossless_ratios(quality: pd.DataFrame) -> dict[float, str]:
    """Per requested ratio above 1 with any image stored without error: "lossless" (every
    image) or "lossless in k of n images"; from the sweep manifest's max_abs_error."""
    notes = {}
    for ratio, rows in quality[quality["ratio_target"] > 1].groupby("ratio_target"):
        exact = int((rows["max_abs_error"] == 0).sum())
        if exact == len(rows):
            notes[float(ratio)] = "lossless"
        elif exact:
            notes[float(ratio)] = f"lossless in {exact} of {len(rows)} images"
    return notes


def ratio_label(ratio: float, notes: Mapping[float, str], separator: str = " ") -> str:
    """``x2`` or ``x2 (lossless)``."""
    note = notes.get(float(ratio))
    return f"x{ratio:g}{separator}({note})" if note else f"x{ratio:g}"


def stored_column(ratios: pd.Series, notes: Mapping[float, str]) -> pd.Series:
    """How each row's ratio was stored: its note, or "lossy" (ratio 1: "lossless")."""
    return ratios.map(lambda r: "lossless" if r == 1 else notes.get(float(r), "lossy"))
