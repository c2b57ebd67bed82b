"""Reader study statistics checked against libraries and a simulated truth: the OR / Hillis
score interval, the forced-choice detection curve, Bradley-Terry, coverage."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("statsmodels")

from medlossy.reader_study.intervals import reader_variance, score_interval, wilson
from medlossy.reader_study.psychometric import (
    bradley_terry,
    fit_curve,
    quality_table,
    threshold_estimate,
)
from medlossy.reader_study.simulation import ReaderModel, coverage


def test_or_variance_and_hillis_df_equal_the_two_way_random_anova():
    # For a mean, OR with jackknife covariances equals DBM's random rater x random image
    # ANOVA (Hillis et al. 2005): Var = (MS_R + MS_C - MS_RC) / (r c), Hillis's df
    # (MS_R + MS_C - MS_RC)^2 / (MS_R^2 / (r - 1)); mean squares from statsmodels.
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(0)
    raters, images = 4, 12
    scores = np.clip(np.round(rng.normal(0.5, 0.4, (raters, 1)) + rng.normal(0, 0.5, (
        1, images)) + rng.normal(0, 0.4, (raters, images))), -1, 1)
    table = (scores + 1) / 2
    frame = pd.DataFrame([(i, j, table[i, j]) for i in range(raters) for j in range(images)],
                         columns=["rater", "image", "y"])
    squares = anova_lm(smf.ols("y ~ C(rater) + C(image)", frame).fit())["mean_sq"]
    ms_r, ms_c, ms_rc = squares["C(rater)"], squares["C(image)"], squares["Residual"]
    assert ms_c > ms_rc  # Cov2 > 0: the case the formulas share
    result = reader_variance(table)
    assert result.mean == pytest.approx(table.mean())
    assert result.variance == pytest.approx((ms_r + ms_c - ms_rc) / (raters * images))
    assert result.df == pytest.approx((ms_r + ms_c - ms_rc) ** 2 / (ms_r**2 / (raters - 1)))


def test_skipped_answers_use_the_delete_one_image_jackknife():
    table = np.array([[1, 0.5, 1, 0, 1], [1, 1, np.nan, 0, 1], [0.5, 1, 1, 1, np.nan]])
    means = np.nanmean(table, axis=1)
    dropped = np.array([[np.nanmean(np.delete(row, k)) for k in range(5)] for row in table])
    jackknife = 4 / 5 * (dropped - dropped.mean(axis=1, keepdims=True)) @ (
        dropped - dropped.mean(axis=1, keepdims=True)).T
    cov2 = (jackknife.sum() - np.trace(jackknife)) / 6
    result = reader_variance(table)
    assert result.mean == pytest.approx(means.mean())
    assert result.cov2 == pytest.approx(cov2)
    assert result.variance == pytest.approx(np.var(means, ddof=1) / 3 + max(cov2, 0))


def test_wilson_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    for successes, trials in [(0, 10), (3, 10), (29, 30), (30, 30)]:
        expected = proportion_confint(successes, trials, alpha=0.05, method="wilson")
        assert wilson(successes / trials, trials, 1.959963984540054) == pytest.approx(expected)


def test_score_interval_widens_with_three_raters_and_at_the_ceiling():
    # Same answers, two designs: 30 answers from 30 raters or from 3 raters.
    scores = np.array([1.0] * 27 + [0, -1, 1])
    images = np.arange(30) % 10
    many = score_interval(scores, np.arange(30), np.arange(30))
    few = score_interval(scores, np.arange(30) // 10, images)
    assert few[1] - few[0] > many[1] - many[0]
    ceiling = score_interval(np.ones(30), np.arange(30) // 10, images)
    assert ceiling[0] < 0.9 and ceiling[1] == pytest.approx(1.0)


def _curve_answers(intercept: float, slope: float, ratios: list[float], count: int,
                   rng: np.random.Generator | None = None) -> pd.DataFrame:
    """``count`` answers per ratio against x1 from P(right) = 1/2 + 1/2 expit(a + b log
    ratio): drawn (+1 / -1) with ``rng``, else each worth exactly that fraction (fractional,
    as "cannot decide" is), so a fit must give back a and b."""
    rows = []
    for ratio in ratios:
        correct = 0.5 + 0.5 / (1 + math.exp(-(intercept + slope * math.log(ratio))))
        scores = (np.where(rng.random(count) < correct, 1.0, -1.0) if rng is not None
                  else np.full(count, 2 * correct - 1))
        rows += [{"rater": f"r{i % 4}", "pair": f"{ratio}-{i}", "ratio_low": 1.0,
                  "ratio_high": ratio, "score": score, "less_compressed": "left",
                  "left_psnr_db": math.inf, "right_psnr_db": 50 - 5 * math.log(ratio)}
                 for i, score in enumerate(scores)]
    return pd.DataFrame(rows)


def test_forced_choice_curve_recovers_a_known_curve():
    ratios = [2.0, 4.0, 8.0, 16.0]
    exact = _curve_answers(-2.5 * math.log(6), 2.5, ratios, count=5000)
    intercept, slope = fit_curve(exact, "ratio")
    assert (intercept, slope) == pytest.approx((-2.5 * math.log(6), 2.5), rel=2e-3)
    drawn = _curve_answers(-2.5 * math.log(6), 2.5, ratios, count=40,
                           rng=np.random.default_rng(2))
    found = threshold_estimate(drawn, "ratio")
    assert found.low < 6 < found.high and found.high / found.low < 4
    # The PSNR curve: 50 - 5 log(6) dB at the same point, falling with compression.
    psnr = threshold_estimate(drawn, "psnr")
    assert psnr.value == pytest.approx(50 - 5 * math.log(found.value))
    assert psnr.low < 50 - 5 * math.log(6) < psnr.high


def test_bradley_terry_recovers_known_qualities():
    quality = {1.0: 0.0, 5.0: -0.5, 20.0: -2.0}
    ratios = list(quality)
    rng = np.random.default_rng(4)

    def answers(count: int, drawn: bool) -> pd.DataFrame:
        rows = []
        for low, high in [(1.0, 5.0), (1.0, 20.0), (5.0, 20.0)]:
            win = 1 / (1 + math.exp(-(quality[low] - quality[high])))
            scores = np.where(rng.random(count) < win, 1.0, -1.0) if drawn else np.full(
                count, 2 * win - 1)
            rows += [{"rater": f"r{i % 3}", "pair": f"{low}-{high}-{i}", "ratio_low": low,
                      "ratio_high": high, "score": score} for i, score in enumerate(scores)]
        return pd.DataFrame(rows)

    assert bradley_terry(answers(30000, False), ratios) == pytest.approx([0, -0.5, -2], abs=1e-3)
    table = quality_table(answers(60, True), ratios)
    assert (table["ci_low"] <= [0, -0.5, -2]).all() and (table["ci_high"] >= [0, -0.5, -2]).all()
    assert (table["ci_high"] - table["ci_low"])[1:].lt(2.5).all()


def test_coverage_with_a_known_truth_3_and_8_raters():
    # Reproduced on the bootstrap version, same model, 300 studies: x1 vs x40, the
    # near-ceiling cell (true mean score 0.986), held in 27 % (3 raters) and 50 % (8 raters),
    # zero-width [1, 1] in 239 of 1800 cells with 3 raters.
    model = ReaderModel()
    assert model.true_score(1.0, 40.0) > 0.98
    for raters in (3, 8):
        found = coverage(model, raters, 10, studies=150, seed=raters, threshold=False)
        assert min(found.scores.values()) >= 0.93, found.scores
    found = coverage(model, 3, 10, studies=30, seed=11)
    assert found.threshold >= 0.9 and found.threshold_found == 1.0
