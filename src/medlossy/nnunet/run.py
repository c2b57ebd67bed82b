"""Train and predict with nnU-Net v2 on a medlossy dataset; evaluate like every other model.

A model folder (``out`` of :func:`train_nnunet`)::

    medlossy-model.json     backend, dataset, ratio, configuration, fold, budget, status
    nnunet/splits_final.json  the study's folds in nnU-Net's format (train / val = test)
    nnunet/results/         nnU-Net's trained fold (checkpoint_final.pth, progress.png)
    nnunet/logs/            every nnU-Net command and its output

Planning and preprocessing live in ``PREP/<dataset>_<configuration>_<plans>``, where PREP is
``cache`` when given (the study shares it between the folds and budget arms of one ratio)
or the model folder. ``preprocessed`` other than "blosc2" keeps the training cases as
medlossy stores beside nnU-Net's folder (``medlossy.nnunet.preprocessed``), converted once
per storage and shared like the preprocessing; the trainer reads them with nnU-Net's loader.
Per-ratio planning is the default and the paper's: nnU-Net plans each
ratio's dataset on its own, as anyone training nnU-Net on compressed data would. ``plans =
"x1"`` is the control: the ratio's data are preprocessed with the plans made for the
uncompressed dataset, so only the pixels differ between ratios.

Example:
    >>> model = train_nnunet("sweeps/amos/nnunet/Dataset804_AMOS_r20", "models/r20",
    ...                      configuration="3d_lowres", epochs=300)     # doctest: +SKIP
    >>> predict_nnunet(model, "sweeps/amos/nnunet/Dataset800_AMOS_r1", "preds/r1")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.datasets.nnunet_raw import RawDataset, open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.evaluate.evaluate import dataset_ratio, evaluate_predictions
from medlossy.jsonfile import write_json
from medlossy.locks import unit_lock
from medlossy.nnunet import commands
from medlossy.nnunet.commands import NnunetFolders
from medlossy.nnunet.storage import (
    BLOSC2,
    DEFAULT_CODEC,
    DEFAULT_TILE,
    PreprocessedStorage,
    parse_storage,
)
from medlossy.outputs import check_only
from medlossy.train.splits import kfold_splits, training_subset

MODEL_FILE = "medlossy-model.json"
TRAINER = "MedlossyTrainer"
PLANS_MODES = ("per-ratio", "x1")
#: Settings compared when a rerun reuses a model folder.
_IDENTITY = ("dataset_name", "configuration", "fold", "folds", "train_fraction", "epochs",
             "iterations_per_epoch", "validation_iterations", "plans",
             "preprocessed_storage")


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


def _results(model_dir: Path, model: dict) -> Path:
    folders = NnunetFolders(model_dir / "nnunet")
    return folders.trained_folder(model["dataset_name"], model["configuration"], TRAINER)


def checkpoint(model_dir: str | os.PathLike[str]) -> Path:
    """checkpoint_final.pth of the model's fold (exists once training finished)."""
    model_dir = Path(model_dir)
    model = read_model(model_dir)
    return _results(model_dir, model) / f"fold_{model['fold']}" / "checkpoint_final.pth"


def study_splits(dataset: RawDataset, folds: int, train_fraction: float,
                 ) -> list[dict[str, list[str]]]:
    """The study's folds (``medlossy.train.splits``) in nnU-Net's splits_final.json format;
    ``train_fraction`` < 1 keeps the same fixed subset of each fold's training cases as the
    built-in backend."""
    labelled = [case.name for case in dataset.cases() if case.label is not None]
    try:
        splits = kfold_splits(labelled, folds)
    except ValueError as error:
        raise MedlossyError(dataset.root, str(error)) from None
    return [{"train": training_subset(split["train"], train_fraction, fold)
             if train_fraction < 1 else split["train"], "val": split["test"]}
            for fold, split in enumerate(splits)]


def _content_digest(dataset: RawDataset) -> str:
    """Names, sizes and modification times of the dataset's files: enough to notice that a
    shared preprocessing folder belongs to other data."""
    digest = hashlib.sha256()
    for path in sorted(p for p in dataset.root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(dataset.root)} {stat.st_size} {stat.st_mtime_ns}"
                      .encode())
    return digest.hexdigest()[:12]


