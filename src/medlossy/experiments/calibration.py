"""How often an interval method wrongly declares non-inferiority, by simulation.

Per-case Dice differences are drawn with their true mean exactly at ``-margin`` (the boundary
of the null hypothesis); a 95% two-sided interval whose lower bound lies above ``-margin``
declares non-inferiority wrongly. A correct method does so 2.5% of the time. Every method is
vectorised over the simulated studies, so tens of thousands of studies take a second.

Used by the CI test (tests/test_study_statistics.py) and ``bench/intervals.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

MARGIN = 0.01
SPREAD = 0.02  # sd of per-case Dice differences (twice the margin: a hard case for small n)


Draw = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def _standardised(draw: Draw, mean: float, sd: float) -> Draw:
    def sample(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        return (draw(rng, shape) - mean) / sd
    return sample


#: Per-case difference shapes, each with mean 0 and sd 1 (scaled and shifted by the caller).
#: "left-skewed": occasional large drops (a model that fails on some cases), the usual shape
#: of Dice differences; "right-skewed": occasional large gains; "heavy-tailed": Student t3.
SHAPES: dict[str, Draw] = {
    "normal": lambda rng, shape: rng.standard_normal(shape),
    "left-skewed": _standardised(lambda rng, shape: -rng.gamma(2.0, 1.0, shape),
                                 -2.0, np.sqrt(2.0)),
    "right-skewed": _standardised(lambda rng, shape: rng.gamma(2.0, 1.0, shape),
                                  2.0, np.sqrt(2.0)),
    "heavy-tailed": _standardised(lambda rng, shape: rng.standard_t(3, shape), 0.0,
                                  np.sqrt(3.0)),
}


def t_lower(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Lower bound of the two-sided t-interval of each row's mean."""
    n = samples.shape[1]
    quantile = stats.t.ppf(1 - (1 - level) / 2, n - 1)
    return samples.mean(axis=1) - quantile * samples.std(axis=1, ddof=1) / np.sqrt(n)


def percentile_lower(samples: np.ndarray, level: float = 0.95, resamples: int = 1000,
                     seed: int = 0) -> np.ndarray:
    """Lower bound of the percentile bootstrap of each row's mean (the former method)."""
    rng = np.random.default_rng(seed)
    n = samples.shape[1]
    picks = rng.integers(0, n, (resamples, n))
    means = samples[:, picks].mean(axis=2)  # (studies, resamples)
    return np.percentile(means, (1 - level) / 2 * 100, axis=1)


def studentised_lower(samples: np.ndarray, level: float = 0.95, resamples: int = 1000,
                      seed: int = 0) -> np.ndarray:
    """Lower bound of the studentised (bootstrap-t) interval of each row's mean."""
    rng = np.random.default_rng(seed)
    n = samples.shape[1]
    mean, sd = samples.mean(axis=1), samples.std(axis=1, ddof=1)
    resampled = samples[:, rng.integers(0, n, (resamples, n))]
    boot_sd = resampled.std(axis=2, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = (resampled.mean(axis=2) - mean[:, None]) / (boot_sd / np.sqrt(n))
    statistic = np.where(np.isfinite(statistic), statistic, 0.0)  # all-equal resamples
    upper_quantile = np.percentile(statistic, 100 - (1 - level) / 2 * 100, axis=1)
    return mean - upper_quantile * sd / np.sqrt(n)


def bca_lower(samples: np.ndarray, level: float = 0.95, resamples: int = 1000,
              seed: int = 0) -> np.ndarray:
    """Lower bound of scipy's BCa bootstrap of each row's mean."""
    result = stats.bootstrap((samples,), np.mean, axis=1, vectorized=True, method="BCa",
                             confidence_level=level, n_resamples=resamples,
                             random_state=np.random.default_rng(seed))
    return result.confidence_interval.low


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "t": t_lower, "percentile bootstrap": percentile_lower,
    "studentised bootstrap": studentised_lower, "BCa bootstrap": bca_lower}


