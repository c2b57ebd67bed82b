"""What the paper lacks: paired differences with t-intervals, non-inferiority, safe ratio.

For each ratio R, the per-case mean Dice of the model trained and tested at R is paired with
the ratio-1 model's Dice on the same case (same fold), the difference's mean gets a 95%
t-interval, and R is non-inferior when the interval's lower bound is above -margin. The safe
ratio is the largest R such that R and every smaller ratio are non-inferior; none is named
when a test used fewer than ``min_cases`` cases.

Why a t-interval: the percentile bootstrap declared non-inferiority wrongly 10 / 6 / 4% of
the time at 4 / 8 / 20 cases (nominal 2.5%), BCa the same; the t-interval holds 2.5% for
symmetric differences (measured: docs/study.md, ``bench/intervals.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

#: The default fewest test cases behind a named safe ratio.
MIN_TEST_CASES = 10

TEST_COLUMNS = ["dataset", "ratio", "cases", "mean_difference", "ci_low", "ci_high",
                "non_inferior"]


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper): the two-sided t-interval of the mean of the finite ``values``;
    NaN bounds below two values."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.nan, np.nan, np.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, np.nan, np.nan
    half = stats.t.ppf(1 - (1 - level) / 2, values.size - 1) * values.std(ddof=1) \
        / np.sqrt(values.size)
    return mean, float(mean - half), float(mean + half)


def paired_differences(results: pd.DataFrame, reference_ratio: float = 1.0) -> pd.DataFrame:
    """Per case: Dice(model R on R) - Dice(model 1 on 1), from the train-on-compressed rows;
    only cases with a finite Dice at both ratios."""
    rows = results[(results["experiment"] == "train") & (results["metric"] == "dice")
                   & (results["class"] == "mean")]
    keys = ["dataset", "case", "fold"]
    reference = rows[rows["ratio_train"] == reference_ratio].set_index(keys)["value"]
    paired = []
    for ratio, group in rows.groupby("ratio_train"):
        joined = group.set_index(keys)["value"].to_frame("dice").join(
            reference.rename("reference"), how="inner")
        joined["difference"] = joined["dice"] - joined["reference"]
        joined["ratio"] = ratio
        paired.append(joined[np.isfinite(joined["difference"])].reset_index())
    return pd.concat(paired, ignore_index=True) if paired else pd.DataFrame()


def non_inferiority(results: pd.DataFrame, margin: float, *, level: float = 0.95,
                    ) -> pd.DataFrame:
    """One row per dataset and ratio: cases used, mean difference, t-interval, verdict."""
    paired = paired_differences(results)
    if paired.empty:
        return pd.DataFrame(columns=TEST_COLUMNS)
    rows = []
    for (dataset, ratio), group in paired.groupby(["dataset", "ratio"]):
        mean, low, high = t_interval(group["difference"].to_numpy(), level)
        rows.append({"dataset": dataset, "ratio": ratio, "cases": len(group),
                     "mean_difference": mean, "ci_low": low, "ci_high": high,
                     "non_inferior": bool(low > -margin) if np.isfinite(low) else False})
    return pd.DataFrame(rows).sort_values(["dataset", "ratio"]).reset_index(drop=True)


def safe_ratios(tests: pd.DataFrame, min_cases: int = MIN_TEST_CASES,
                ) -> dict[str, float | None]:
    """Largest ratio per dataset with it and every smaller ratio non-inferior (1 if none);
    None where a test used fewer than ``min_cases`` cases (too few to name one)."""
    safe: dict[str, float | None] = {}
    for dataset, group in tests.groupby("dataset"):
        if "cases" in group and (group["cases"] < min_cases).any():
            safe[dataset] = None
            continue
        best = 1.0
        for row in group.sort_values("ratio").itertuples():
            if not row.non_inferior:
                break
            best = float(row.ratio)
        safe[dataset] = best
    return safe
