"""What the paper lacks: paired differences with t-intervals, non-inferiority, safe ratio.

For each ratio R and each class (and the per-case mean over classes, class "mean"), the
Dice of the model trained and tested at R is paired with the ratio-1 model's Dice on the
same case (same fold), the difference's mean gets a 95% t-interval, and R is non-inferior
for that class when the interval's lower bound is above -margin. A class's safe ratio is the
largest R such that R and every smaller ratio are non-inferior for it; the dataset's is the
smallest over its classes (a drop in a small organ hides in the per-case mean), or the
mean's alone when asked. No safe ratio is named from a test of fewer than ``min_cases``
cases.

Repeats (``seeds`` and ``train_folds`` in the config) enter through :func:`repeat_interval`:
each case's difference is averaged over the seeds, and the interval's variance adds to the
case-sampling term (the t-interval's) a training-noise term from the spread of the per-model
mean differences between seeds. That second term is what a case-only interval misses: a
model that is luckier or unluckier than usual shifts every case it predicts at once.

Why a t-interval: the percentile bootstrap declared non-inferiority wrongly 10 / 6 / 4% of
the time at 4 / 8 / 20 cases (nominal 2.5%), BCa the same; the t-interval holds 2.5% for
symmetric differences (measured: docs/study.md, ``bench/intervals.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

#: Per-case differences more left-skewed than this make the interval liberal (measured: a
#: gamma shape of skewness -1.4 gave 5.7-7.7% false non-inferiority at 4-20 cases).
SKEW_WARNING = -1.0

#: The default fewest test cases behind a named safe ratio.
MIN_TEST_CASES = 10

#: The per-case mean over classes in the results (``medlossy.evaluate``'s name).
MEAN = "mean"

TEST_COLUMNS = ["dataset", "class", "ratio", "cases", "seeds", "mean_difference", "ci_low",
                "ci_high", "seed_sd", "skewness", "non_inferior"]


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


def repeat_interval(differences: np.ndarray, folds: np.ndarray, level: float = 0.95,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lower, upper, between-seed sd) of the mean paired difference, from
    ``differences`` of shape (..., seeds, cases) (NaN: missing) and each case's fold.

    Model: difference = mean + model effect (one per fold and seed) + case effect + noise.
    Variance of the mean = var(case means over seeds) / cases (case sampling, the
    t-interval's) + sum over folds of (cases in fold / cases)^2 x var(per-seed mean of the
    fold) / seeds (training noise). The second term also holds the case-level seed noise
    already in the first, so the sum errs on the conservative side; degrees of freedom by
    Welch-Satterthwaite. With one seed it is the t-interval. Leading dimensions are
    independent studies (the simulation test runs thousands at once).
    """
    differences = np.asarray(differences, dtype=float)
    folds = np.asarray(folds)
    seeds, cases = differences.shape[-2:]
    per_case = np.nanmean(differences, axis=-2)
    mean = per_case.mean(axis=-1)
    case_term = per_case.var(axis=-1, ddof=1) / cases
    if seeds < 2:
        quantile = stats.t.ppf(1 - (1 - level) / 2, cases - 1)
        half = quantile * np.sqrt(case_term)
        return mean, mean - half, mean + half, np.full_like(mean, np.nan)
    repeat_term = np.zeros_like(mean)
    pooled = np.zeros_like(mean)
    for fold in np.unique(folds):
        in_fold = folds == fold
        model_means = np.nanmean(differences[..., in_fold], axis=-1)  # (..., seeds)
        spread = np.var(model_means, axis=-1, ddof=1)
        repeat_term = repeat_term + (in_fold.sum() / cases) ** 2 * spread / seeds
        pooled = pooled + spread
    repeat_df = len(np.unique(folds)) * (seeds - 1)
    variance = case_term + repeat_term
    with np.errstate(divide="ignore", invalid="ignore"):
        df = variance ** 2 / (case_term ** 2 / (cases - 1) + repeat_term ** 2 / repeat_df)
    df = np.where(np.isfinite(df), df, cases - 1)
    half = stats.t.ppf(1 - (1 - level) / 2, df) * np.sqrt(variance)
    return mean, mean - half, mean + half, np.sqrt(pooled / len(np.unique(folds)))


def difference_interval(paired: pd.DataFrame, level: float = 0.95) -> dict[str, float]:
    """cases, seeds, mean_difference, ci_low, ci_high, seed_sd of one set of paired
    differences (columns case, fold, train_seed, difference), by :func:`repeat_interval`,
    and the skewness of the per-case differences (below ``SKEW_WARNING`` the interval errs
    above nominal: a few cases fail badly)."""
    # groupby, not pivot_table(dropna=False): that would pair every case with every fold
    grid = paired.groupby(["case", "fold", "train_seed"])["difference"].mean().unstack(
        "train_seed")
    cases = len(grid)
    if cases < 2:
        mean, low, high, spread = (float(np.nanmean(grid.to_numpy())) if cases else np.nan,
                                   np.nan, np.nan, np.nan)
    else:
        folds = grid.index.get_level_values("fold").to_numpy()
        mean, low, high, spread = (float(v) for v in repeat_interval(grid.to_numpy().T,
                                                                     folds, level))
    per_case = np.nanmean(grid.to_numpy(), axis=1) if cases else np.array([])
    skew = float(stats.skew(per_case)) if cases >= 3 and np.ptp(per_case) > 0 else np.nan
    return {"cases": cases, "seeds": grid.shape[1], "mean_difference": mean, "ci_low": low,
            "ci_high": high, "seed_sd": spread, "skewness": skew}


