"""Experiments 2-5 of the study, built from cached units: train, predict, evaluate.

Data flow: :func:`plan_segmentation` turns the config into units (one training unit per
dataset, ratio, fold, seed and training share; one evaluation unit per model and test ratio);
:func:`run_segmentation` runs the training units, then the evaluation units, through an
executor (one after another, one per local GPU, or on a Dask cluster, see ``scaleout``),
then reads their cached tables into the results. The training backend (built-in or nnU-Net)
is the config's; nothing here depends on which.

Each unit lives in a folder named by a hash of its inputs (the backend's recipe and the
checksums of the dataset it reads), so a rerun skips what is done, a killed unit resumes
(training from its last epoch checkpoint) and changing one ratio reruns only the units that
depend on it. A unit holds a lock file while it works (``medlossy.locks``): two runs sharing
the folder never train or predict the same unit twice, and a unit whose worker died is
taken up by the next worker that asks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.backends import TrainRequest, get_backend
from medlossy.checksums import sha256_file
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.datasets.sweep import ratio_tag
from medlossy.evaluate.evaluate import evaluate_predictions
from medlossy.experiments.budget import BudgetArms
from medlossy.experiments.config import StudyConfig
from medlossy.locks import unit_lock

RESULT_COLUMNS = ("experiment", "dataset", "case", "class", "ratio_train", "ratio_test",
                  "fold", "train_seed", "train_fraction", "metric", "value")


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


@dataclass(frozen=True)
class TrainUnit:
    """One model: a backend trains ``folder`` (one ratio) into ``out``."""

    backend: str
    dataset: str
    folder: Path
    ratio: float
    request: TrainRequest
    out: Path
    cache: Path

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.out.name}"

    def done(self) -> bool:
        return get_backend(self.backend).is_trained(self.out)


@dataclass(frozen=True)
class EvalUnit:
    """One model tested on one ratio: predictions, then the tidy Dice table (cached CSV)."""

    model: TrainUnit
    folder: Path
    ratio_test: float
    table: Path
    predictions: Path

    @property
    def name(self) -> str:
        return f"{self.model.dataset}/{self.table.stem}"

    def done(self) -> bool:
        return self.table.exists()


def run_train_unit(unit: TrainUnit, show_progress: bool = False) -> str:
    """Train ``unit`` unless it is trained; waits while another worker holds it."""
    if not unit.done():
        with unit_lock(unit.out.with_name(unit.out.name + ".lock")):
            if not unit.done():  # another worker may have finished it while we waited
                # the unit's folder is named by its recipe and data: a checkpoint of
                # another fingerprint there (the study was moved) is its own, stale
                get_backend(unit.backend).train(unit.folder, unit.out, unit.request,
                                                cache=unit.cache, show_progress=show_progress,
                                                replace=True)
    return unit.name


def run_eval_unit(unit: EvalUnit, show_progress: bool = False) -> str:
    """Predict the model's held-out cases of ``unit.folder`` and write the Dice table."""
    if not unit.done():
        with unit_lock(unit.table.with_name(unit.table.name + ".lock")):
            if not unit.done():
                backend = get_backend(unit.model.backend)
                backend.predict(unit.model.out, unit.folder, unit.predictions, cases="test",
                                show_progress=show_progress)
                held_out = backend.describe(unit.model.out).test_cases
                table = evaluate_predictions(unit.predictions, unit.folder,
                                             ratio_train=unit.model.ratio,
                                             ratio_test=unit.ratio_test,
                                             fold=unit.model.request.fold, cases=held_out)
                with atomic_output(unit.table) as temporary:
                    table.to_csv(temporary, index=False)
    return unit.name


@dataclass(frozen=True)
class Row:
    """Where an evaluation's table goes in the results."""

    experiment: str
    evaluation: EvalUnit
    fraction: float = 1.0
    budget_fraction: float | None = None


@dataclass
class SegmentationPlan:
    """Every unit the config implies, and how their tables make the results."""

    train: dict[Path, TrainUnit] = field(default_factory=dict)
    evaluations: dict[Path, EvalUnit] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


