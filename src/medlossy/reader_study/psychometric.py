"""Psychometric curve, "visually lossless up to" threshold and a quality scale per ratio.

Data flow: scored answers -> y = 1 picked the less compressed image (side-by-side), the
compressed one (2AFC) or saw the flicker, 0.5 cannot decide (a guess), 0 otherwise ->
logistic fits with statsmodels' GLM (Binomial):

- detection curve: the pairs against the least compressed ratio (the reference, usually
  lossless), P(correct) = 1/2 + 1/2 expit(a + b x) with x = log ratio or the compressed
  side's PSNR. In this two-alternative design a rater who sees nothing is right half the
  time, so expit(a + b x) is the detection probability (the expected score) and 50 %
  detection, a + b x = 0 (75 % correct), is the study's "visually lossless up to". In the
  flicker design (yes / no, ``guess`` 0) P(seen) = expit(a + b x) itself, 50 % seen;
- quality scale: Bradley-Terry over every ratio pair, logit P(i judged better than j) =
  q_i - q_j, q = 0 at the reference ratio (negative: worse, in logits).

Every fit adds one answer per ratio cell at the curve's midpoint (detection 50 %; a tie for
Bradley-Terry), so a cell where every answer saw the loss keeps the fit finite. Intervals:
delete-one-rater and delete-one-image jackknife variances added (raters and images both
random; the sum counts the residual twice, erring wide), t quantile on Satterthwaite's df.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit

from medlossy.reader_study.intervals import CONFIDENCE

#: P(correct) by chance in a two-alternative choice: the forced-choice curve's floor.
FORCED_CHOICE_GUESS = 0.5


@dataclass(frozen=True)
class Estimate:
    """A jackknifed estimate: value, interval, Satterthwaite df."""

    value: float
    low: float
    high: float
    df: float


def correct_fraction(scored: pd.DataFrame) -> np.ndarray:
    """1 for the less compressed image picked, 0.5 for cannot decide, 0 otherwise."""
    return (scored["score"].to_numpy(dtype=float) + 1) / 2


def _forced_choice_family():
    """Binomial family whose link has a guess floor of 1/2 (R psyphy's ``mafc.logit(2)``).

    P(correct) = 1/2 + 1/2 expit(eta): a rater who does not see the difference is right
    half the time, so expit(eta) is the detection probability. A plain logit of P(correct)
    bends the fit towards 0 below the floor and put the 50 % point at 5.3 for a true 6.
    """
    import statsmodels.api as sm

    class ForcedChoiceLogit(sm.families.links.Link):
        def __call__(self, p):
            q = np.clip(2 * np.asarray(p) - 1, 1e-10, 1 - 1e-10)
            return np.log(q / (1 - q))

        def inverse(self, z):
            return 0.5 + 0.5 * expit(z)

        def deriv(self, p):
            q = np.clip(2 * np.asarray(p) - 1, 1e-10, 1 - 1e-10)
            return 2 / (q * (1 - q))

        def deriv2(self, p):
            q = np.clip(2 * np.asarray(p) - 1, 1e-10, 1 - 1e-10)
            return -4 * (1 - 2 * q) / (q * (1 - q)) ** 2

        def inverse_deriv(self, z):
            e = expit(z)
            return 0.5 * e * (1 - e)

        def inverse_deriv2(self, z):
            e = expit(z)
            return 0.5 * e * (1 - e) * (1 - 2 * e)

    class ForcedChoice(sm.families.Binomial):
        def starting_mu(self, y):
            return 0.5 + (y + 0.5) / 4  # inside (1/2, 1), where the link is defined

    return ForcedChoice(link=ForcedChoiceLogit(), check_link=False)


def _fit(design: np.ndarray, correct: np.ndarray, *,
         forced_choice: bool = False) -> np.ndarray | None:
    """Binomial GLM on (possibly fractional) answers; None where it cannot be fitted."""
    import statsmodels.api as sm

    family = _forced_choice_family() if forced_choice else sm.families.Binomial()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = sm.GLM(correct, design, family=family).fit()
        except (ValueError, np.linalg.LinAlgError, RuntimeError):
            return None
    params = np.asarray(result.params, dtype=float)
    return params if np.all(np.isfinite(params)) else None


def _with_pseudo(cells: np.ndarray, x: np.ndarray, correct: np.ndarray, pseudo: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Answers plus one answer per cell worth ``pseudo`` (fraction right), at the cell's
    mean x."""
    labels, index = np.unique(cells, return_inverse=True)
    counts = np.bincount(index, minlength=len(labels)).astype(float)
    mean_x = np.stack([np.bincount(index, weights=column, minlength=len(labels)) / counts
                       for column in x.T], axis=1)
    design = np.concatenate([x, mean_x])
    return design, np.concatenate([correct, np.full(len(labels), pseudo)])


def crossed_jackknife(frame: pd.DataFrame, estimate: Callable[[pd.DataFrame], np.ndarray],
                      *, confidence: float = CONFIDENCE) -> list[Estimate]:
    """``estimate`` on ``frame`` with delete-one-rater + delete-one-image jackknife intervals.

    ``frame`` needs ``rater`` and ``pair`` columns (the image of an answer is its pair).
    """
    full = np.atleast_1d(estimate(frame))
    variance = np.zeros_like(full)
    parts = []
    for column in ("rater", "pair"):
        labels = frame[column].unique()
        if len(labels) < 2:
            parts.append((np.zeros_like(full), 1))
            continue
        leave_out = np.array([np.atleast_1d(estimate(frame[frame[column] != label]))
                              for label in labels])
        spread = ((len(labels) - 1) / len(labels)
                  * ((leave_out - leave_out.mean(axis=0)) ** 2).sum(axis=0))
        parts.append((spread, len(labels) - 1))
        variance = variance + spread
    with np.errstate(invalid="ignore", divide="ignore"):
        df = variance**2 / sum(part**2 / dof for part, dof in parts)
    results = []
    for value, var, dof in zip(full, variance, df, strict=True):
        if not (np.isfinite(value) and np.isfinite(var)) or var == 0 or not np.isfinite(dof):
            results.append(Estimate(float(value), float("nan"), float("nan"), float("nan")))
            continue
        half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(var)
        results.append(Estimate(float(value), float(value - half), float(value + half),
                                float(dof)))
    return results


def detection_rows(scored: pd.DataFrame, reference: float) -> pd.DataFrame:
    """Answers on pairs of the reference (least compressed) ratio against another."""
    return scored[scored["ratio_low"] == reference]


def _compressed_psnr(scored: pd.DataFrame) -> np.ndarray:
    """PSNR (dB) of the more compressed side of each answer's pair; NaN where unknown."""
    left_is_compressed = scored["less_compressed"].to_numpy() == "right"
    left = pd.to_numeric(scored["left_psnr_db"], errors="coerce").to_numpy(dtype=float)
    right = pd.to_numeric(scored["right_psnr_db"], errors="coerce").to_numpy(dtype=float)
    return np.where(left_is_compressed, left, right)


def curve_x(rows: pd.DataFrame, measure: str) -> np.ndarray:
    """The curve's abscissa per answer: log ratio, or PSNR of the compressed side (dB)."""
    if measure == "ratio":
        return np.log(rows["ratio_high"].to_numpy(dtype=float))
    return _compressed_psnr(rows)


def fit_curve(rows: pd.DataFrame, measure: str, *, guess: float = FORCED_CHOICE_GUESS
               ) -> np.ndarray | None:
    """(a, b) of P(+1) = guess + (1 - guess) expit(a + b x), or None (too few levels, no
    fit). ``guess``: 1/2 for a forced choice (side-by-side, 2AFC), 0 for yes / no
    (flicker)."""
    if guess not in (0.0, FORCED_CHOICE_GUESS):
        raise ValueError(f"guess must be 0 or 1/2, got {guess}")
    x = curve_x(rows, measure)
    keep = np.isfinite(x)
    if len(np.unique(x[keep])) < 2:
        return None
    midpoint = guess + (1 - guess) / 2  # the pseudo-answer sits at 50 % detection
    design, success = _with_pseudo(rows["ratio_high"].to_numpy()[keep], x[keep][:, None],
                                   correct_fraction(rows)[keep], midpoint)
    return _fit(np.column_stack([np.ones(len(design)), design[:, 0]]), success,
                forced_choice=guess > 0)


def threshold(rows: pd.DataFrame, measure: str, *,
              guess: float = FORCED_CHOICE_GUESS) -> float:
    """x at 50 % detection (a + b x = 0), NaN when detection does not grow with compression
    (with the ratio, or as the PSNR falls)."""
    params = fit_curve(rows, measure, guess=guess)
    if params is None:
        return float("nan")
    intercept, slope = params
    if (slope <= 0) if measure == "ratio" else (slope >= 0):
        return float("nan")
    return -intercept / slope


#: A fit whose detection changes less than this across the tested range has no threshold.
FLAT_DETECTION = 0.01


def threshold_problem(rows: pd.DataFrame, measure: str, *,
                      guess: float = FORCED_CHOICE_GUESS) -> str | None:
    """Why the 50 % detection point is not determined (None where it is): no fit, a flat or
    inverted fit, or a point outside the tested range (an extrapolation, not a finding)."""
    params = fit_curve(rows, measure, guess=guess)
    if params is None:
        return "too few answers or ratios to fit a curve"
    x = curve_x(rows, measure)
    x = x[np.isfinite(x)]
    low, high = float(x.min()), float(x.max())
    intercept, slope = params
    if abs(expit(intercept + slope * high) - expit(intercept + slope * low)) < FLAT_DETECTION:
        return "detection does not change with compression"
    if (slope <= 0) if measure == "ratio" else (slope >= 0):
        return "detection falls with compression"
    point = -intercept / slope
    if not low <= point <= high:
        shown = (f"x{math.exp(low):g} to x{math.exp(high):g}" if measure == "ratio" else
                 f"{low:.3g} to {high:.3g} dB")
        return f"outside the tested range ({shown})"
    return None


def threshold_estimate(rows: pd.DataFrame, measure: str, *,
                       confidence: float = CONFIDENCE,
                       guess: float = FORCED_CHOICE_GUESS) -> Estimate:
    """The 50 % detection point and its interval: a ratio (fitted in log ratio) or PSNR."""
    if rows.empty:
        return Estimate(*[float("nan")] * 4)
    found = crossed_jackknife(rows, lambda part: np.array([threshold(part, measure,
                                                                     guess=guess)]),
                              confidence=confidence)[0]
    if measure != "ratio":
        return found
    # A bound past exp's range (a steep fit left out one rater) is unbounded: NaN, no interval.
    with np.errstate(over="ignore"):
        value, low, high = np.exp([found.value, found.low, found.high])
    return Estimate(*(float(v) if np.isfinite(v) else float("nan") for v in (value, low, high)),
                    found.df)


def curve_table(rows: pd.DataFrame, reference: float, params: np.ndarray | None, *,
                guess: float = FORCED_CHOICE_GUESS) -> pd.DataFrame:
    """Per ratio against the reference: observed and fitted (``params`` of ``fit_curve`` in
    log ratio) detection, corrected for guessing (``guess``), mean PSNR of the compressed
    side; ``correct`` is the raw fraction of +1 (half for "cannot decide")."""
    out = []
    for ratio, cell in rows.groupby("ratio_high"):
        observed = correct_fraction(cell).mean()
        psnr = _compressed_psnr(cell)
        fitted = (float("nan") if params is None else
                  guess + (1 - guess) * float(expit(params[0] + params[1] * math.log(ratio))))
        out.append({"reference_ratio": reference, "ratio": float(ratio), "n": len(cell),
                    "psnr_db": float(np.mean(psnr[np.isfinite(psnr)]))
                    if np.isfinite(psnr).any() else float("nan"),
                    "correct": float(observed),
                    "detection": float((observed - guess) / (1 - guess)),
                    "fitted_detection": float((fitted - guess) / (1 - guess))})
    return pd.DataFrame(out, columns=["reference_ratio", "ratio", "n", "psnr_db", "correct",
                                      "detection", "fitted_detection"])


def bradley_terry(rows: pd.DataFrame, ratios: list[float]) -> np.ndarray:
    """Quality q per ratio (logits, q = 0 at ``ratios[0]``); NaN where it cannot be fitted.

    Each answer compares its pair's two ratios; the less compressed one wins when picked,
    a "cannot decide" is half a win each.
    """
    nan = np.full(len(ratios), np.nan)
    if rows.empty:
        return nan
    position = {ratio: number for number, ratio in enumerate(ratios)}
    low = rows["ratio_low"].map(position).to_numpy()
    high = rows["ratio_high"].map(position).to_numpy()
    signs = np.zeros((len(rows), len(ratios)))
    signs[np.arange(len(rows)), low] += 1
    signs[np.arange(len(rows)), high] -= 1
    cells = low * len(ratios) + high
    design, success = _with_pseudo(cells, signs, correct_fraction(rows), 0.5)
    present = np.abs(design[:, 1:]).sum(axis=0) > 0
    params = _fit(design[:, 1:][:, present], success) if present.any() else None
    if params is None:
        return nan
    quality = nan.copy()
    quality[0] = 0.0
    quality[1:][present] = params
    return quality


def quality_table(rows: pd.DataFrame, ratios: list[float], *,
                  confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Bradley-Terry quality per ratio with jackknife intervals (reference: 0, exact)."""
    if rows.empty:
        found = [Estimate(*[float("nan")] * 4) for _ in ratios]
    else:
        found = crossed_jackknife(rows, lambda part: bradley_terry(part, ratios),
                                  confidence=confidence)
    table = pd.DataFrame([{"ratio": ratio, "quality": e.value, "ci_low": e.low,
                           "ci_high": e.high, "df": e.df}
                          for ratio, e in zip(ratios, found, strict=True)])
    if not rows.empty:
        table.loc[0, ["ci_low", "ci_high"]] = 0.0  # the reference, by definition
    return table