def compare_budget_arms(results: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per dataset and budget fraction: mean Dice of each arm and the paired difference
    compressed - few-shot over the same test cases (and seeds), its interval, and which arm
    the interval shows better ("no difference shown" when it holds 0: no tie rule)."""
    rows = results[results["experiment"].str.startswith("budget:")
                   & (results["metric"] == "dice") & (results["class"] == MEAN)]
    if rows.empty:
        return pd.DataFrame()
    if "train_seed" not in rows:
        rows = rows.assign(train_seed=0)
    arms = rows.assign(arm=rows["experiment"].str.split(":").str[1]).pivot_table(
        index=["dataset", "budget_fraction", "case", "fold", "train_seed"], columns="arm",
        values="value", aggfunc="mean").reset_index()
    arms["difference"] = arms["compressed"] - arms["few-shot"]
    arms = arms[np.isfinite(arms["difference"])]
    table = []
    for (dataset, fraction), group in arms.groupby(["dataset", "budget_fraction"]):
        interval = difference_interval(group, level)
        low, high = interval["ci_low"], interval["ci_high"]
        verdict = ("compressed better" if low > 0 else "few-shot better" if high < 0
                   else "no difference shown")
        table.append({"dataset": dataset, "budget_fraction": fraction,
                      "few_shot_dice": group["few-shot"].mean(),
                      "compressed_dice": group["compressed"].mean(), **interval,
                      "verdict": verdict})
    return pd.DataFrame(table)


def paired_differences(results: pd.DataFrame, reference_ratio: float = 1.0) -> pd.DataFrame:
    """Per case, class and seed: Dice(model R on R) - Dice(model 1 on 1) (same fold and
    seed), from the train-on-compressed rows; only pairs with a finite Dice at both."""
    rows = results[(results["experiment"] == "train") & (results["metric"] == "dice")]
    if "train_seed" not in rows:
        rows = rows.assign(train_seed=0)
    keys = ["dataset", "class", "case", "fold", "train_seed"]
    values = rows.set_index([*keys, "ratio_train"])["value"].astype(float)
    reference = rows[rows["ratio_train"] == reference_ratio].set_index(keys)["value"]
    paired = values.rename("dice").reset_index("ratio_train").join(
        reference.astype(float).rename("reference"), how="inner")
    paired["difference"] = paired["dice"] - paired["reference"]
    paired = paired[np.isfinite(paired["difference"])].rename(columns={"ratio_train": "ratio"})
    return paired.reset_index()


def non_inferiority(results: pd.DataFrame, margin: float, *, level: float = 0.95,
                    ) -> pd.DataFrame:
    """One row per dataset, class and ratio: cases used, seeds, mean difference, interval
    (:func:`repeat_interval`; the t-interval for one seed), the between-seed sd of the mean
    difference, verdict; the per-case mean (class "mean") first in each dataset."""
    paired = paired_differences(results)
    if paired.empty:
        return pd.DataFrame(columns=TEST_COLUMNS)
    rows = []
    for (dataset, name, ratio), group in paired.groupby(["dataset", "class", "ratio"]):
        interval = difference_interval(group, level)
        low = interval["ci_low"]
        rows.append({"dataset": dataset, "class": name, "ratio": ratio, **interval,
                     "non_inferior": bool(low > -margin) if np.isfinite(low) else False})
    table = pd.DataFrame(rows)
    table["_order"] = table["class"] != MEAN
    return table.sort_values(["dataset", "_order", "class", "ratio"]).drop(
        columns="_order").reset_index(drop=True)


def _safe(group: pd.DataFrame) -> float:
    best = 1.0
    for row in group.sort_values("ratio").itertuples():
        if not row.non_inferior:
            break
        best = float(row.ratio)
    return best


@dataclass(frozen=True)
class SafeRatio:
    """A dataset's safe ratio (None: too few cases to name one), the class that limits it,
    and the classes left out of the verdict for having too few cases."""

    ratio: float | None
    limited_by: str | None = None
    too_few_cases: tuple[str, ...] = ()


def safe_ratios(tests: pd.DataFrame, min_cases: int = MIN_TEST_CASES, *,
                over_classes: bool = True) -> dict[str, SafeRatio]:
    """Per dataset: the smallest over classes of each class's safe ratio (the largest ratio
    with it and every smaller ratio non-inferior; 1 if none), or the mean's alone when
    ``over_classes`` is False. A class tested on fewer than ``min_cases`` cases is left out
    (and named); when that is the per-case mean, no safe ratio is named."""
    safe: dict[str, SafeRatio] = {}
    for dataset, group in tests.groupby("dataset"):
        if not over_classes:
            group = group[group["class"] == MEAN]
        by_class = {name: rows for name, rows in group.groupby("class")}
        too_few = tuple(sorted(n for n, rows in by_class.items()
                               if (rows["cases"] < min_cases).any()))
        if MEAN in too_few or not by_class:
            safe[dataset] = SafeRatio(None, None, too_few)
            continue
        ratios = {name: _safe(rows) for name, rows in by_class.items() if name not in too_few}
        lowest = min(ratios.values())
        if lowest >= group["ratio"].max():
            safe[dataset] = SafeRatio(lowest, None, too_few)
            continue
        # The class that fails worst at the first ratio above the safe one; the per-case
        # mean only where no single class fails there.
        failing = group[(group["ratio"] > lowest) & group["class"].isin(
            [n for n, r in ratios.items() if r == lowest])]
        failing = failing[failing["ratio"] == failing["ratio"].min()]
        classes = failing[failing["class"] != MEAN] if (failing["class"] != MEAN).any() \
            else failing
        limited_by = str(classes.sort_values("ci_low")["class"].iloc[0])
        safe[dataset] = SafeRatio(lowest, limited_by, too_few)
    return safe
