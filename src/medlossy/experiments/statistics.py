"""What the paper lacks: paired differences with bootstrap CIs, non-inferiority, safe ratio.

For each ratio R, the per-case mean Dice of the model trained and tested at R is paired with
the ratio-1 model's Dice on the same case (same fold), the difference's mean gets a percentile
bootstrap 95% CI, and R is non-inferior when the CI's lower bound is above -margin. The safe
ratio is the largest R such that R and every smaller ratio are non-inferior.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def bootstrap_mean_ci(values: np.ndarray, *, resamples: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper) of ``values``' mean by percentile bootstrap."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def paired_differences(results: pd.DataFrame, reference_ratio: float = 1.0) -> pd.DataFrame:
    """Per case: Dice(model R on R) - Dice(model 1 on 1), from the train-on-compressed rows."""
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
        paired.append(joined.reset_index())
    return pd.concat(paired, ignore_index=True) if paired else pd.DataFrame()


def non_inferiority(results: pd.DataFrame, margin: float, *, resamples: int = 2000,
                    seed: int = 0) -> pd.DataFrame:
    """One row per dataset and ratio: mean difference, 95% CI, cases, non-inferior."""
    paired = paired_differences(results)
    rows = []
    if paired.empty:
        return pd.DataFrame(columns=["dataset", "ratio", "cases", "mean_difference",
                                     "ci_low", "ci_high", "non_inferior"])
    for (dataset, ratio), group in paired.groupby(["dataset", "ratio"]):
        mean, low, high = bootstrap_mean_ci(group["difference"].to_numpy(),
                                            resamples=resamples, seed=seed)
        rows.append({"dataset": dataset, "ratio": ratio, "cases": len(group),
                     "mean_difference": mean, "ci_low": low, "ci_high": high,
                     "non_inferior": bool(low > -margin) if np.isfinite(low) else False})
    return pd.DataFrame(rows).sort_values(["dataset", "ratio"]).reset_index(drop=True)


def safe_ratios(tests: pd.DataFrame) -> dict[str, float]:
    """Largest ratio per dataset with it and every smaller ratio non-inferior (1 if none)."""
    safe = {}
    for dataset, group in tests.groupby("dataset"):
        best = 1.0
        for row in group.sort_values("ratio").itertuples():
            if not row.non_inferior:
                break
            best = float(row.ratio)
        safe[dataset] = best
    return safe
