"""Train and predict with nnU-Net v2 on a medlossy dataset; evaluate like every other model.

A model folder (``out`` of :func:`train_nnunet`)::

    medlossy-model.json     backend, dataset id/name/folder, ratio, config, fold, trainer
    nnunet/raw/             DatasetXXX_Name -> the dataset (symlink)
    nnunet/preprocessed/    nnU-Net's plans, splits and preprocessed data
    nnunet/results/         nnU-Net's trained fold (checkpoint_final.pth)
    nnunet/logs/            every nnU-Net command and its output

Example:
    >>> model = train_nnunet("sweeps/amos/nnunet/Dataset804_AMOS_r20", "models/r20",
    ...                      config="3d_lowres", fold=0)              # doctest: +SKIP
    >>> predict_nnunet(model, "sweeps/amos/nnunet/Dataset800_AMOS_r1", "preds/r1")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.datasets.nnunet_raw import RawDataset, open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.evaluate.evaluate import dataset_ratio, evaluate_predictions
from medlossy.nnunet import commands
from medlossy.nnunet.commands import NnunetFolders

MODEL_FILE = "medlossy-model.json"
FOLDS = ("0", "1", "2", "3", "4", "all")


def _fold(fold: int | str) -> int | str:
    if str(fold) not in FOLDS:
        raise MedlossyError(None, f"fold must be 0..4 or 'all' (nnU-Net's 5-fold split), "
                                  f"got {fold!r}")
    return "all" if str(fold) == "all" else int(fold)


def read_model(model_dir: str | os.PathLike[str]) -> dict:
    """The description :func:`train_nnunet` wrote; errors name the folder."""
    path = Path(model_dir) / MODEL_FILE
    try:
        model = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedlossyError(model_dir, f"not a medlossy nnU-Net model folder (no {MODEL_FILE}"
                                       "; train one with `medlossy train --backend nnunet`)"
                            ) from None
    except json.JSONDecodeError as error:
        raise MedlossyError(path, f"not valid JSON ({error})") from None
    if model.get("backend") != "nnunet":
        raise MedlossyError(path, f"not an nnU-Net model (backend {model.get('backend')!r})")
    return model


def _checkpoint(model_dir: Path, model: dict) -> Path:
    folders = NnunetFolders(model_dir / "nnunet")
    return (folders.trained_folder(model["dataset_name"], model["config"], model["trainer"]) /
            f"fold_{model['fold']}" / "checkpoint_final.pth")


def _write_model(model_dir: Path, model: dict) -> None:
    with atomic_output(model_dir / MODEL_FILE) as temporary:
        temporary.write_text(json.dumps(model, indent=2) + "\n")


def train_nnunet(dataset_folder: str | os.PathLike[str], out: str | os.PathLike[str],
                 config: str = "3d_fullres", fold: int | str = 0,
                 trainer: str = "nnUNetTrainer", device: str = "auto", *,
                 processes: int | None = None, quiet: bool = False) -> Path:
    """Plan, preprocess and train one nnU-Net v2 fold on ``dataset_folder``; returns ``out``.

    Args:
        dataset_folder: nnU-Net raw dataset named DatasetXXX_Name (a sweep's per-ratio dataset).
        out: model folder to create (see the module docstring); a rerun continues training
            from nnU-Net's latest checkpoint, or does nothing when the fold is finished.
        config: nnU-Net configuration: 2d, 3d_fullres, 3d_lowres (the study's), ...
        fold: 0..4 of nnU-Net's 5-fold split, or "all".
        trainer: an nnU-Net trainer class, e.g. nnUNetTrainer_1epoch for a smoke test.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        processes: preprocessing processes (default: the cores, at most 8).
        quiet: keep nnU-Net's output in the logs only.
    """
    fold = _fold(fold)
    commands.require_nnunet()
    dataset = open_raw_dataset(dataset_folder)
    identifier, name = commands.dataset_id(dataset.root)
    model_dir = Path(out)
    folders = NnunetFolders(model_dir / "nnunet").create()
    folders.link_dataset(dataset.root)
    model = {"backend": "nnunet", "dataset_id": identifier, "dataset_name": name,
             "dataset_folder": str(dataset.root.resolve()), "ratio": dataset_ratio(dataset),
             "config": config, "fold": fold, "trainer": trainer, "plans": commands.PLANS,
             "labels": dataset.metadata.get("labels", {}), "status": "training"}
    previous = read_model(model_dir) if (model_dir / MODEL_FILE).exists() else None
    if previous is not None and any(previous.get(key) != model[key] for key in
                                    ("dataset_id", "dataset_name", "config", "fold", "trainer")):
        raise MedlossyError(model_dir, "holds a model of another dataset, configuration, fold "
                                       "or trainer; choose a new --out")
    checkpoint = _checkpoint(model_dir, model)
    if not checkpoint.exists():
        _write_model(model_dir, model)
        if not folders.plans(name).exists() or previous is None:
            commands.plan_and_preprocess(folders, identifier, config, processes=processes,
                                         quiet=quiet)
        _check_configuration(folders, name, config)
        latest = checkpoint.with_name("checkpoint_latest.pth")
        commands.train(folders, identifier, config, fold, trainer=trainer, device=device,
                       resume=latest.exists(), quiet=quiet)
        if not checkpoint.exists():
            raise MedlossyError(checkpoint.parent, "nnU-Net finished without writing "
                                                   "checkpoint_final.pth; see the training log")
    _write_model(model_dir, {**model, "status": "trained"})
    return model_dir


def _check_configuration(folders: NnunetFolders, name: str, config: str) -> None:
    """nnU-Net plans 3d_lowres only for large images; say so instead of a traceback."""
    try:
        configurations = json.loads(folders.plans(name).read_text())["configurations"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        raise MedlossyError(folders.plans(name), "nnU-Net wrote no usable plans; see "
                                                 "logs/plan_and_preprocess.log") from None
    if config not in configurations:
        raise MedlossyError(folders.plans(name),
                            f"nnU-Net planned no {config} configuration for this dataset "
                            f"(planned: {', '.join(sorted(configurations))}); 3d_lowres exists "
                            "only when the images are too large for 3d_fullres")


def held_out_cases(model_dir: str | os.PathLike[str]) -> list[str] | None:
    """Validation cases of the model's fold (nnU-Net's splits_final.json); None for "all"."""
    model_dir = Path(model_dir)
    model = read_model(model_dir)
    if model["fold"] == "all":
        return None
    splits_file = NnunetFolders(model_dir / "nnunet").splits(model["dataset_name"])
    try:
        splits = json.loads(splits_file.read_text())
        return list(splits[int(model["fold"])]["val"])
    except (FileNotFoundError, json.JSONDecodeError, IndexError, KeyError):
        raise MedlossyError(splits_file, "no usable nnU-Net split for the model's fold") from None


def predict_nnunet(model_dir: str | os.PathLike[str], dataset_folder: str | os.PathLike[str],
                   out: str | os.PathLike[str], *, cases: str | Sequence[str] = "test",
                   device: str = "auto", quiet: bool = False) -> Path:
    """Predict cases of ``dataset_folder`` with a model from :func:`train_nnunet`.

    ``dataset_folder`` may be another ratio of the same sweep (the cross-ratio experiment):
    case names are shared. ``cases``: "test" (default) = the cases the model's fold held out
    from training (every case for fold "all"), "all" = every case of the dataset, or a list
    of case names. Predictions appear in ``out`` as CASE<file_ending>, all at once; returns
    ``out``.
    """
    model_dir = Path(model_dir)
    model = read_model(model_dir)
    commands.require_nnunet()
    if not _checkpoint(model_dir, model).exists():
        raise MedlossyError(model_dir, "the model is not trained yet (no checkpoint_final.pth)")
    dataset = open_raw_dataset(dataset_folder)
    available = {case.name: case for case in dataset.cases()}
    if cases == "all":
        wanted = list(available)
    elif cases == "test":
        held_out = held_out_cases(model_dir)
        wanted = list(available) if held_out is None else \
            [name for name in held_out if name in available]
        if not wanted:
            raise MedlossyError(dataset.root, "none of the model's held-out cases are in this "
                                              "dataset")
    elif isinstance(cases, str):
        raise MedlossyError(None, f"cases must be 'test', 'all' or a list of names, got "
                                  f"{cases!r}")
    else:
        wanted = list(cases)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise MedlossyError(dataset.root, f"has no images for case {missing[0]}"
                                          + (f" (and {len(missing) - 1} more)"
                                             if len(missing) > 1 else ""))
    if not wanted:
        raise MedlossyError(dataset.root, "no case to predict")
    folders = NnunetFolders(model_dir / "nnunet")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".medlossy-input-", dir=out.parent) as scratch:
        images = Path(scratch)
        for name in wanted:
            for channel, path in available[name].images.items():
                (images / f"{name}_{channel:04d}{dataset.file_ending}").symlink_to(
                    Path(path).resolve())
        with atomic_output(out) as temporary:
            temporary.mkdir(parents=True)
            commands.predict(folders, images, temporary, model["dataset_id"], model["config"],
                             model["fold"], trainer=model["trainer"], device=device,
                             quiet=quiet)
    return out


def evaluate_nnunet(model_dir: str | os.PathLike[str], dataset_folder: str | os.PathLike[str],
                    predictions: str | os.PathLike[str], *,
                    reference: str | os.PathLike[str] | RawDataset | None = None,
                    hd95: bool = False) -> pd.DataFrame:
    """The tidy table of :func:`predict_nnunet`'s output: ratio_train = the model's training
    ratio, ratio_test = ``dataset_folder``'s ratio, fold = the model's fold. The truth is
    ``reference``'s labels (default: ``dataset_folder``'s, which a sweep copies exactly)."""
    model = read_model(model_dir)
    dataset = open_raw_dataset(dataset_folder)
    ratio_train = model.get("ratio")
    return evaluate_predictions(
        predictions, reference if reference is not None else dataset,
        ratio_train=math.nan if ratio_train is None else float(ratio_train),
        ratio_test=dataset_ratio(dataset), fold=model["fold"], hd95=hd95,
        only_predicted=True)
