"""What the paper lacks: paired differences, three-way verdicts, a tail criterion, safe ratio.

For each ratio R and each class (and the per-case mean over classes, class "mean"), the
Dice of each model trained and tested at R is paired with the ratio-1 model's Dice on the
same case (same fold and seed). A class empty in a case's reference scores 1 at the ratio
whose model leaves it empty and 0 where a model predicts it (a false positive), so a false
positive counts as a failed case instead of vanishing as NaN; cases where no model predicts
it carry nothing and are left out (``empty_reference`` counts the pairs kept).

The replication unit is the trained model: every case of a fold is predicted by the same
(fold, seed) models, so a luckier or unluckier training shifts all of them at once. The
95% interval of the mean difference (:func:`model_interval`) is

- seeds >= 2: the case-sampling variance plus the between-seed variance of the per-model
  mean differences in each fold, Welch-Satterthwaite degrees of freedom (training noise
  estimated from folds x (seeds - 1) degrees of freedom);
- one seed, folds >= 2: a t-interval over the fold-level mean differences (each fold's
  model pair is an independent replicate), folds - 1 degrees of freedom; for equal folds
  this is the exact interval of the balanced random-effects model (mean + model effect +
  case effect), which a mixed-model fit would approximate with a z and too few groups;
- one model per ratio: training noise is not estimable; the case-only t-interval is widened
  by an assumed model-to-model sd (``assumed_model_sd``), never narrowed.

A ratio is **non-inferior** for a class when the interval's lower bound is above -margin and
the exact (Clopper-Pearson) upper bound of the share of cases that lose more than
``tail_drop`` Dice is below ``tail_limit``; **inferior** when the whole interval is below
-margin; **inconclusive** otherwise. The tail bound treats cases as independent, but a
model's shift moves all of its cases together, so it only ever withholds a non-inferior
verdict: a harmless ratio with noisy models is never called inferior on it. The
``detectable_margin`` is the smallest margin the study would show at 80% power were the
ratio truly harmless. A class's safe ratio is the largest R such that R and every smaller
ratio are non-inferior for it (a fixed sequence: no multiplicity correction needed); the
dataset's is the smallest over its classes, or the mean's alone when asked. An inconclusive
ratio stops the sequence but is reported as inconclusive, never as unsafe.

Measured by simulation (``bench/verdicts.py``, BENCHMARKS.md "Study verdicts").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

#: Per-case differences more left-skewed than this make the t-interval liberal; the tail
#: criterion is what guards a verdict there, the skewness is shown for reading.
SKEW_WARNING = -1.0

#: The default fewest test cases behind a named safe ratio.
MIN_TEST_CASES = 10

#: The per-case mean over classes in the results (``medlossy.evaluate``'s name).
MEAN = "mean"

#: A case "fails" at R when its Dice drops by more than this against x1.
TAIL_DROP = 0.05
#: Non-inferior needs the upper bound of the failing share below this: with 97.5%
#: confidence fewer than 1 case in 10 visibly worse. 0 failures of n bound the share at
#: 1 - 0.025^(1/n): at least 36 test cases are needed to pass.
TAIL_LIMIT = 0.1
#: Model-to-model sd of a mean Dice difference assumed when one model per ratio leaves it
#: unestimable: the top of the 0.005-0.02 range simulated, since the interval holds only
#: where the true sd is at most the assumed one (15.7% false non-inferiority at a true 0.02
#: with 0.01 assumed, 90 cases).
ASSUMED_MODEL_SD = 0.02
#: Power at which ``detectable_margin`` is computed.
POWER = 0.8

VERDICTS = ("non-inferior", "inconclusive", "inferior")
TEST_COLUMNS = ["dataset", "class", "ratio", "cases", "empty_reference", "models", "seeds",
                "mean_difference", "ci_low", "ci_high", "model_sd", "model_noise",
                "detectable_margin", "tail_share", "tail_upper", "skewness", "verdict"]


@dataclass(frozen=True)
class Criteria:
    """What a verdict asks: the margin on the mean difference, the interval's level, the
    tail criterion (share of cases losing more than ``tail_drop`` below ``tail_limit``) and
    the model sd assumed when one model per ratio cannot estimate it."""

    margin: float = 0.01
    level: float = 0.95
    tail_drop: float = TAIL_DROP
    tail_limit: float = TAIL_LIMIT
    assumed_model_sd: float = ASSUMED_MODEL_SD


@dataclass(frozen=True)
class Interval:
    """Mean difference, interval, standard error and degrees of freedom per study; the
    model-to-model sd behind it and how it was found ("seeds", "folds" or "assumed")."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    se: np.ndarray
    df: np.ndarray
    model_sd: np.ndarray
    noise: str


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