def prepare(dataset: RawDataset, configuration: str, plans: str, prep_root: Path, *,
            reference: RawDataset | None = None, processes: int | None = None,
            quiet: bool = False) -> NnunetFolders:
    """Plan and preprocess ``dataset`` once (locked: units on other GPUs wait for it)."""
    if plans not in PLANS_MODES:
        raise MedlossyError(None, f"plans must be one of {PLANS_MODES}, got {plans!r}")
    identifier, name = commands.dataset_id(dataset.root)
    shared = prep_root / f"{name}_{configuration}_{plans}"
    folders = NnunetFolders(shared, shared=shared)
    done = shared / "prepared.json"
    stamp = {"dataset": name, "content": _content_digest(dataset),
             "configuration": configuration, "plans": plans}
    with unit_lock(shared.with_name(shared.name + ".lock")):
        if done.exists() and json.loads(done.read_text()) == stamp:
            return folders
        for stale in (folders.preprocessed / name).glob("*_medlossy_*"):
            # stores (and their markers) of the preprocessing being redone
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        folders.create()
        folders.link_dataset(dataset.root)
        if plans == "x1" and reference is not None and reference.root != dataset.root:
            source, _ = commands.dataset_id(reference.root)
            folders.link_dataset(reference.root)
            commands.plan_and_preprocess(folders, source, configuration, processes=processes,
                                         quiet=quiet)
            commands.move_plans(folders, source, name, configuration,
                                processes=processes, quiet=quiet)
        else:
            commands.plan_and_preprocess(folders, identifier, configuration,
                                         processes=processes, quiet=quiet)
        _check_configuration(folders, name, configuration)
        write_json(done, stamp)
    return folders


