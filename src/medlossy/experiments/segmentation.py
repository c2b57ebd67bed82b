"""Experiments 2-5 of the study, built from cached units: train, predict, evaluate.

Each unit lives in a folder named by a hash of its inputs (the training config and the
checksums of the dataset it reads), so a rerun skips what is done, a killed unit resumes
(training from its last epoch checkpoint, prediction case by case) and changing one ratio
reruns only the units that depend on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.checksums import sha256_file
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.datasets.sweep import ratio_tag
from medlossy.evaluate.evaluate import evaluate_predictions
from medlossy.experiments.config import StudyConfig
from medlossy.train.config import TrainConfig
from medlossy.train.inference import predict_dataset
from medlossy.train.loop import DESCRIPTION_FILE, train_model

RESULT_COLUMNS = ("experiment", "dataset", "case", "class", "ratio_train", "ratio_test",
                  "fold", "train_fraction", "metric", "value")


def folder_digest(folder: Path) -> str:
    """Hash of every image and label file's name and content: what a model was trained on."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*Tr/*")) + sorted(folder.glob("imagesTs/*")):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SweepFolders:
    """The decoded nnU-Net dataset of every ratio of one source dataset."""

    name: str
    by_ratio: dict[float, Path]

    def __getitem__(self, ratio: float) -> Path:
        return self.by_ratio[ratio]


class Units:
    """Cached train / predict / evaluate units under ``root``."""

    def __init__(self, root: Path, show_progress: bool) -> None:
        self.root = root
        self.show_progress = show_progress
        self._digests: dict[Path, str] = {}

    def _digest(self, folder: Path) -> str:
        if folder not in self._digests:
            self._digests[folder] = folder_digest(folder)
        return self._digests[folder]

    def model(self, dataset: str, folder: Path, ratio: float, config: TrainConfig) -> Path:
        key = hashlib.sha256(json.dumps([config.to_dict(), self._digest(folder)],
                                        sort_keys=True, default=str).encode()).hexdigest()[:12]
        out = (self.root / "models" / dataset /
               f"{ratio_tag(ratio)}_fold{config.fold}_frac{config.train_fraction:g}_{key}")
        if not (out / DESCRIPTION_FILE).exists():
            train_model(folder, out, config, show_progress=self.show_progress)
        return out

    def evaluation(self, model: Path, folder: Path, ratio_train: float, ratio_test: float,
                   fold: int) -> pd.DataFrame:
        key = f"{model.name}_on_{ratio_tag(ratio_test)}_{self._digest(folder)}"
        cached = self.root / "evaluations" / model.parent.name / f"{key}.csv"
        if cached.exists():
            return pd.read_csv(cached)
        predictions = self.root / "predictions" / model.parent.name / key
        predict_dataset(model, folder, predictions, cases="test")
        held_out = json.loads((model / DESCRIPTION_FILE).read_text())["trained_on"]["test_cases"]
        table = evaluate_predictions(predictions, folder, ratio_train=ratio_train,
                                     ratio_test=ratio_test, fold=fold, cases=held_out)
        with atomic_output(cached) as temporary:
            table.to_csv(temporary, index=False)
        return table


def _tag(table: pd.DataFrame, experiment: str, dataset: str, fraction: float) -> pd.DataFrame:
    table = table.copy()
    table.insert(0, "experiment", experiment)
    table.insert(1, "dataset", dataset)
    table["train_fraction"] = fraction
    return table[list(RESULT_COLUMNS)]


