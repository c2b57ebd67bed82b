"""Predict every labelled case of every ratio of a sweep with a pretrained model, evaluate.

The truth is always the exact labels (the sweep copies them bit for bit into every ratio's
dataset; the ratio-1 dataset's are used when the sweep has one). Rows get ``ratio_test`` =
the ratio of the images the model saw, and ``ratio_train`` NaN for an external checkpoint
(trained on data of unknown storage) or the training ratio of a medlossy nnU-Net model.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.evaluate.evaluate import (
    COLUMNS,
    dataset_labels,
    evaluate_predictions,
    reference_cases,
)
from medlossy.io import write_volume
from medlossy.pretrained.labelmap import lookup_table, read_label_map
from medlossy.pretrained.swin_unetr import (
    BTCV,
    SwinUNETRSetup,
    load_swin_unetr,
    predict_image,
    resolve_device,
)
from medlossy.terminal import progress_bar
from medlossy.volume import Volume

ARCHITECTURES = ("swin_unetr", "nnunet")


def sweep_datasets(sweep: str | os.PathLike[str]) -> dict[float, Path]:
    """Ratio -> nnU-Net raw dataset folder of a sweep, from its sweep.json."""
    sweep = Path(sweep)
    description = sweep / "sweep.json"
    try:
        document = json.loads(description.read_text())
        datasets = document["datasets"]
        ratios = [float(r) for r in document["ratios"]]
    except FileNotFoundError:
        raise MedlossyError(sweep, "not a sweep folder (no sweep.json; make one with "
                                   "`medlossy dataset compress`)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise MedlossyError(description, f"not a sweep description ({error})") from None
    folders = {}
    for ratio in sorted(ratios):
        name = datasets.get(f"r{ratio:g}")
        folder = sweep / "nnunet" / str(name)
        if name is None or not (folder / "dataset.json").is_file():
            raise MedlossyError(folder, f"the dataset of ratio {ratio:g} is missing")
        folders[ratio] = folder
    return folders


def _predict_swin_unetr(model, folder: Path, out: Path, table, setup: SwinUNETRSetup,
                        device, show_progress: bool, ratio: float) -> None:
    dataset = open_raw_dataset(folder)
    if dataset.channels != [0]:
        raise MedlossyError(folder, f"Swin UNETR (BTCV) takes one CT channel; the dataset has "
                                    f"channels {dataset.channels}")
    labelled = reference_cases(dataset)
    cases = [case for case in dataset.cases() if case.name in labelled]
    with atomic_output(out) as temporary:
        temporary.mkdir(parents=True)
        for case in progress_bar(cases, desc=f"swin_unetr x{ratio:g}", unit="case",
                                 show=show_progress):
            labels, affine = predict_image(model, case.images[0], setup, device)
            write_volume(Volume(table[labels].astype("uint8"), affine),
                         temporary / f"{case.name}{dataset.file_ending}")


def evaluate_pretrained(checkpoint: str | os.PathLike[str], sweep: str | os.PathLike[str], *,
                        arch: str = "swin_unetr",
                        label_map: str | os.PathLike[str] | None = None,
                        setup: SwinUNETRSetup = BTCV, device: str = "auto",
                        hd95: bool = False, predictions: str | os.PathLike[str] | None = None,
                        show_progress: bool = False) -> pd.DataFrame:
    """Evaluate ``checkpoint`` on every ratio of ``sweep``; returns the tidy table.

    Args:
        checkpoint: a Swin UNETR weights file (``arch="swin_unetr"``) or a model folder from
            :func:`medlossy.nnunet.run.train_nnunet` (``arch="nnunet"``; it predicts the cases
            its fold held out).
        sweep: folder written by ``medlossy dataset compress``.
        label_map: JSON file {"model class id": "dataset class id"}; None = identity.
        setup: network size and BTCV preprocessing (swin_unetr only).
        device: "auto", "cpu" or "cuda".
        hd95: also HD95 in mm.
        predictions: keep the predicted label maps in PREDICTIONS/r{ratio}/ (default: a
            temporary folder, removed afterwards).
    """
    if arch not in ARCHITECTURES:
        raise MedlossyError(None, f"unknown --arch {arch!r} (choose from {ARCHITECTURES})")
    checkpoint = Path(checkpoint)
    folders = sweep_datasets(sweep)
    reference = open_raw_dataset(folders.get(1.0, next(iter(folders.values()))))
    labels = dataset_labels(reference)
    if arch == "swin_unetr":
        torch_device = resolve_device(device)
        model = load_swin_unetr(checkpoint, setup).to(torch_device)
        mapping = None if label_map is None else read_label_map(label_map)
        table = lookup_table(mapping, setup.out_channels, source=label_map,
                             allowed=set(labels))
    elif label_map is not None:
        raise MedlossyError(label_map, "--label-map applies to swin_unetr only (an nnU-Net "
                                       "model predicts its dataset's own labels)")
    with tempfile.TemporaryDirectory(prefix="medlossy-predictions-") as scratch:
        root = Path(predictions) if predictions is not None else Path(scratch)
        results = []
        for ratio, folder in folders.items():
            out = root / f"r{ratio:g}"
            if arch == "swin_unetr":
                _predict_swin_unetr(model, folder, out, table, setup, torch_device,
                                    show_progress, ratio)
                results.append(evaluate_predictions(out, reference, ratio_test=ratio,
                                                    hd95=hd95))
            else:
                from medlossy.nnunet.run import evaluate_nnunet, predict_nnunet

                predict_nnunet(checkpoint, folder, out, device=device,
                               quiet=not show_progress)
                results.append(evaluate_nnunet(checkpoint, folder, out, reference=reference,
                                               hd95=hd95))
    table_out = pd.concat(results, ignore_index=True)
    if arch == "swin_unetr":
        table_out["ratio_train"] = math.nan
    return table_out[list(COLUMNS)]