def store_preprocessed(prepared: NnunetFolders, name: str, configuration: str,
                       storage: PreprocessedStorage, *, quiet: bool = False) -> str:
    """Convert the prepared dataset's preprocessed cases into stores once (locked like the
    preprocessing); returns their folder's name under the dataset's preprocessed folder."""
    plans = json.loads(prepared.plans(name).read_text())
    folder = storage.folder(plans["configurations"][configuration]["data_identifier"])
    with unit_lock(prepared.root.with_name(prepared.root.name + ".lock")):
        # the JSON the conversion writes beside the folder last (``preprocessed.marker_file``)
        if not (prepared.preprocessed / name / f"{folder}.json").is_file():
            # a conversion killed (kill -9) before it finished left its temporaries: the
            # folder (all the stores written so far) and the marker's, never reused
            for stale in (prepared.preprocessed / name).glob(f".{folder}.*partial-*"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            commands.worker(["convert", name, configuration, storage.name, "--codec",
                             storage.codec, "--tile", str(storage.tile), "--workers",
                             str(max(1, min(8, os.cpu_count() or 1)))], prepared,
                            "convert.log", quiet=quiet)
    return folder


def train_nnunet(dataset_folder: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 configuration: str = "3d_lowres", fold: int = 0, folds: int = 3,
                 epochs: int = 300, iterations_per_epoch: int = 250,
                 validation_iterations: int = 50, train_fraction: float = 1.0,
                 plans: str = "per-ratio", reference: str | os.PathLike[str] | None = None,
                 test_time_mirroring: bool = True, tile_step_size: float = 0.5,
                 cache: str | os.PathLike[str] | None = None, device: str = "auto",
                 processes: int | None = None, preprocessed: str = BLOSC2,
                 preprocessed_codec: str = DEFAULT_CODEC, preprocessed_tile: int = DEFAULT_TILE,
                 replace: bool = False, quiet: bool = False) -> Path:
    """Plan, preprocess and train one fold of the study's split with ``MedlossyTrainer``.

    Args:
        dataset_folder: nnU-Net raw dataset named DatasetXXX_Name (a sweep's ratio).
        out: model folder (see the module docstring); a rerun continues from the last
            epoch's checkpoint, or does nothing when the fold is finished.
        configuration: nnU-Net configuration: 3d_lowres (the paper's), 3d_fullres, 2d.
        fold, folds: the study's ``folds``-fold split (``medlossy.train.splits``), written
            as nnU-Net's splits_final.json, so every backend tests on the same cases.
        epochs, iterations_per_epoch: the training budget (the paper: 300 x 250).
        validation_iterations: nnU-Net's pseudo-validation batches per epoch (default 50).
        train_fraction: share of the fold's training cases (storage budget's few-shot arm).
        plans: "per-ratio" (default; the paper's) or "x1" (reuse ``reference``'s plans).
        reference: the uncompressed dataset of the same sweep, for ``plans="x1"``.
        test_time_mirroring, tile_step_size: nnU-Net's prediction settings (its defaults).
        cache: folder for preprocessing that units of one study share (default: ``out``).
        device: "auto" (CUDA when present), "cpu" or "cuda".
        processes: preprocessing processes (default: the cores, at most 8).
        preprocessed: how the preprocessed training images are kept: "blosc2" (nnU-Net's
            float32), "lossless" or "xR" (16-bit medlossy stores, see
            ``medlossy.nnunet.preprocessed``), with ``preprocessed_codec`` ("htj2k" or
            "jpeg2k") in tiles of ``preprocessed_tile`` (0: whole slices).
        replace: start over in ``out`` when it holds a model of another dataset or recipe
            (refused without it).
        quiet: keep nnU-Net's output in the logs only.
    """
    commands.require_nnunet()
    if epochs < 1 or iterations_per_epoch < 1 or validation_iterations < 1:
        raise MedlossyError(None, "epochs, iterations and validation iterations must be >= 1")
    if not 0 <= fold < folds:
        raise MedlossyError(None, f"fold must be in 0..{folds - 1} (the study's {folds}-fold "
                                  f"split), got {fold}")
    if not 0 < train_fraction <= 1:
        raise MedlossyError(None, f"train fraction must be in (0, 1], got {train_fraction}")
    try:
        storage = parse_storage(preprocessed, preprocessed_codec, preprocessed_tile)
    except ValueError as error:
        raise MedlossyError(None, str(error)) from None
    dataset = open_raw_dataset(dataset_folder)
    identifier, name = commands.dataset_id(dataset.root)
    splits = study_splits(dataset, folds, train_fraction)
    model_dir = Path(out)
    model = {"backend": "nnunet", "dataset_id": identifier, "dataset_name": name,
             "dataset_folder": str(dataset.root.resolve()), "ratio": dataset_ratio(dataset),
             "configuration": configuration, "fold": fold, "folds": folds,
             "train_fraction": train_fraction, "epochs": epochs,
             "iterations_per_epoch": iterations_per_epoch,
             "validation_iterations": validation_iterations, "plans": plans,
             "trainer": TRAINER, "test_time_mirroring": test_time_mirroring,
             "tile_step_size": tile_step_size, "train_cases": splits[fold]["train"],
             "test_cases": splits[fold]["val"],
             "labels": dataset.metadata.get("labels", {}), "status": "training"}
    if not storage.is_blosc2:  # absent for nnU-Net's own files, as in earlier model folders
        model["preprocessed_storage"] = storage.to_dict()
    previous = read_model(model_dir) if (model_dir / MODEL_FILE).exists() else None
    # "nnunet" alone: a run killed before it wrote its description
    foreign = sorted(p.name for p in model_dir.iterdir() if p.name != "nnunet") \
        if previous is None and model_dir.is_dir() else []
    if foreign and not replace:
        raise MedlossyError(model_dir, f"holds files that are not an nnU-Net model's "
                                       f"({', '.join(foreign[:3])}): training writes only into "
                                       "a new or empty folder or resumes its own; choose a "
                                       "new --out")
    another = previous is not None and any(previous.get(k) != model.get(k) for k in _IDENTITY)
    if another and replace:
        # its checkpoints would otherwise be resumed as this model's
        shutil.rmtree(model_dir / "nnunet", ignore_errors=True)
        previous = None
    elif another:
        raise MedlossyError(model_dir, "holds an nnU-Net model of another dataset, "
                                       "configuration, fold, budget or preprocessed "
                                       "storage; choose a new --out")
    if previous is not None and previous.get("status") == "trained" and \
            checkpoint(model_dir).exists():
        return model_dir
    folders = NnunetFolders(model_dir / "nnunet")
    folders.logs.mkdir(parents=True, exist_ok=True)
    write_json(model_dir / MODEL_FILE, model)
    splits_file = folders.root / "splits_final.json"
    write_json(splits_file, splits)
    reference_dataset = open_raw_dataset(reference) if reference is not None else None
    prepared = prepare(dataset, configuration, plans,
                       Path(cache) if cache is not None else model_dir / "nnunet",
                       reference=reference_dataset, processes=processes, quiet=quiet)
    stores = [] if storage.is_blosc2 else [
        "--preprocessed-folder", store_preprocessed(prepared, name, configuration, storage,
                                                    quiet=quiet)]
    training = NnunetFolders(folders.root, shared=prepared.root)
    commands.worker(["train", name, configuration, str(fold), "--epochs", str(epochs),
                     "--iterations", str(iterations_per_epoch), "--validation-iterations",
                     str(validation_iterations), "--splits", str(splits_file.resolve()),
                     "--device", commands.resolve_device(device), *stores],
                    training, f"train_{configuration}_fold{fold}.log", quiet=quiet)
    final = checkpoint(model_dir)
    if not final.exists():
        raise MedlossyError(final.parent, "nnU-Net finished without writing "
                                          "checkpoint_final.pth; see the training log")
    record = json.loads((final.parent / "medlossy-training.json").read_text())
    write_json(model_dir / MODEL_FILE, {**model, "status": "trained", "training": record,
                                        "preprocessed": str(prepared.root.resolve())})
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
                            "only when the images are too large for 3d_fullres: use "
                            "configuration = \"3d_fullres\"")