def _seed_variance(differences: np.ndarray, per_case: np.ndarray, folds: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Case sampling + between-seed spread of each fold's per-model means (training noise);
    the second term also holds case-level seed noise already in the first: conservative."""
    seeds, cases = differences.shape[-2:]
    labels = np.unique(folds)
    case_term = per_case.var(axis=-1, ddof=1) / cases
    repeat_term = np.zeros_like(case_term)
    pooled = np.zeros_like(case_term)
    for fold in labels:
        in_fold = folds == fold
        model_means = np.nanmean(differences[..., in_fold], axis=-1)  # (..., seeds)
        spread = np.var(model_means, axis=-1, ddof=1)
        repeat_term = repeat_term + (in_fold.sum() / cases) ** 2 * spread / seeds
        pooled = pooled + spread
    variance = case_term + repeat_term
    with np.errstate(divide="ignore", invalid="ignore"):
        df = variance ** 2 / (case_term ** 2 / (cases - 1)
                              + repeat_term ** 2 / (len(labels) * (seeds - 1)))
    return variance, np.where(np.isfinite(df), df, cases - 1), np.sqrt(pooled / len(labels))


def _fold_variance(per_case: np.ndarray, folds: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variance of the case-weighted mean of the fold-level means (one model pair per
    fold), folds - 1 degrees of freedom; for equal folds var(fold means) / folds."""
    labels = np.unique(folds)
    weights = np.array([np.mean(folds == f) for f in labels])
    fold_means = np.stack([per_case[..., folds == f].mean(axis=-1) for f in labels], axis=-1)
    mean = per_case.mean(axis=-1, keepdims=True)
    count = len(labels)
    variance = count / (count - 1) * np.sum(weights ** 2 * (fold_means - mean) ** 2, axis=-1)
    # the model sd shown: fold means' spread beyond what their cases' spread explains
    sizes = [int(np.sum(folds == f)) for f in labels]
    within = sum(per_case[..., folds == f].var(axis=-1, ddof=1) / size
                 for f, size in zip(labels, sizes, strict=True) if size >= 2) / count
    model_var = np.var(fold_means, axis=-1, ddof=1) - within
    return variance, np.full_like(variance, count - 1), np.sqrt(np.maximum(model_var, 0))


def _assumed_variance(per_case: np.ndarray, model_sd: float,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Case sampling plus an assumed model variance (known: infinite degrees of freedom)."""
    cases = per_case.shape[-1]
    case_term = per_case.var(axis=-1, ddof=1) / cases
    variance = case_term + model_sd ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(case_term > 0, variance ** 2 / (case_term ** 2 / (cases - 1)), np.inf)
    return variance, df, np.full_like(variance, model_sd)


def model_interval(differences: np.ndarray, folds: np.ndarray, level: float = 0.95,
                   assumed_model_sd: float = ASSUMED_MODEL_SD) -> Interval:
    """Interval of the mean paired difference from ``differences`` of shape (..., seeds,
    cases) (NaN: missing) and each case's fold, with trained models as the replication
    unit (the module docstring gives the three routes). Leading dimensions are independent
    studies (the simulations run thousands at once)."""
    differences = np.asarray(differences, dtype=float)
    folds = np.asarray(folds)
    per_case = np.nanmean(differences, axis=-2)
    if differences.shape[-2] >= 2:
        noise, (variance, df, model_sd) = "seeds", _seed_variance(differences, per_case,
                                                                    folds)
    elif len(np.unique(folds)) >= 2:
        noise, (variance, df, model_sd) = "folds", _fold_variance(per_case, folds)
    else:
        noise, (variance, df, model_sd) = "assumed", _assumed_variance(per_case,
                                                                       assumed_model_sd)
    mean = per_case.mean(axis=-1)
    se = np.sqrt(variance)
    half = stats.t.ppf(1 - (1 - level) / 2, df) * se
    return Interval(mean, mean - half, mean + half, se, df, model_sd, noise)


def tail_bounds(per_case: np.ndarray, drop: float, level: float = 0.95,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(share, lower, upper): the share of cases (last axis) whose difference is below
    ``-drop`` and its exact two-sided Clopper-Pearson interval at ``level``."""
    per_case = np.asarray(per_case, dtype=float)
    cases = per_case.shape[-1]
    failing = np.sum(per_case < -drop, axis=-1)
    alpha = 1 - level
    with np.errstate(invalid="ignore"):
        lower = np.where(failing > 0, stats.beta.ppf(alpha / 2, failing,
                                                     cases - failing + 1), 0.0)
        upper = np.where(failing < cases, stats.beta.ppf(1 - alpha / 2, failing + 1,
                                                         cases - failing), 1.0)
    return failing / cases, lower, upper


def tail_cases_needed(limit: float, level: float = 0.95) -> int:
    """Fewest cases whose exact upper bound for 0 failing is below ``limit``."""
    return int(np.floor(np.log((1 - level) / 2) / np.log(1 - limit))) + 1


def detectable_margin(se: np.ndarray, df: np.ndarray, level: float = 0.95,
                      power: float = POWER) -> np.ndarray:
    """The smallest margin shown at ``power`` when the true difference is 0."""
    return (stats.t.ppf(1 - (1 - level) / 2, df) + stats.t.ppf(power, df)) * se


def decide(differences: np.ndarray, folds: np.ndarray, criteria: Criteria,
           ) -> dict[str, np.ndarray | str]:
    """Interval, tail and verdict of paired ``differences`` (..., seeds, cases): the one
    decision the study and the simulations (``bench/verdicts.py``) make."""
    interval = model_interval(differences, folds, criteria.level, criteria.assumed_model_sd)
    per_case = np.nanmean(np.asarray(differences, dtype=float), axis=-2)
    share, _, tail_high = tail_bounds(per_case, criteria.tail_drop, criteria.level)
    margin = criteria.margin
    non_inferior = (interval.low > -margin) & (tail_high < criteria.tail_limit)
    inferior = interval.high < -margin
    verdict = np.where(non_inferior, VERDICTS[0], np.where(inferior, VERDICTS[2],
                                                           VERDICTS[1]))
    return {"mean_difference": interval.mean, "ci_low": interval.low,
            "ci_high": interval.high, "model_sd": interval.model_sd,
            "model_noise": interval.noise,
            "detectable_margin": detectable_margin(interval.se, interval.df, criteria.level),
            "tail_share": share, "tail_upper": tail_high, "verdict": verdict}


def _grid(paired: pd.DataFrame) -> pd.DataFrame:
    """Differences per (case, fold) row and seed column."""
    # groupby, not pivot_table(dropna=False): that would pair every case with every fold
    return paired.groupby(["case", "fold", "train_seed"])["difference"].mean().unstack(
        "train_seed")


def _skewness(grid: pd.DataFrame) -> float:
    per_case = np.nanmean(grid.to_numpy(), axis=1) if len(grid) else np.array([])
    return float(stats.skew(per_case)) if len(grid) >= 3 and np.ptp(per_case) > 0 \
        else np.nan


def difference_interval(paired: pd.DataFrame, level: float = 0.95,
                        assumed_model_sd: float = ASSUMED_MODEL_SD) -> dict[str, object]:
    """cases, seeds, models, mean_difference, ci_low, ci_high, model_sd, model_noise of one
    set of paired differences (columns case, fold, train_seed, difference), by
    :func:`model_interval`, and the skewness of the per-case differences."""
    grid = _grid(paired)
    row: dict[str, object] = {
        "cases": len(grid), "seeds": grid.shape[1],
        "models": len(paired[["fold", "train_seed"]].drop_duplicates()),
        "mean_difference": float(np.nanmean(grid.to_numpy())) if len(grid) else np.nan,
        "ci_low": np.nan, "ci_high": np.nan, "model_sd": np.nan, "model_noise": "",
        "skewness": _skewness(grid)}
    if len(grid) >= 2:
        folds = grid.index.get_level_values("fold").to_numpy()
        interval = model_interval(grid.to_numpy().T, folds, level, assumed_model_sd)
        row.update(mean_difference=float(interval.mean), ci_low=float(interval.low),
                   ci_high=float(interval.high), model_sd=float(interval.model_sd),
                   model_noise=interval.noise)
    return row


def compare_budget_arms(results: pd.DataFrame, level: float = 0.95,
                        assumed_model_sd: float = ASSUMED_MODEL_SD) -> pd.DataFrame:
    """Per dataset and budget fraction: mean Dice of each arm and the paired difference
    compressed - few-shot over the same test cases (and seeds), its interval, and which arm
    the interval shows better ("no difference shown" when it holds 0: no tie rule)."""
    rows = _mean_dice(results, results["experiment"].str.startswith("budget:"))
    if rows.empty:
        return pd.DataFrame()
    arms = rows.assign(arm=rows["experiment"].str.split(":").str[1]).pivot_table(
        index=["dataset", "budget_fraction", "case", "fold", "train_seed"], columns="arm",
        values="value", aggfunc="mean").reset_index()
    arms["difference"] = arms["compressed"] - arms["few-shot"]
    arms = arms[np.isfinite(arms["difference"])]
    table = []
    for (dataset, fraction), group in arms.groupby(["dataset", "budget_fraction"]):
        interval = difference_interval(group, level, assumed_model_sd)
        low, high = interval["ci_low"], interval["ci_high"]
        verdict = ("compressed better" if low > 0 else "few-shot better" if high < 0
                   else "no difference shown")
        table.append({"dataset": dataset, "budget_fraction": fraction,
                      "few_shot_dice": group["few-shot"].mean(),
                      "compressed_dice": group["compressed"].mean(), **interval,
                      "verdict": verdict})
    return pd.DataFrame(table)


def _mean_dice(results: pd.DataFrame, selected: pd.Series) -> pd.DataFrame:
    """The ``selected`` rows' per-case mean Dice, values numeric, a missing seed as 0."""
    rows = results[selected & (results["metric"] == "dice") & (results["class"] == MEAN)]
    return rows.assign(value=pd.to_numeric(rows["value"], errors="coerce"),
                       train_seed=pd.Series(rows.get("train_seed", 0), index=rows.index)
                       .fillna(0))


def _case_means(results: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Per-case mean Dice of ``experiment``'s rows, by dataset, test ratio, case, fold, seed."""
    rows = _mean_dice(results, results["experiment"] == experiment)
    return rows[["dataset", "ratio_train", "ratio_test", "case", "fold", "train_seed",
                 "value"]]


def compare_mixed(results: pd.DataFrame, level: float = 0.95,
                  assumed_model_sd: float = ASSUMED_MODEL_SD) -> pd.DataFrame:
    """Per dataset and test ratio: the mixed-ratio model's mean Dice against the x1 model's
    (the "pretrained" rows) and the model trained at that ratio (the "train" rows), each as
    the paired difference mixed - other over the same test cases, folds and seeds, with its
    interval (:func:`difference_interval`). NaN where the other model was not run."""
    mixed = _case_means(results, "mixed")
    if mixed.empty:
        return pd.DataFrame()
    keys = ["dataset", "ratio_test", "case", "fold", "train_seed"]
    # "pretrained" rows with ratio_train 1 are this study's x1 model (not a given checkpoint)
    others = {"x1_model": _case_means(results, "pretrained").query("ratio_train == 1"),
              "ratio_model": _case_means(results, "train").query("ratio_train == ratio_test")}
    table = []
    for (dataset, ratio), group in mixed.groupby(["dataset", "ratio_test"]):
        row: dict[str, object] = {"dataset": dataset, "ratio_test": ratio,
                                  "mixed_dice": group["value"].mean()}
        for name, other in others.items():
            paired = group.merge(other[[*keys, "value"]], on=keys, suffixes=("", "_other"))
            paired = paired.assign(difference=paired["value"] - paired["value_other"])
            paired = paired[np.isfinite(paired["difference"])]
            interval = difference_interval(paired, level, assumed_model_sd) if len(paired) \
                else {"mean_difference": np.nan, "ci_low": np.nan, "ci_high": np.nan}
            row[f"{name}_dice"] = paired["value_other"].mean() if len(paired) else np.nan
            row[f"minus_{name}"] = interval["mean_difference"]
            row[f"minus_{name}_low"] = interval["ci_low"]
            row[f"minus_{name}_high"] = interval["ci_high"]
        row["cases"] = group["case"].nunique()
        table.append(row)
    return pd.DataFrame(table)


def mean_intervals(results: pd.DataFrame, experiment: str, by: list[str], *,
                   level: float = 0.95, assumed_model_sd: float = ASSUMED_MODEL_SD,
                   ) -> pd.DataFrame:
    """Per dataset, experiment (those starting with ``experiment``) and ``by``: the mean of
    the per-case mean Dice and its interval by :func:`model_interval` (models as the
    replication unit; ``assumed_model_sd`` 0 for a fixed model such as a given checkpoint),
    with the cases it used."""
    rows = _mean_dice(results, results["experiment"].str.startswith(experiment))
    rows = rows.assign(difference=rows["value"])
    rows = rows[np.isfinite(rows["difference"])]
    if rows.empty:
        return pd.DataFrame(columns=["dataset", "experiment", *by, "ci_low", "ci_high"])
    # a given checkpoint has no fold or seed: one model
    rows = rows.assign(fold=rows["fold"].astype(str))
    table = []
    for keys, group in rows.groupby(["dataset", "experiment", *by]):
        interval = difference_interval(group, level, assumed_model_sd)
        table.append({**dict(zip(["dataset", "experiment", *by], keys, strict=True)),
                      "mean_dice": interval["mean_difference"], "ci_low": interval["ci_low"],
                      "ci_high": interval["ci_high"], "cases": interval["cases"],
                      "models": interval["models"]})
    return pd.DataFrame(table)


def paired_differences(results: pd.DataFrame, reference_ratio: float = 1.0) -> pd.DataFrame:
    """Per case, class and seed: Dice(model R on R) - Dice(model 1 on 1) (same fold and
    seed), from the train-on-compressed rows. Where exactly one side is NaN the class is
    empty in the reference and only the other model predicted it: that side scores 0 (as
    recorded), the NaN side 1, and ``empty_reference`` marks the pair. Both NaN: dropped."""
    rows = results[(results["experiment"] == "train") & (results["metric"] == "dice")]
    if "train_seed" not in rows:
        rows = rows.assign(train_seed=0)
    keys = ["dataset", "class", "case", "fold", "train_seed"]
    values = rows.set_index([*keys, "ratio_train"])["value"].astype(float)
    reference = rows[rows["ratio_train"] == reference_ratio].set_index(keys)["value"]
    paired = values.rename("dice").reset_index("ratio_train").join(
        reference.astype(float).rename("reference"), how="inner")
    paired["empty_reference"] = paired["dice"].isna() != paired["reference"].isna()
    paired["difference"] = paired["dice"].fillna(1.0) - paired["reference"].fillna(1.0)
    paired = paired[np.isfinite(paired["dice"] + paired["reference"])
                    | paired["empty_reference"]].rename(columns={"ratio_train": "ratio"})
    return paired.reset_index()


def non_inferiority(results: pd.DataFrame, margin: float, *, level: float = 0.95,
                    tail_drop: float = TAIL_DROP, tail_limit: float = TAIL_LIMIT,
                    assumed_model_sd: float = ASSUMED_MODEL_SD) -> pd.DataFrame:
    """One row per dataset, class and compressed ratio (``TEST_COLUMNS``): cases used (and
    how many of them had an empty reference), models, mean difference and interval, model
    sd and its route, detectable margin, tail share and its upper bound, skewness, verdict;
    the per-case mean (class "mean") first in each dataset."""
    criteria = Criteria(margin, level, tail_drop, tail_limit, assumed_model_sd)
    paired = paired_differences(results)
    paired = paired[paired["ratio"] != 1.0]
    if paired.empty:
        return pd.DataFrame(columns=TEST_COLUMNS)
    rows = []
    for (dataset, name, ratio), group in paired.groupby(["dataset", "class", "ratio"]):
        grid = _grid(group)
        row = {"dataset": dataset, "class": name, "ratio": ratio, "cases": len(grid),
               "empty_reference": int(group.groupby(["case", "fold"])["empty_reference"]
                                      .any().sum()),
               "models": len(group[["fold", "train_seed"]].drop_duplicates()),
               "seeds": grid.shape[1], "skewness": _skewness(grid)}
        if len(grid) >= 2:
            decision = decide(grid.to_numpy().T, grid.index.get_level_values("fold")
                              .to_numpy(), criteria)
            row.update({k: v if isinstance(v, str) else v.item()
                        for k, v in decision.items()})
        else:
            row.update(mean_difference=float(np.nanmean(grid.to_numpy())),
                       verdict=VERDICTS[1])
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=TEST_COLUMNS)
    table["_order"] = table["class"] != MEAN
    return table.sort_values(["dataset", "_order", "class", "ratio"]).drop(
        columns="_order").reset_index(drop=True)


@dataclass(frozen=True)
class SafeRatio:
    """A dataset's safe ratio: the largest shown non-inferior (1: none; None: too few cases
    to name one), the class that stops it, the first ratio not shown non-inferior and its
    verdict ("inconclusive" or "inferior"), and the classes left out for too few cases."""

    ratio: float | None
    limited_by: str | None = None
    too_few_cases: tuple[str, ...] = ()
    next_ratio: float | None = None
    next_verdict: str | None = None


def safe_ratios(tests: pd.DataFrame, min_cases: int = MIN_TEST_CASES, *,
                over_classes: bool = True) -> dict[str, SafeRatio]:
    """Per dataset: the largest ratio that it and every smaller ratio are non-inferior for
    every class (or the mean alone when ``over_classes`` is False); 1 if none. A class
    tested on fewer than ``min_cases`` cases is left out (and named) unless shown inferior;
    when that is the per-case mean, no safe ratio is named. Vectorised over datasets (the
    simulations pass thousands of studies as datasets)."""
    if not over_classes:
        tests = tests[tests["class"] == MEAN]
    if tests.empty:
        return {}
    by_class = [tests["dataset"], tests["class"]]
    trusted = tests.groupby(by_class)["cases"].transform("min") >= min_cases
    # A trusted class stops the sequence at its first ratio not non-inferior; one tested
    # on too few cases never extends it, but stops it where inferior.
    blocks = np.where(trusted, tests["verdict"] != VERDICTS[0],
                      tests["verdict"] == VERDICTS[2])
    stop = tests["ratio"].where(blocks, np.inf).groupby(by_class).transform("min")
    frame = tests.assign(_trusted=trusted, _stop=stop,
                         _first=stop.groupby(tests["dataset"]).transform("min"))
    too_few = frame.loc[~frame["_trusted"]].groupby("dataset")["class"].unique()
    shown = frame.loc[frame["ratio"] < frame["_first"]].groupby("dataset")["ratio"].max()
    # The class that stops it: an inferior one before an inconclusive one, a single class
    # before the per-case mean, then the lowest bound.
    at = frame[(frame["ratio"] == frame["_first"]) & (frame["_stop"] == frame["_first"])]
    at = at.assign(_rank=at["verdict"] != VERDICTS[2], _mean=at["class"] == MEAN)
    limiting = at.sort_values(["dataset", "_rank", "_mean", "ci_low"]).groupby(
        "dataset").head(1).set_index("dataset")
    safe: dict[str, SafeRatio] = {}
    for dataset in sorted(frame["dataset"].unique()):
        few = tuple(sorted(too_few.get(dataset, ())))
        if MEAN in few:
            safe[dataset] = SafeRatio(None, None, few)
            continue
        ratio = float(shown.get(dataset, 1.0))
        if dataset not in limiting.index:
            safe[dataset] = SafeRatio(ratio, None, few)
            continue
        row = limiting.loc[dataset]
        safe[dataset] = SafeRatio(ratio, str(row["class"]), few, float(row["ratio"]),
                                  str(row["verdict"]))
    return safe
