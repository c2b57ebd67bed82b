"""k-fold splits that depend only on the case names, so every ratio of a dataset (same case
names, other pixels) is trained and tested on the same cases."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_SEED = 12345


def kfold_splits(cases: Sequence[str], folds: int) -> list[dict[str, list[str]]]:
    """[{"train": [...], "test": [...]}] per fold; the same names always give the same split."""
    names = sorted(set(cases))
    if folds > len(names):
        raise ValueError(f"{folds} folds need at least {folds} labelled cases, got {len(names)}")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(names))
    shuffled = [names[i] for i in order]
    splits = []
    for fold in range(folds):
        test = sorted(shuffled[fold::folds])
        splits.append({"train": [n for n in names if n not in test], "test": test})
    return splits


def training_subset(cases: Sequence[str], fraction: float, fold: int) -> list[str]:
    """A fixed ``fraction`` of ``cases`` (at least one), the same for every ratio."""
    names = sorted(cases)
    count = max(1, round(fraction * len(names)))
    order = np.random.default_rng(SPLIT_SEED + 1 + fold).permutation(len(names))
    return sorted(names[i] for i in order[:count])
