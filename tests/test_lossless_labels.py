"""Ratios stored losslessly are named in tables and curves."""

from __future__ import annotations

import pandas as pd

from medlossy.report.lossless import lossless_ratios, ratio_label, stored_column


def _quality(errors: dict[float, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "D", "case": f"c{i}", "ratio_target": ratio,
                          "max_abs_error": error}
                         for ratio, values in errors.items() for i, error in enumerate(values)])


def test_a_ratio_is_lossless_only_where_every_image_is_exact() -> None:
    notes = lossless_ratios(_quality({1.0: [0, 0, 0], 2.0: [0, 0, 0], 5.0: [0, 3, 7],
                                      20.0: [12, 30, 9]}))

    assert notes == {2.0: "lossless", 5.0: "lossless in 1 of 3 images"}
    assert ratio_label(2, notes) == "x2 (lossless)" and ratio_label(20, notes) == "x20"
    assert list(stored_column(pd.Series([1.0, 2.0, 20.0]), notes)) == \
        ["lossless", "lossless", "lossy"]
