"""Equal storage for the budget experiment: few-shot uncompressed vs all cases compressed.

For a budget of ``fraction`` x the raw 16-bit bytes of a fold's training cases, the few-shot
arm takes the largest fixed subset of cases (``medlossy.train.splits.training_subset``, at
least one) whose *lossless* stored bytes fit; the compressed arm takes every training case at
the ratio whose measured stored bytes equal the few-shot arm's within ``TOLERANCE``, found by
searching (compressing, measuring, correcting), not assumed to be 1 / fraction. Both arms'
real shares of the raw bytes go in the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medlossy.train.splits import kfold_splits, training_subset

TOLERANCE = 0.02
MAX_STEPS = 8
MAX_STEP = math.log(4)  # the ratio changes by at most 4x per step


@dataclass(frozen=True)
class BudgetArms:
    """The two arms of one dataset, fold and budget fraction, with their measured bytes."""

    dataset: str
    fold: int
    fraction: float  # nominal: share of the raw 16-bit bytes of the fold's training cases
    train_cases: int
    few_shot_cases: int
    raw_bytes: int
    few_shot_bytes: int  # lossless stored bytes of the few-shot cases
    ratio: float  # the compressed arm's requested ratio
    compressed_bytes: int  # stored bytes of every training case at ``ratio``

    @property
    def train_fraction(self) -> float:
        """The share of training cases the few-shot model trains on."""
        return self.few_shot_cases / self.train_cases

    def rows(self) -> list[dict]:
        """One footprint row per arm, for the report."""
        common = {"dataset": self.dataset, "fold": self.fold,
                  "budget_fraction": self.fraction, "raw_bytes": self.raw_bytes}
        return [{**common, "arm": "few-shot", "ratio": 1.0, "cases": self.few_shot_cases,
                 "bytes": self.few_shot_bytes,
                 "share": self.few_shot_bytes / self.raw_bytes},
                {**common, "arm": "compressed", "ratio": self.ratio,
                 "cases": self.train_cases, "bytes": self.compressed_bytes,
                 "share": self.compressed_bytes / self.raw_bytes}]


def case_bytes(manifest: pd.DataFrame, ratio: float, column: str = "stored_bytes",
               ) -> dict[str, int]:
    """Bytes per case (all channels) at ``ratio`` from a sweep manifest."""
    rows = manifest[np.isclose(manifest["ratio_target"].astype(float), ratio)]
    return {str(k): int(v) for k, v in rows.groupby("case")[column].sum().items()}


def few_shot_cases(train_cases: Sequence[str], fold: int, lossless: Mapping[str, int],
                   budget: float) -> int:
    """How many cases of the fixed subset order fit ``budget`` bytes at lossless size (at
    least one)."""
    fitting = 1
    for count in range(2, len(train_cases) + 1):
        subset = training_subset(train_cases, count / len(train_cases), fold)
        if sum(lossless[c] for c in subset) > budget:
            break
        fitting = count
    return fitting


def search_ratio(measure: Callable[[float], int], target: int, start: float, *,
                 tolerance: float = TOLERANCE, steps: int = MAX_STEPS) -> tuple[float, int]:
    """The ratio whose measured bytes are within ``tolerance`` of ``target``.

    Stored bytes fall about as 1 / ratio, so each step scales the ratio by measured / target
    (a secant step on log bytes once two points are known); ratios are rounded to three
    significant digits so that a rerun asks for the same stores. ValueError when ``steps``
    measurements do not get there (lossless already below the target, or the codec's headers
    above it).
    """
    ratio, tried = max(1.0, _round(start)), []
    for _ in range(steps):
        stored = measure(ratio)
        tried.append((ratio, stored))
        if abs(stored / target - 1) <= tolerance:
            return ratio, stored
        slope = 0.0
        if len(tried) >= 2 and tried[-1][1] != tried[-2][1]:
            (r0, b0), (r1, b1) = tried[-2:]
            slope = (math.log(b1) - math.log(b0)) / (math.log(r1) - math.log(r0))
        step = math.log(target / stored) / slope if slope < 0 else math.log(stored / target)
        proposal = _round(ratio * math.exp(max(-MAX_STEP, min(MAX_STEP, step))))
        if not 1 <= proposal <= 10_000 or proposal in {r for r, _ in tried}:
            break
        ratio = proposal
    raise ValueError(f"no ratio stores {target} bytes within {tolerance:.0%}: tried "
                     + ", ".join(f"x{r:g} -> {b}" for r, b in tried))


def _round(ratio: float) -> float:
    return float(f"{ratio:.3g}")


def plan_budget(dataset: str, labelled: Sequence[str], folds: int, fold: int,
                fraction: float, manifest: pd.DataFrame,
                measure: Callable[[float], pd.DataFrame]) -> BudgetArms:
    """Both arms of one fold and fraction; ``measure(ratio)`` compresses the dataset at
    ``ratio`` (cached) and returns the sweep manifest."""
    train = kfold_splits(labelled, folds)[fold]["train"]
    raw = case_bytes(manifest, 1.0, "raw_bytes")
    lossless = case_bytes(manifest, 1.0)
    raw_total = sum(raw[c] for c in train)
    count = few_shot_cases(train, fold, lossless, fraction * raw_total)
    few = training_subset(train, count / len(train), fold)
    target = sum(lossless[c] for c in few)
    if count == len(train):  # every case fits losslessly: both arms are the x1 model
        return BudgetArms(dataset, fold, fraction, len(train), count, raw_total, target, 1.0,
                          target)

    def stored(ratio: float) -> int:
        at_ratio = case_bytes(measure(ratio), ratio)
        if not at_ratio:  # the sweep left the ratio out: see its sweep.json
            raise ValueError(f"{dataset}: x{ratio:g} is out of the codec's reach, so no "
                             f"compressed arm matches the budget share {fraction:g}")
        return sum(at_ratio[c] for c in train)

    ratio, compressed = search_ratio(stored, target, raw_total / target)
    return BudgetArms(dataset, fold, fraction, len(train), count, raw_total, target, ratio,
                      compressed)