class _Planner:
    def __init__(self, config: StudyConfig, root: Path) -> None:
        self.config = config
        self.root = root
        self.backend = config.backend
        self._digests: dict[Path, str] = {}
        self.plan = SegmentationPlan()

    def _digest(self, folder: Path) -> str:
        if folder not in self._digests:
            self._digests[folder] = folder_digest(folder)
        return self._digests[folder]

    def model(self, sweep: SweepFolders, ratio: float, request: TrainRequest) -> TrainUnit:
        recipe = self.backend.recipe(request)
        key = hashlib.sha256(json.dumps([recipe, self._digest(sweep[ratio])], sort_keys=True,
                                        default=str).encode()).hexdigest()[:12]
        out = (self.root / "models" / sweep.name /
               f"{ratio_tag(ratio)}_fold{request.fold}_frac{request.train_fraction:g}_{key}")
        unit = TrainUnit(self.backend.name, sweep.name, sweep[ratio], ratio, request, out,
                         self.root / "cache" / sweep.name)
        return self.plan.train.setdefault(out, unit)

    def mixed_model(self, sweep: SweepFolders, ratios: dict[float, float],
                    request: TrainRequest, x1: TrainUnit | None) -> TrainUnit:
        """One model for every ratio of ``ratios`` (1 among them, each with its weight):
        trained on the x1 data's split with each patch drawn from a case at a random ratio;
        from a fresh network, or continuing ``x1`` (``mixed_start``)."""
        others = [r for r in ratios if r != 1]
        weights = (ratios[1], *(ratios[r] for r in others))
        config = self.config
        request = replace(
            request, mixed_datasets=tuple(sweep[r] for r in others),
            mixed_weights=weights if config.mixed_weights else (),
            epochs=config.mixed_epochs or request.epochs,
            start_from=x1.out if x1 is not None else None)
        recipe = self.backend.recipe(request)
        key = hashlib.sha256(json.dumps(
            [recipe, *(self._digest(sweep[r]) for r in ratios),
             *([list(weights)] if config.mixed_weights else []),
             *([x1.out.name] if x1 is not None else [])], sort_keys=True,
            default=str).encode()).hexdigest()[:12]
        out = (self.root / "models" / sweep.name /
               f"mixed_fold{request.fold}_frac{request.train_fraction:g}_{key}")
        unit = TrainUnit(self.backend.name, sweep.name, sweep[1], math.nan, request, out,
                         self.root / "cache" / sweep.name)
        return self.plan.train.setdefault(out, unit)

    def evaluation(self, model: TrainUnit, folder: Path, ratio_test: float) -> EvalUnit:
        key = f"{model.out.name}_on_{ratio_tag(ratio_test)}_{self._digest(folder)}"
        table = self.root / "evaluations" / model.dataset / f"{key}.csv"
        unit = EvalUnit(model, folder, ratio_test, table,
                        self.root / "predictions" / model.dataset / key)
        return self.plan.evaluations.setdefault(table, unit)


