"""The report's two Dice summaries, named so nobody compares the wrong one with the paper."""

from __future__ import annotations

import math

import pandas as pd

from medlossy.experiments.segmentation import (
    MEAN_OVER_CASES,
    MEAN_OVER_CLASSES,
    mean_by,
    summarise_dice,
)


def _rows(cases: dict[str, dict[str, float]], ratio: float) -> list[dict]:
    rows = []
    for case, values in cases.items():
        present = [v for v in values.values() if not math.isnan(v)]
        for name, value in {**values, "mean": sum(present) / len(present)}.items():
            rows.append({"experiment": "train", "dataset": "D", "case": case, "class": name,
                         "ratio_train": ratio, "metric": "dice", "value": value})
    return rows


def test_mean_over_classes_and_mean_over_cases_differ_where_a_class_is_absent() -> None:
    # Case a has no spleen (NaN): per case, its mean is the liver's 1.0.
    results = pd.DataFrame(_rows({"a": {"liver": 1.0, "spleen": math.nan},
                                  "b": {"liver": 0.5, "spleen": 0.0}}, 1.0)
                           + _rows({"a": {"liver": 0.9, "spleen": math.nan},
                                    "b": {"liver": 0.5, "spleen": 0.2}}, 20.0))
    table = summarise_dice(results, "train").set_index("class")
    assert table.loc["liver", "x1"] == 0.75 and table.loc["spleen", "x1"] == 0.0
    assert table.loc[MEAN_OVER_CLASSES, "x1"] == 0.375  # (0.75 + 0.0) / 2
    assert table.loc[MEAN_OVER_CASES, "x1"] == 0.625  # (1.0 + 0.25) / 2
    assert table.loc[MEAN_OVER_CLASSES, "x20"] == round((0.7 + 0.2) / 2, 3)
    assert table.loc[MEAN_OVER_CASES, "x20"] == round((0.9 + 0.35) / 2, 3)
    assert "mean" not in table.index


def test_mean_by_counts_each_test_case_once_across_seeds_and_skips_nan() -> None:
    rows = [{"experiment": "budget:few-shot", "dataset": "D", "case": case, "class": "mean",
             "metric": "dice", "value": value, "budget_fraction": 0.2, "train_seed": seed}
            for case, value in (("a", 0.6), ("b", 0.8), ("c", math.nan))
            for seed in (0, 1, 2)]

    table = mean_by(pd.DataFrame(rows), "budget", "budget_fraction").iloc[0]

    assert table["cases"] == 2
    assert table["mean_dice"] == 0.7
