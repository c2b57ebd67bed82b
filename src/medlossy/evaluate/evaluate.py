"""Evaluate a folder of predicted label maps against an nnU-Net raw dataset's labels.

The result is a tidy table, one value per row::

    case, class, ratio_train, ratio_test, fold, metric, value

``class`` is the label name from dataset.json (``"mean"`` for the per-case mean Dice over
foreground classes), ``metric`` is ``"dice"`` or ``"hd95"`` (mm). ``ratio_train`` (the ratio
the model was trained at), ``ratio_test`` (the ratio of the images it predicted) and ``fold``
are what the caller says, NaN when unknown. Dice conventions: see :mod:`medlossy.evaluate.dice`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medlossy.datasets.nnunet_raw import RawDataset, open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.evaluate.dice import confusion_matrix, dice_from_confusion, hd95_per_class
from medlossy.io import read_volume

COLUMNS = ("case", "class", "ratio_train", "ratio_test", "fold", "metric", "value")
MEAN_CLASS = "mean"
#: Largest difference allowed between the prediction's and the reference's affine, in mm.
AFFINE_TOLERANCE_MM = 1e-3


def dataset_labels(dataset: RawDataset) -> dict[int, str]:
    """Label value -> name from dataset.json, background included.

    Accepts nnU-Net v2's ``{"name": value}`` and the older ``{"value": "name"}``. Region-based
    labels (a name mapped to a list of values) have no single value per class: refused.
    """
    labels = dataset.metadata.get("labels") or {}
    description = dataset.root / "dataset.json"
    if not labels:
        raise MedlossyError(description, "has no labels: cannot tell the classes to evaluate")
    result: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, list | tuple):
            raise MedlossyError(description, f"label {key!r} is region-based ({value}); "
                                             "evaluation needs one value per class")
        try:
            if isinstance(value, int | float) and not isinstance(value, bool):
                result[int(value)] = str(key)
            else:
                result[int(key)] = str(value)
        except ValueError:
            raise MedlossyError(description, f"label {key!r}: {value!r} is not an integer "
                                             "label value") from None
    result.setdefault(0, "background")
    return dict(sorted(result.items()))


def dataset_ratio(dataset: RawDataset) -> float:
    """The compression ratio a medlossy sweep recorded in dataset.json; NaN if none."""
    ratio = (dataset.metadata.get("medlossy") or {}).get("ratio")
    return math.nan if ratio is None else float(ratio)


def _read_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    volume = read_volume(path)
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise MedlossyError(path, f"expected a 3D label map, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array,
                                                                          np.round(array)):
        raise MedlossyError(path, "label map has non-integer values")
    if array.size and array.min() < 0:
        raise MedlossyError(path, f"label map has a negative value ({array.min():g})")
    return array.astype(np.int64, copy=False), volume.affine


def _check_geometry(prediction: Path, shape: tuple, affine: np.ndarray, reference: Path,
                    reference_shape: tuple, reference_affine: np.ndarray) -> None:
    if shape != reference_shape:
        raise MedlossyError(prediction, f"shape {shape} differs from the reference "
                                        f"{reference.name} {reference_shape}")
    difference = float(np.abs(affine - reference_affine).max())
    if difference > AFFINE_TOLERANCE_MM:
        raise MedlossyError(prediction, f"affine differs from the reference {reference.name} by "
                                        f"up to {difference:.4g} mm (tolerance "
                                        f"{AFFINE_TOLERANCE_MM:g} mm): not on the same grid")


def _check_values(path: Path, counts: np.ndarray, labels: dict[int, str]) -> None:
    present = np.flatnonzero(counts)
    unknown = sorted(int(v) for v in present if int(v) not in labels)
    if unknown:
        raise MedlossyError(path, f"label values {unknown} are not in dataset.json (known: "
                                  f"{sorted(labels)})")


def evaluate_case(prediction: str | os.PathLike[str], reference: str | os.PathLike[str],
                  labels: dict[int, str], *, hd95: bool = False) -> list[dict]:
    """Rows (case-less) of one prediction against its reference: class, metric, value."""
    prediction, reference = Path(prediction), Path(reference)
    predicted, affine = _read_labels(prediction)
    referenced, reference_affine = _read_labels(reference)
    _check_geometry(prediction, predicted.shape, affine, reference, referenced.shape,
                    reference_affine)
    size = max(int(predicted.max(initial=0)), int(referenced.max(initial=0)), max(labels)) + 1
    counts = confusion_matrix(predicted, referenced, size)
    _check_values(reference, counts.sum(axis=0), labels)
    _check_values(prediction, counts.sum(axis=1), labels)
    foreground = [value for value in labels if value != 0]
    dice = dice_from_confusion(counts, foreground)
    rows = [{"class": labels[c], "metric": "dice", "value": dice[c]} for c in foreground]
    values = np.array([dice[c] for c in foreground], dtype=float)
    mean = float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else math.nan
    rows.append({"class": MEAN_CLASS, "metric": "dice", "value": mean})
    if hd95:
        spacing = np.sqrt((reference_affine[:3, :3] ** 2).sum(axis=0))
        distances = hd95_per_class(predicted, referenced, foreground, spacing)
        rows += [{"class": labels[c], "metric": "hd95", "value": distances[c]}
                 for c in foreground]
    return rows


def reference_cases(dataset: RawDataset) -> dict[str, Path]:
    """Case name -> label file, for every training case whose label file exists."""
    return {case.name: case.label for case in dataset.cases()
            if case.split == "Tr" and case.label is not None and case.label.exists()}


def evaluate_predictions(predictions: str | os.PathLike[str],
                         reference: str | os.PathLike[str] | RawDataset, *,
                         ratio_train: float = math.nan, ratio_test: float = math.nan,
                         fold: int | str | float = math.nan, hd95: bool = False,
                         cases: Sequence[str] | None = None,
                         only_predicted: bool = False) -> pd.DataFrame:
    """Evaluate ``predictions``/CASE<file_ending> against the reference dataset's labelsTr.

    Args:
        predictions: folder of predicted label maps named like the reference labels.
        reference: nnU-Net raw dataset (folder or opened) whose labels are the truth.
        ratio_train, ratio_test, fold: copied into every row (NaN when unknown).
        hd95: also compute HD95 in mm (needs MONAI).
        cases: evaluate only these cases (default: every labelled case of the reference).
        only_predicted: evaluate the labelled cases that have a prediction (for example one
            cross-validation fold's validation cases) instead of requiring all of them.

    Returns:
        The tidy table (see the module docstring), sorted by case.

    Raises:
        MedlossyError: a missing prediction (naming the case), a prediction for a case the
            reference has no label for, shape or affine differences, label values outside
            dataset.json.
    """
    predictions = Path(predictions)
    dataset = reference if isinstance(reference, RawDataset) else open_raw_dataset(reference)
    labels = dataset_labels(dataset)
    if not predictions.is_dir():
        raise MedlossyError(predictions, "no such folder of predictions")
    ending = dataset.label_ending
    truth = reference_cases(dataset)
    predicted = {path.name[: -len(ending)]: path
                 for path in sorted(predictions.glob(f"*{ending}"))
                 if not path.name.startswith(".")}
    if cases is None:
        strays = sorted(set(predicted) - set(truth))
        if strays and not only_predicted:
            raise MedlossyError(predictions / f"{strays[0]}{ending}",
                                f"the reference {dataset.root} has no label for case "
                                f"{strays[0]}" + (f" (and {len(strays) - 1} more)"
                                                  if len(strays) > 1 else ""))
        cases = [c for c in truth if c in predicted] if only_predicted else list(truth)
    for case in cases:
        if case not in truth:
            raise MedlossyError(dataset.root, f"no label for case {case} in labelsTr")
        if case not in predicted:
            raise MedlossyError(predictions, f"no prediction for case {case} (expected "
                                             f"{case}{ending})")
    if not cases:
        raise MedlossyError(predictions, f"no prediction matches a labelled case of "
                                         f"{dataset.root}")
    rows = []
    for case in sorted(cases):
        for row in evaluate_case(predicted[case], truth[case], labels, hd95=hd95):
            rows.append({"case": case, "class": row["class"], "ratio_train": ratio_train,
                         "ratio_test": ratio_test, "fold": fold, "metric": row["metric"],
                         "value": row["value"]})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def summary(table: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Mean over cases (NaN ignored) per class for ``metric``, one row per class, "mean" last
    and with the ratio/fold columns kept, so several runs can share one table."""
    selected = table[table["metric"] == metric]
    keys = ["ratio_train", "ratio_test", "fold", "class"]
    grouped = selected.groupby(keys, dropna=False, sort=False)["value"]
    result = grouped.agg(mean="mean", cases="count").reset_index()
    order = {name: index for index, name in enumerate(dict.fromkeys(selected["class"]))}
    result["order"] = result["class"].map(order)
    return result.sort_values(["ratio_train", "ratio_test", "fold", "order"],
                              na_position="first").drop(columns="order").reset_index(drop=True)