def held_out_cases(model_dir: str | os.PathLike[str]) -> list[str]:
    """The test cases of the model's fold (the study's split)."""
    return list(read_model(model_dir)["test_cases"])


#: What nnU-Net's predict_from_files writes beside the label maps.
_PREDICTION_MARKER = "predict_from_raw_data_args.json"
_PREDICTION_FILES = re.compile(r".+\.(nii\.gz|nii|nrrd|mha|json)")


def _check_predictions_folder(out: Path) -> None:
    """``out`` is replaced whole: it may only be new, empty, or earlier predictions."""
    check_only(out, _PREDICTION_FILES, "a predictions folder")
    if out.is_dir() and any(out.iterdir()) and not (out / _PREDICTION_MARKER).is_file():
        raise MedlossyError(out, f"holds files but no {_PREDICTION_MARKER}: not an nnU-Net "
                                 "predictions folder; choose a new or empty folder")


def predict_nnunet(model_dir: str | os.PathLike[str], dataset_folder: str | os.PathLike[str],
                   out: str | os.PathLike[str], *, cases: str | Sequence[str] = "test",
                   device: str = "auto", quiet: bool = False) -> Path:
    """Predict cases of ``dataset_folder`` with a model from :func:`train_nnunet`.

    ``dataset_folder`` may be another ratio of the same sweep (the cross-ratio experiment):
    case names are shared. ``cases``: "test" (default) = the cases the model's fold held
    out, "all" = every case of the dataset, or a list of case names. Predictions appear in
    ``out`` as CASE<file_ending>, all at once; returns ``out``.
    """
    model_dir = Path(model_dir)
    _check_predictions_folder(Path(out))
    model = read_model(model_dir)
    commands.require_nnunet()
    if not checkpoint(model_dir).exists():
        raise MedlossyError(model_dir, "the model is not trained yet (no checkpoint_final.pth)")
    dataset = open_raw_dataset(dataset_folder)
    _check_file_ending(_results(model_dir, model) / "dataset.json", dataset)
    available = {case.name: case for case in dataset.cases()}
    if cases == "all":
        wanted = list(available)
    elif cases == "test":
        wanted = [name for name in model["test_cases"] if name in available]
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
    options = ["--device", commands.resolve_device(device), "--step-size",
               str(model.get("tile_step_size", 0.5))]
    if not model.get("test_time_mirroring", True):
        options.append("--no-mirroring")
    with tempfile.TemporaryDirectory(prefix=".medlossy-input-", dir=out.parent) as scratch:
        images = Path(scratch)
        for name in wanted:
            for channel, path in available[name].images.items():
                (images / f"{name}_{channel:04d}{dataset.file_ending}").symlink_to(
                    Path(path).resolve())
        with atomic_output(out) as temporary:
            temporary.mkdir(parents=True)
            commands.worker(["predict", str(_results(model_dir, model)), str(model["fold"]),
                             str(images), str(temporary), *options], folders, "predict.log",
                            quiet=quiet)
            _name_like_labels(temporary, dataset)
    return out


def _name_like_labels(folder: Path, dataset: RawDataset) -> None:
    """nnU-Net names its label maps with the dataset's file ending; a stores dataset's
    (``CASE.mlstore``, NIfTI files: see ``store_io``) are renamed as its labels are named
    (``CASE.nii.gz``), for medlossy's evaluation and for any viewer."""
    ending = dataset.file_ending
    if ending == dataset.label_ending:
        return
    for path in folder.glob(f"*{ending}"):
        path.rename(path.with_name(path.name[: -len(ending)] + dataset.label_ending))


def _check_file_ending(model_dataset: Path, dataset: RawDataset) -> None:
    """nnU-Net lists a prediction's inputs by the file ending of the dataset the model was
    trained on: a model of decoded NIfTI images cannot read store links, nor the reverse."""
    try:
        trained = json.loads(model_dataset.read_text()).get("file_ending", ".nii.gz")
    except (OSError, json.JSONDecodeError):
        return  # nnU-Net reports a damaged model folder itself
    if trained != dataset.file_ending:
        raise MedlossyError(dataset.root, f"images end in {dataset.file_ending}, the model's "
                                          f"training images in {trained}: predict a dataset "
                                          "of the same sweep layout (--layout)")


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
