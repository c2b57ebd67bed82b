"""How far a pretrained model's output moves when its input is compressed.

Most archives have no labels, so the reference is the model's own prediction on the
lossless (x1) images of the sweep: per model, codec, case, ratio and class, the Dice and
HD95 (mm) of the prediction at that ratio against it, and the predicted volume and its
difference in mL. Where the sweep has labels (matched to the model's classes by name, or by
a label map where names differ), the same rows against the labels follow (``reference`` =
"labels"). Where several models of one task run, each one's x1 prediction is compared with
the others' (``reference`` = "<other model> x1"): the scale of the disagreement between two
trained networks, beside each one's compression effect.

One row per value set::

    model, codec, case, class, ratio, reference, dice, hd95_mm, volume_ml,
    reference_volume_ml, volume_difference_ml

``class`` "mean" is the mean Dice over the model's classes (the study's intervals use it).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medlossy.datasets.nnunet_raw import RawDataset, open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.evaluate.dice import dice_per_class, hd95_per_class
from medlossy.evaluate.evaluate import MEAN_CLASS, dataset_labels
from medlossy.io import read_volume
from medlossy.jsonfile import read_json
from medlossy.pretrained.base import PretrainedModel
from medlossy.pretrained.evaluate import sweep_datasets

COLUMNS = ("model", "codec", "case", "class", "ratio", "reference", "dice", "hd95_mm",
           "volume_ml", "reference_volume_ml", "volume_difference_ml")
OWN_X1 = "x1"
LABELS = "labels"


def read_class_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{"model class name": "dataset class name"}`` from a JSON file."""
    document = read_json(Path(path), "no such label map")
    if not isinstance(document, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in document.items()):
        raise MedlossyError(path, 'expected a JSON object {"model class": "dataset class"} of '
                                  "class names")
    return document


def _images(dataset: RawDataset) -> dict[str, Path]:
    """Case -> its one image, every case of the dataset (training and test)."""
    cases = {}
    for case in dataset.cases():
        if set(case.images) != {0}:
            raise MedlossyError(dataset.root, f"case {case.name} has channels "
                                              f"{sorted(case.images)}: the pretrained models "
                                              "take one image")
        cases[case.name] = case.images[0]
    return cases


def predict_sweep(model: PretrainedModel, sweep: str | os.PathLike[str], out: Path, *,
                  show_progress: bool = False) -> dict[float, Path]:
    """Ratio -> folder of ``model``'s label maps for every case of that ratio's dataset,
    under ``out``/r{ratio}; a folder already there (a rerun) is reused."""
    folders = sweep_datasets(sweep)
    if 1.0 not in folders:
        raise MedlossyError(sweep, "the sweep has no x1 (lossless) dataset: the agreement is "
                                   "measured against the model's prediction on it")
    predictions = {}
    for ratio, folder in folders.items():
        dataset = open_raw_dataset(folder)
        target = out / f"r{ratio:g}"
        if not target.is_dir():
            channel = str(dataset.metadata.get("channel_names", {}).get("0", ""))
            model.predict_cases(_images(dataset), target, ending=dataset.file_ending,
                                channel=channel, show_progress=show_progress,
                                description=f"{model.name} x{ratio:g}")
        predictions[ratio] = target
    return predictions


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    volume = read_volume(path)
    return np.asarray(volume.array).astype(np.int64), volume.affine


