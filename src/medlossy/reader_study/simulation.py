"""Simulated reader studies with a known truth, to check the analysis's intervals.

Data flow: a model with rater and image random effects -> answers of ``raters`` raters on
``images`` pairs per ratio pair -> the analysis's pooled score interval (``score_interval``, as
``score_table`` uses it) and 50 % detection ratio (``threshold_estimate``)
-> how often its intervals hold the truth.

The model (independent of the analysis's formulas): rater j sees the difference on pair k
of ratio pair (low, high) with probability d = expit(slope (log(high / low) - log r50) +
u_j + v_k), u_j ~ N(0, rater_sd^2), v_k ~ N(0, image_sd^2); a rater who does not see it
answers "cannot decide" with probability ``undecided`` and otherwise picks a side at random.
The true mean score of a ratio pair is E[d] over raters and images (Gauss-Hermite
quadrature over u + v); since u + v is symmetric about 0, E[d] = 1/2 exactly at ratio r50
against the lossless image: the true "visually lossless up to" point.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit

from medlossy.reader_study.intervals import score_interval
from medlossy.reader_study.psychometric import detection_rows, threshold_estimate


@dataclass(frozen=True)
class ReaderModel:
    """The simulated population of raters and images."""

    ratios: tuple[float, ...] = (1.0, 3.0, 10.0, 40.0)
    r50: float = 6.0  #: ratio seen on half of the (rater, image) draws against lossless
    slope: float = 2.5  #: logits per unit log ratio
    rater_sd: float = 0.7
    image_sd: float = 0.7
    undecided: float = 0.3  #: P("cannot decide") when the difference is not seen

    @property
    def ratio_pairs(self) -> list[tuple[float, float]]:
        return list(itertools.combinations(self.ratios, 2))

    def logit(self, low: float, high: float) -> float:
        return self.slope * (np.log(high / low) - np.log(self.r50))

    def true_score(self, low: float, high: float) -> float:
        """E[d] over raters and images: the population mean score of the ratio pair."""
        nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # N(0, 1) nodes
        sd = np.hypot(self.rater_sd, self.image_sd)
        return float(np.sum(weights * expit(self.logit(low, high) + sd * nodes))
                     / np.sum(weights))


def simulate_answers(model: ReaderModel, raters: int, images: int,
                     rng: np.random.Generator) -> pd.DataFrame:
    """One study's scored answers (columns as ``scored_answers``), every rater every pair."""
    rater_effect = rng.normal(0, model.rater_sd, raters)
    rows = []
    for low, high in model.ratio_pairs:
        image_effect = rng.normal(0, model.image_sd, images)
        seen = rng.random((raters, images)) < expit(
            model.logit(low, high) + rater_effect[:, None] + image_effect[None, :])
        undecided = rng.random((raters, images)) < model.undecided
        lucky = rng.random((raters, images)) < 0.5
        score = np.where(seen, 1, np.where(undecided, 0, np.where(lucky, 1, -1)))
        for j, k in itertools.product(range(raters), range(images)):
            rows.append({"rater": f"r{j}", "pair": f"{low:g}-{high:g}-{k}",
                         "ratio_low": low, "ratio_high": high, "score": int(score[j, k]),
                         "less_compressed": "left", "left_psnr_db": float("nan"),
                         "right_psnr_db": float("nan"), "identical": False})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Coverage:
    """Fraction of simulated studies whose interval held the truth."""

    studies: int
    scores: dict[tuple[float, float], float]  #: per ratio pair
    true_scores: dict[tuple[float, float], float]
    threshold: float  #: the 50 % detection ratio (NaN if not checked)
    threshold_found: float  #: studies where the threshold had an interval


def coverage(model: ReaderModel, raters: int, images: int, *, studies: int, seed: int,
             threshold: bool = True) -> Coverage:
    """Run ``studies`` simulated studies through the analysis; count hits."""
    rng = np.random.default_rng(seed)
    truth = {pair: model.true_score(*pair) for pair in model.ratio_pairs}
    hits = dict.fromkeys(truth, 0)
    threshold_hits = found = 0
    for _ in range(studies):
        scored = simulate_answers(model, raters, images, rng)
        for (low, high), cell in scored.groupby(["ratio_low", "ratio_high"]):
            ci_low, ci_high, _ = score_interval(cell["score"].to_numpy(float),
                                                cell["rater"].to_numpy(), cell["pair"].to_numpy())
            hits[low, high] += ci_low <= truth[low, high] <= ci_high
        if threshold:
            estimate = threshold_estimate(detection_rows(scored, model.ratios[0]), "ratio")
            found += bool(np.isfinite(estimate.low))
            threshold_hits += bool(estimate.low <= model.r50 <= estimate.high)
    return Coverage(studies, {pair: hits[pair] / studies for pair in truth}, truth,
                    threshold_hits / studies if threshold else float("nan"),
                    found / studies if threshold else float("nan"))