def plan_segmentation(config: StudyConfig, sweeps: Sequence[SweepFolders], root: Path,
                      budgets: Sequence[BudgetArms] | None = None) -> SegmentationPlan:
    """Units of the experiments train / cross / pretrained / budget.

    ``budgets``: the measured equal-byte arms (``budget.plan_budget``) of every dataset,
    fold and fraction; None (the dry run, before any data are compressed) estimates them as
    the share ``fraction`` of the cases against the nominal ratio 1 / fraction.
    """
    wanted = set(config.experiments)
    planner = _Planner(config, root)
    plan = planner.plan
    measured = {(a.dataset, a.fold, a.fraction): a for a in budgets or ()}
    for sweep in sweeps:
        reference = sweep[1]
        # A ratio out of the codec's reach on some image was not swept (the report's preamble
        # says which and why): the experiments run on the ratios that were.
        train_ratios = [r for r in config.train_ratios if r in sweep.by_ratio]
        test_ratios = [r for r in config.ratios if r in sweep.by_ratio]
        for fold, seed in itertools.product(config.train_folds, config.training_seeds):
            full = config.train_request(fold, reference=reference, seed=seed)
            models = {r: planner.model(sweep, r, full) for r in train_ratios}
            if "train" in wanted:
                for ratio in train_ratios:
                    plan.rows.append(Row("train", planner.evaluation(models[ratio],
                                                                     sweep[ratio], ratio)))
            if "cross" in wanted:
                for train_ratio in train_ratios:
                    for test_ratio in train_ratios:
                        plan.rows.append(Row("cross", planner.evaluation(
                            models[train_ratio], sweep[test_ratio], test_ratio)))
            if "mixed" in wanted:
                weights = config.mixed_weights or (1.0,) * len(config.mixed_model_ratios)
                mixed = planner.mixed_model(
                    sweep, {r: w for r, w in zip(config.mixed_model_ratios, weights,
                                                 strict=True) if r in sweep.by_ratio},
                    full, planner.model(sweep, 1, full) if config.mixed_start == "x1" else None)
                for test_ratio in test_ratios:
                    plan.rows.append(Row("mixed", planner.evaluation(
                        mixed, sweep[test_ratio], test_ratio)))
            if "pretrained" in wanted and "checkpoint" not in config.pretrained:
                for test_ratio in test_ratios:
                    plan.rows.append(Row("pretrained", planner.evaluation(
                        models[1], sweep[test_ratio], test_ratio)))
            if "budget" not in wanted:
                continue
            for fraction in config.budget_fractions:
                arms = measured.get((sweep.name, fold, fraction))
                if budgets is not None and arms is None:
                    raise KeyError(f"no measured budget for {sweep.name}, fold {fold}, "
                                   f"fraction {fraction:g}")
                share, ratio = ((arms.train_fraction, arms.ratio) if arms is not None
                                else (fraction, round(1 / fraction, 6)))
                few = planner.model(sweep, 1.0, config.train_request(
                    fold, share, reference=reference, seed=seed)) if share < 1 else models[1]
                compressed = planner.model(sweep, ratio, full) if ratio > 1 else models[1]
                for arm, model, used in (("few-shot", few, share), ("compressed", compressed,
                                                                     1.0)):
                    plan.rows.append(Row(f"budget:{arm}",
                                         planner.evaluation(model, sweep[1], 1.0), used,
                                         fraction))
    return plan


def _tag(table: pd.DataFrame, experiment: str, dataset: str, fraction: float,
         seed: int) -> pd.DataFrame:
    table = table.copy()
    table.insert(0, "experiment", experiment)
    table.insert(1, "dataset", dataset)
    table["train_seed"] = seed
    table["train_fraction"] = fraction
    return table[list(RESULT_COLUMNS)]


Runner = Callable[[Callable, list], list]


def serial(function: Callable, units: list) -> list:
    """Run units one after another in this process."""
    return [function(unit) for unit in units]


def run_segmentation(config: StudyConfig, sweeps: Sequence[SweepFolders], root: Path, *,
                     budgets: Sequence[BudgetArms] = (), runner: Runner = serial,
                     show_progress: bool = False) -> pd.DataFrame:
    """Experiments train / cross / pretrained / budget (``budgets``: the measured arms);
    returns the results.

    ``runner(function, units)`` runs ``function`` on every unit (``serial``, or one of
    ``scaleout``'s); training units first, evaluation units once every model exists.
    """
    return run_plan(plan_segmentation(config, sweeps, root, budgets), runner=runner,
                    show_progress=show_progress)


def run_plan(plan: SegmentationPlan, *, runner: Runner = serial, show_progress: bool = False,
             ) -> pd.DataFrame:
    """Run ``plan``'s units (training first) and return the results."""
    from functools import partial

    # Models that continue another (a mixed model from the x1 one) train once it is done.
    for continues in (False, True):
        runner(partial(run_train_unit, show_progress=show_progress),
               [unit for unit in plan.train.values()
                if (unit.request.start_from is not None) == continues and not unit.done()])
    runner(partial(run_eval_unit, show_progress=show_progress),
           [unit for unit in plan.evaluations.values() if not unit.done()])
    tables = []
    for row in plan.rows:
        model = row.evaluation.model
        # case names as written: "001" is a name, not the number 1
        evaluated = pd.read_csv(row.evaluation.table, dtype={"case": str})
        table = _tag(evaluated, row.experiment, model.dataset, row.fraction,
                     model.request.seed)
        if row.budget_fraction is not None:
            table["budget_fraction"] = row.budget_fraction
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=RESULT_COLUMNS)