def false_non_inferiority_rate(method: Callable[..., np.ndarray], cases: int, *,
                               studies: int = 20000, shape: str = "normal",
                               margin: float = MARGIN, spread: float = SPREAD,
                               seed: int = 0) -> float:
    """Share of ``studies`` simulated studies of ``cases`` cases, true mean difference
    ``-margin``, in which ``method``'s lower bound lies above ``-margin``."""
    rng = np.random.default_rng(seed)
    samples = -margin + spread * SHAPES[shape](rng, (studies, cases))
    return float(np.mean(method(samples) > -margin))


def repeated_studies(cases: int, seeds: int, *, studies: int = 20000, folds: int = 1,
                     model_sd: float = MARGIN, case_sd: float = SPREAD,
                     noise_sd: float = MARGIN / 2, margin: float = MARGIN,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Simulated paired differences of studies with training repeats: shape (studies,
    seeds, cases), true mean ``-margin``; each (fold, seed) model shifts all of its cases by
    one draw of sd ``model_sd``. Returns (differences, fold of each case)."""
    rng = np.random.default_rng(seed)
    fold_of_case = np.arange(cases) % folds
    models = model_sd * rng.standard_normal((studies, seeds, folds))
    differences = (-margin + models[:, :, fold_of_case]
                   + case_sd * rng.standard_normal((studies, 1, cases))
                   + noise_sd * rng.standard_normal((studies, seeds, cases)))
    return differences, fold_of_case


@dataclass(frozen=True)
class Design:
    """A simulated study of trained models: ``cases`` test cases split over ``folds``, one
    (x1, x R) model pair per fold and seed. Per case and model the Dice at x1 and at R are
    drawn; a pair's models shift the mean difference by ``model_sd`` (each model by
    model_sd / sqrt 2), cases differ by ``case_sd``, each prediction adds ``noise_sd`` (over
    the pair), and a share ``failing`` of the cases fail at R, losing 0.05 + an exponential
    amount (mean ``failing_drop`` in all) while the others gain as much in the mean, so the
    true mean difference stays ``difference``."""

    cases: int
    folds: int = 3
    seeds: int = 1
    model_sd: float = MARGIN
    case_sd: float = SPREAD
    noise_sd: float = MARGIN / 2
    failing: float = 0.0
    failing_drop: float = 0.15
    difference: float = -MARGIN


def _case_effects(design: Design, rng: np.random.Generator, shape: tuple[int, ...],
                  ) -> np.ndarray:
    """Per-case change at R with mean 0: normal, or a share of cases failing badly."""
    effects = design.case_sd * rng.standard_normal(shape)
    if design.failing > 0:
        fails = rng.random(shape) < design.failing
        drops = 0.05 + rng.exponential(design.failing_drop - 0.05, shape)
        gain = design.failing * design.failing_drop / (1 - design.failing)
        effects = np.where(fails, -drops, effects + gain)
    return effects


def simulated_dice(design: Design, differences: tuple[float, ...] = (), *,
                   studies: int = 2000, seed: int = 0,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dice of ``studies`` simulated studies: (x1 of shape (studies, seeds, cases), the
    compressed ratios' of shape (ratios, studies, seeds, cases), fold of each case). Each
    ratio's true mean difference is in ``differences`` (default: ``design.difference``); the
    x1 models are shared by every ratio, as in a study."""
    rng = np.random.default_rng(seed)
    differences = differences or (design.difference,)
    fold_of_case = np.arange(design.cases) % design.folds
    shape = (studies, design.seeds, design.cases)

    def models() -> np.ndarray:  # one shift per (fold, seed) model, on all of its cases
        shifts = design.model_sd / np.sqrt(2) * rng.standard_normal(
            (studies, design.seeds, design.folds))
        return shifts[:, :, fold_of_case]

    def noise() -> np.ndarray:
        return design.noise_sd / np.sqrt(2) * rng.standard_normal(shape)

    base = rng.uniform(0.7, 0.9, (studies, 1, design.cases))
    reference = base + models() + noise()
    compressed = np.stack([base + shift + _case_effects(design, rng, (studies, 1,
                                                                      design.cases))
                           + models() + noise() for shift in differences])
    return reference, compressed, fold_of_case