def run_segmentation(config: StudyConfig, sweeps: list[SweepFolders], units: Units,
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Experiments train / cross / pretrained / budget; returns (results, footprints)."""
    wanted = set(config.experiments)
    tables, footprints = [], []
    for sweep in sweeps:
        for fold in config.train_folds:
            full = config.train_config(fold)
            model_ratios = sorted(set(config.train_ratios) |
                                  (set(config.budget_ratios) if "budget" in wanted else set()))
            models = {r: units.model(sweep.name, sweep[r], r, full) for r in model_ratios}
            if "train" in wanted:
                for ratio in config.train_ratios:
                    tables.append(_tag(units.evaluation(models[ratio], sweep[ratio], ratio,
                                                        ratio, fold), "train", sweep.name, 1.0))
            if "cross" in wanted:
                for train_ratio in config.train_ratios:
                    for test_ratio in config.train_ratios:
                        table = units.evaluation(models[train_ratio], sweep[test_ratio],
                                                 train_ratio, test_ratio, fold)
                        tables.append(_tag(table, "cross", sweep.name, 1.0))
            if "pretrained" in wanted and not config.pretrained:
                for test_ratio in config.ratios:
                    table = units.evaluation(models[1], sweep[test_ratio], 1.0, test_ratio,
                                             fold)
                    tables.append(_tag(table, "pretrained", sweep.name, 1.0))
            if "budget" in wanted:
                for fraction, ratio in zip(config.budget_fractions, config.budget_ratios,
                                           strict=True):
                    few = units.model(sweep.name, sweep[1], 1.0,
                                      config.train_config(fold, fraction)) \
                        if fraction < 1 else models[1]
                    for arm, model, train_ratio in (("few-shot", few, 1.0),
                                                    ("compressed", models[ratio], ratio)):
                        table = units.evaluation(model, sweep[1], train_ratio, 1.0, fold)
                        table = _tag(table, f"budget:{arm}", sweep.name,
                                     fraction if arm == "few-shot" else 1.0)
                        table["budget_fraction"] = fraction
                        tables.append(table)
                        footprints.append(_footprint(sweep, model, arm, fraction, ratio, fold))
    results = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=RESULT_COLUMNS)
    return results, pd.DataFrame(footprints)


def _footprint(sweep: SweepFolders, model: Path, arm: str, fraction: float, ratio: float,
               fold: int) -> dict:
    """Bytes of the training images a model saw: raw 16-bit for few-shot, stored for the
    compressed arm (from the sweep manifest), measured rather than assumed."""
    trained_on = json.loads((model / DESCRIPTION_FILE).read_text())["trained_on"]
    manifest = pd.read_csv(sweep[1].parent.parent / "manifest.csv")
    rows = manifest[manifest["case"].isin(trained_on["train_cases"])]
    column = "raw_bytes" if arm == "few-shot" else "stored_bytes"
    rows = rows[rows["ratio_target"] == (1.0 if arm == "few-shot" else ratio)]
    return {"dataset": sweep.name, "fold": fold, "arm": arm, "budget_fraction": fraction,
            "ratio": 1.0 if arm == "few-shot" else ratio,
            "train_cases": len(trained_on["train_cases"]), "bytes": int(rows[column].sum())}


def sweep_folders(name: str, sweep_folder: Path) -> SweepFolders:
    document = json.loads((sweep_folder / "sweep.json").read_text())
    by_ratio = {float(r): sweep_folder / "nnunet" / document["datasets"][ratio_tag(r)]
                for r in document["ratios"]}
    for folder in by_ratio.values():
        open_raw_dataset(folder)
    return SweepFolders(name, by_ratio)


def summarise_dice(results: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Mean Dice per dataset, class and ratio (Table 1 layout: classes x ratios)."""
    rows = results[(results["experiment"] == experiment) & (results["metric"] == "dice")]
    if rows.empty:
        return pd.DataFrame()
    table = rows.groupby(["dataset", "class", "ratio_train"])["value"].mean().unstack()
    table.columns = [f"x{c:g}" for c in table.columns]
    return table.reset_index().round(3)


def cross_matrix(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    rows = results[(results["experiment"] == "cross") & (results["metric"] == "dice")
                   & (results["class"] == "mean") & (results["dataset"] == dataset)]
    matrix = rows.groupby(["ratio_train", "ratio_test"])["value"].mean().unstack()
    return matrix.rename(index=lambda r: f"train x{r:g}", columns=lambda r: f"test x{r:g}")


def mean_by(results: pd.DataFrame, experiment: str, column: str) -> pd.DataFrame:
    rows = results[(results["experiment"].str.startswith(experiment))
                   & (results["metric"] == "dice") & (results["class"] == "mean")]
    if rows.empty:
        return pd.DataFrame()
    grouped = rows.groupby(["dataset", "experiment", column])["value"]
    table = grouped.agg(mean_dice="mean", sd=lambda v: float(np.std(v)), cases="count")
    return table.reset_index().round(4)