def sweep_folders(name: str, sweep_folder: Path) -> SweepFolders:
    document = json.loads((sweep_folder / "sweep.json").read_text())
    by_ratio = {float(r): sweep_folder / "nnunet" / document["datasets"][ratio_tag(r)]
                for r in document["ratios"]}
    for folder in by_ratio.values():
        open_raw_dataset(folder)
    return SweepFolders(name, by_ratio)


#: The two summaries of a Dice table, named as the report shows them.
MEAN_OVER_CLASSES = "mean over classes (paper, nnU-Net)"
MEAN_OVER_CASES = "mean over cases"


def summarise_dice(results: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Mean Dice per dataset, class and ratio (Table 1 layout: classes x ratios), and both
    summaries: the mean over classes of the per-class means (the paper's and nnU-Net's
    convention, comparable with the paper's 0.87 on AMOS) and the mean over cases of each
    case's mean over its classes. They differ where classes are absent from some cases."""
    rows = results[(results["experiment"] == experiment) & (results["metric"] == "dice")]
    if rows.empty:
        return pd.DataFrame()
    table = rows.groupby(["dataset", "class", "ratio_train"])["value"].mean().unstack()
    per_case = table.xs("mean", level="class", drop_level=False) \
        if "mean" in table.index.get_level_values("class") else table.iloc[:0]
    classes = table.drop(index="mean", level="class", errors="ignore")
    over_classes = classes.groupby(level="dataset").mean()
    over_classes.index = pd.MultiIndex.from_product([over_classes.index, [MEAN_OVER_CLASSES]],
                                                    names=["dataset", "class"])
    per_case = per_case.rename(index={"mean": MEAN_OVER_CASES}, level="class")
    table = pd.concat([classes, over_classes, per_case]).sort_index(level="dataset",
                                                                    sort_remaining=False)
    table.columns = [f"x{c:g}" for c in table.columns]
    return table.reset_index().round(3)


#: The cross-ratio matrix's row of the mixed-ratio model (the others are ratios).
MIXED_ROW = "mixed"


def cross_matrix(results: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Mean Dice per training ratio (rows) and test ratio (columns), ratios as numbers, and
    a last row ``MIXED_ROW`` for the mixed-ratio model where it was trained."""
    chosen = results[(results["metric"] == "dice") & (results["class"] == "mean")
                     & (results["dataset"] == dataset)]
    rows = chosen[chosen["experiment"] == "cross"]
    matrix = rows.groupby(["ratio_train", "ratio_test"])["value"].mean().unstack()
    mixed = chosen[chosen["experiment"] == "mixed"]
    if len(matrix) and len(mixed):
        means = mixed.groupby("ratio_test")["value"].mean().reindex(matrix.columns)
        matrix = pd.concat([matrix, means.to_frame(MIXED_ROW).T])
    return matrix


def mean_by(results: pd.DataFrame, experiment: str, column: str) -> pd.DataFrame:
    """Mean and sd of the per-case mean Dice per dataset, experiment and ``column``, with the
    number of test cases with a Dice (each counted once however many seeds tested it)."""
    rows = results[(results["experiment"].str.startswith(experiment))
                   & (results["metric"] == "dice") & (results["class"] == "mean")]
    rows = rows[pd.to_numeric(rows["value"], errors="coerce").notna()]
    if rows.empty:
        return pd.DataFrame()
    grouped = rows.groupby(["dataset", "experiment", column])
    table = grouped["value"].agg(mean_dice="mean", sd=lambda v: float(np.std(v)))
    table["cases"] = grouped["case"].nunique()
    return table.reset_index().round(4)
