"""Overlap and surface metrics between a predicted and a reference label map.

Conventions (the study's Dice, made explicit where it leaves cases open):

- Dice of class c = 2|X∩Y| / (|X| + |Y|), X = prediction == c, Y = reference == c.
- Reference and prediction both empty for c: **NaN**. Nothing was there and nothing was
  predicted; the case says nothing about c, so it is left out of every mean.
- Reference empty, prediction not (a false positive organ): **0.0**.
- Reference not empty, prediction empty (a missed organ): **0.0**.
- Mean Dice of a case = mean over the foreground classes whose Dice is not NaN
  (``nanmean``); NaN when every class is NaN.
- HD95 (mm) = the symmetric 95th percentile Hausdorff distance, computed by MONAI with the
  voxel spacing; **NaN** when the prediction or the reference is empty for the class.

Everything here is pure numpy except HD95, which imports MONAI when asked for.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from medlossy.errors import MedlossyError


def confusion_matrix(prediction: np.ndarray, reference: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` voxel counts: row = predicted label, column = reference label.

    One pass over the voxels whatever the number of classes (one ``bincount``).
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, "
                         f"reference {reference.shape}")
    pairs = prediction.astype(np.int64).ravel() * size + reference.astype(np.int64).ravel()
    return np.bincount(pairs, minlength=size * size).reshape(size, size)


def dice_per_class(prediction: np.ndarray, reference: np.ndarray,
                   classes: Iterable[int]) -> dict[int, float]:
    """Dice of every class in ``classes`` (see the module docstring for empty classes).

    Example:
        >>> reference = np.array([0, 1, 1, 2])
        >>> prediction = np.array([0, 1, 2, 2])
        >>> dice_per_class(prediction, reference, [1, 2, 3])
        {1: 0.6666666666666666, 2: 0.6666666666666666, 3: nan}
    """
    classes = [int(c) for c in classes]
    if any(c < 0 for c in classes):
        raise ValueError(f"class ids must be >= 0, got {classes}")
    size = max([*classes, int(prediction.max(initial=0)), int(reference.max(initial=0))]) + 1
    return dice_from_confusion(confusion_matrix(prediction, reference, size), classes)


def dice_from_confusion(counts: np.ndarray, classes: Iterable[int]) -> dict[int, float]:
    """Dice per class from a :func:`confusion_matrix` (classes beyond it count as empty)."""
    predicted, referenced = counts.sum(axis=1), counts.sum(axis=0)
    result = {}
    for c in classes:
        c = int(c)
        if c >= len(counts):
            result[c] = math.nan
            continue
        total = predicted[c] + referenced[c]
        result[c] = math.nan if total == 0 else float(2 * counts[c, c] / total)
    return result


def mean_dice(per_class: dict[int, float] | Sequence[float]) -> float:
    """Mean over classes ignoring NaN (both-empty classes); NaN when nothing is left."""
    values = np.asarray(list(per_class.values()) if isinstance(per_class, dict) else per_class,
                        dtype=float)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def hd95_per_class(prediction: np.ndarray, reference: np.ndarray, classes: Iterable[int],
                   spacing: Sequence[float]) -> dict[int, float]:
    """Symmetric 95th percentile Hausdorff distance in mm per class (MONAI); NaN when the
    prediction or the reference has no voxel of the class."""
    try:
        import torch
        from monai.metrics import compute_hausdorff_distance
    except ImportError:
        raise MedlossyError(None, "HD95 needs MONAI and PyTorch: pip install monai") from None
    result = {}
    for c in classes:
        predicted, referenced = prediction == c, reference == c
        if not predicted.any() or not referenced.any():
            result[int(c)] = math.nan
            continue
        with warnings.catch_warnings():
            # MONAI 1.5+ warns about an argument of its own internal call, not ours.
            warnings.simplefilter("ignore", FutureWarning)
            distance = compute_hausdorff_distance(
                torch.from_numpy(predicted[None, None]), torch.from_numpy(referenced[None, None]),
                include_background=True, percentile=95, spacing=[float(s) for s in spacing])
        result[int(c)] = float(distance.item())
    return result