def compare(prediction: np.ndarray, reference: np.ndarray, affine: np.ndarray,
            classes: Mapping[str, tuple[int, int]], *, hd95: bool = True) -> list[dict]:
    """Rows (class, dice, hd95_mm, volume_ml, reference_volume_ml, volume_difference_ml) of
    ``prediction`` against ``reference``; ``classes``: name -> (value in the prediction,
    value in the reference)."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    rows = []
    for name, (mine, theirs) in classes.items():
        predicted, referenced = prediction == mine, reference == theirs
        dice = dice_per_class(predicted.astype(np.uint8), referenced.astype(np.uint8), [1])[1]
        distance = (hd95_per_class(predicted.astype(np.uint8), referenced.astype(np.uint8),
                                   [1], spacing)[1] if hd95 else math.nan)
        volume, reference_volume = predicted.sum() * voxel_ml, referenced.sum() * voxel_ml
        rows.append({"class": name, "dice": dice, "hd95_mm": distance, "volume_ml": volume,
                     "reference_volume_ml": reference_volume,
                     "volume_difference_ml": volume - reference_volume})
    values = [row["dice"] for row in rows if not math.isnan(row["dice"])]
    rows.append({"class": MEAN_CLASS, "dice": float(np.mean(values)) if values else math.nan,
                 "hd95_mm": math.nan, "volume_ml": math.nan, "reference_volume_ml": math.nan,
                 "volume_difference_ml": math.nan})
    return rows


def label_classes(model: PretrainedModel, dataset: RawDataset,
                  class_map: Mapping[str, str] | None = None) -> dict[str, tuple[int, int]]:
    """Model class name -> (model value, dataset label value), matched by name (or through
    ``class_map``); classes the dataset does not have are left out."""
    names = {name: value for value, name in dataset_labels(dataset).items() if value != 0}
    class_map = dict(class_map or {})
    unknown = sorted(set(class_map) - set(model.classes))
    if unknown:
        raise MedlossyError(None, f"--label-map names model classes {unknown} that "
                                  f"{model.name} does not have (its classes: "
                                  f"{', '.join(model.classes)})")
    matched = {}
    for value, name in enumerate(model.classes, start=1):
        wanted = class_map.get(name, name)
        if wanted in names:
            matched[name] = (value, names[wanted])
        elif name in class_map:
            raise MedlossyError(dataset.root / "dataset.json", f"has no class {wanted!r} "
                                                               "(--label-map)")
    return matched


def _labelled(dataset: RawDataset) -> dict[str, Path]:
    return {case.name: case.label for case in dataset.cases()
            if case.label is not None and case.label.exists()}


def agreement(model: PretrainedModel, predictions: Mapping[float, Path], reference: RawDataset,
              *, codec: str = "", class_map: Mapping[str, str] | None = None,
              hd95: bool = True) -> pd.DataFrame:
    """The rows of one model's predictions at every ratio (see the module docstring);
    ``reference``: the x1 dataset, whose labels (if any) are the second reference."""
    own = {name: (value, value) for value, name in enumerate(model.classes, start=1)}
    labels = _labelled(reference)
    matched = label_classes(model, reference, class_map) if labels else {}
    if labels and not matched:
        print(f"note: {model.name}'s classes ({', '.join(model.classes)}) match none of the "
              f"labels of {reference.root.name}: agreement with its own x1 prediction only "
              "(--label-map to match them)", file=sys.stderr)
    ending = reference.file_ending
    rows = []
    for case in sorted(_images(reference)):
        baseline, affine = _read(predictions[1.0] / f"{case}{ending}")
        truth = _read(labels[case])[0] if case in labels and matched else None
        for ratio, folder in sorted(predictions.items()):
            predicted = baseline if ratio == 1.0 else _read(folder / f"{case}{ending}")[0]
            comparisons = [(OWN_X1, baseline, own)]
            if truth is not None:
                comparisons.append((LABELS, truth, matched))
            for name, target, classes in comparisons:
                for row in compare(predicted, target, affine, classes, hd95=hd95):
                    rows.append({"model": model.name, "codec": codec, "case": case,
                                 "ratio": ratio, "reference": name, **row})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def disagreement(models: Sequence[PretrainedModel], predictions: Sequence[Mapping[float, Path]],
                 reference: RawDataset, *, codec: str = "", hd95: bool = True) -> pd.DataFrame:
    """Each model's x1 prediction against every other model's of the same task, per case
    (classes matched by name): ``reference`` = "<other model> x1", ratio 1."""
    rows = []
    ending = reference.file_ending
    for first, mine in zip(models, predictions, strict=True):
        for second, theirs in zip(models, predictions, strict=True):
            if first is second or first.task != second.task:
                continue
            shared = {name: (first.classes.index(name) + 1, second.classes.index(name) + 1)
                      for name in first.classes if name in second.classes}
            if not shared:
                continue
            for case in sorted(_images(reference)):
                predicted, affine = _read(mine[1.0] / f"{case}{ending}")
                other = _read(theirs[1.0] / f"{case}{ending}")[0]
                for row in compare(predicted, other, affine, shared, hd95=hd95):
                    rows.append({"model": first.name, "codec": codec, "case": case,
                                 "ratio": 1.0, "reference": f"{second.name} {OWN_X1}", **row})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def sweep_codec(sweep: str | os.PathLike[str]) -> str:
    """The codec a sweep compressed with (sweep.json)."""
    return str(json.loads((Path(sweep) / "sweep.json").read_text()).get("codec", "jpeg2k"))


def evaluate_agreement(models: Sequence[PretrainedModel], sweep: str | os.PathLike[str], *,
                       class_map: Mapping[str, str] | None = None, hd95: bool = True,
                       predictions: str | os.PathLike[str] | None = None,
                       show_progress: bool = False) -> pd.DataFrame:
    """Predict every case of every ratio of ``sweep`` with each model; the agreement table
    (with the models' disagreement at x1 when several of one task run).

    ``predictions``: keep the label maps in PREDICTIONS/MODEL/r{ratio}/ (and reuse those
    already there); default: a temporary folder, removed afterwards.
    """
    folders = sweep_datasets(sweep)
    codec = sweep_codec(sweep)
    with tempfile.TemporaryDirectory(prefix="medlossy-predictions-") as scratch:
        root = Path(predictions) if predictions is not None else Path(scratch)
        predicted = [predict_sweep(model, sweep, root / model.name,
                                   show_progress=show_progress) for model in models]
        reference = open_raw_dataset(folders[1.0])
        tables = [agreement(model, folder, reference, codec=codec, class_map=class_map,
                            hd95=hd95) for model, folder in zip(models, predicted, strict=True)]
        tables.append(disagreement(models, predicted, reference, codec=codec, hd95=hd95))
    return pd.concat([t for t in tables if not t.empty], ignore_index=True)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per model, codec, reference, ratio and class: mean Dice, mean HD95, mean absolute
    volume difference (mL) and the number of cases."""
    keys = ["model", "codec", "reference", "ratio", "class"]
    grouped = table.groupby(keys, sort=False)
    result = grouped.agg(dice=("dice", "mean"), hd95_mm=("hd95_mm", "mean"),
                         volume_ml=("volume_ml", "mean"), cases=("case", "nunique"))
    result["abs_volume_difference_ml"] = grouped["volume_difference_ml"].apply(
        lambda v: v.abs().mean())
    return result.reset_index()
