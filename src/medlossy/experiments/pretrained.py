"""The study's pretrained-model step: ``[pretrained] model = "deepbet"`` (or "hd-bet", or an
nnU-Net model folder; ``compare = ["hd-bet"]`` adds models of the same task).

The model predicts every case at every ratio of every sweep of the study (every dataset and
codec, labelled or not); :mod:`medlossy.pretrained.agreement` compares each prediction with
the model's own x1 prediction (and the labels where there are any). A dataset the model was
not made for (CT for a brain-MR model) is left out with a note. The report gets the mean
Dice per ratio and codec with its 95% interval (one fixed model: the cases are the
replication unit), HD95 and the volume difference, and one figure of agreement vs ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.experiments.config import StudyConfig
from medlossy.experiments.statistics import mean_intervals
from medlossy.pretrained import get_model
from medlossy.pretrained.agreement import (
    OWN_X1,
    evaluate_agreement,
    read_class_map,
)
from medlossy.pretrained.base import InputRefused
from medlossy.report.agreement_figure import plot_agreement
from medlossy.report.study_report import Section

TABLE = "pretrained_agreement.csv"


@dataclass
class AgreementRun:
    table: pd.DataFrame  # the agreement rows with a ``dataset`` column
    skipped: list[str]  # "dataset (why)" for each dataset the model refused
    models: list[str]  # "name (task; how it is run)"


def run_agreement(config: StudyConfig, sweeps: list[tuple[str, Path, str | None]],
                  out: Path, *, show_progress: bool = False) -> AgreementRun:
    """The agreement rows of every sweep (``(name, folder, body_region)``), written to
    ``out``/pretrained_agreement.csv."""
    specs = [config.pretrained["model"], *config.pretrained.get("compare", ())]
    models = [get_model(spec) for spec in specs]
    label_map = config.pretrained.get("label_map")
    class_map = read_class_map(label_map) if label_map else None
    tables, skipped = [], []
    for name, folder, region in sweeps:
        try:
            for model in models:
                model.check_region(name, region)
            table = evaluate_agreement(models, folder, class_map=class_map,
                                       predictions=out / "pretrained" / name,
                                       show_progress=show_progress)
        except InputRefused as error:
            skipped.append(f"{name} ({error.problem})")
            continue
        tables.append(table.assign(dataset=name))
    table = (pd.concat(tables, ignore_index=True) if tables
             else pd.DataFrame(columns=["dataset"]))
    with atomic_output(out / TABLE) as temporary:
        table.to_csv(temporary, index=False)
    described = [f"{m.name} ({m.task}; {m.mode or 'as its authors run it'})" for m in models]
    return AgreementRun(table, skipped, described)


def _intervals(table: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice (class "mean") per dataset, model, reference and ratio with its 95% interval
    over the cases (fixed models: no training noise)."""
    rows = table[table["class"] == "mean"]
    results = pd.DataFrame({
        "dataset": rows["dataset"], "case": rows["case"], "class": "mean", "metric": "dice",
        "value": rows["dice"], "ratio_test": rows["ratio"], "fold": 0, "train_seed": 0,
        "experiment": "agreement|" + rows["model"] + "|" + rows["reference"]})
    intervals = mean_intervals(results, "agreement|", ["ratio_test"], assumed_model_sd=0.0)
    if intervals.empty:
        return intervals
    parts = intervals["experiment"].str.split("|", expand=True)
    return intervals.assign(model=parts[1], reference=parts[2]).rename(
        columns={"ratio_test": "ratio"}).drop(columns=["experiment"])


def agreement_section(run: AgreementRun, out: Path) -> Section:
    """Section 4b: the agreement table (means, intervals, HD95, volumes) and its figure."""
    table, skipped = run.table, run.skipped
    title = "4b. Pretrained model on compressed inputs: agreement with itself"
    left_out = (" Left out (the model was not made for them): " + "; ".join(skipped) + "."
                if skipped else "")
    if table.empty:
        return Section(title, f"Models {', '.join(run.models)}: no dataset they were made "
                              f"for.{left_out}")
    codecs = table.drop_duplicates("dataset").set_index("dataset")["codec"]
    detail = table.groupby(["dataset", "model", "reference", "ratio"]).agg(
        hd95_mm=("hd95_mm", "mean"), volume_ml=("volume_ml", "mean"),
        abs_volume_difference_ml=("volume_difference_ml", lambda v: np.abs(v).mean()))
    means = _intervals(table)
    summary = means.join(detail, on=["dataset", "model", "reference", "ratio"])
    summary.insert(1, "codec", summary["dataset"].map(codecs))
    own = summary[summary["reference"] == OWN_X1]
    between = summary[summary["reference"].str.endswith(f" {OWN_X1}")
                      & (summary["reference"] != OWN_X1)]
    figure = plot_agreement(own, out / "pretrained_agreement",
                            between=between.groupby(["model", "reference"], as_index=False)
                            ["mean_dice"].mean())
    scale = "".join(f" {row.model} against {row.reference} on {row.dataset}: mean Dice "
                    f"{row.mean_dice:.4f}." for row in between.itertuples())
    text = (f"Models: {', '.join(run.models)}. Every case of every ratio and codec is "
            "predicted; the reference is the model's own prediction on the lossless (x1) "
            f"images (reference '{OWN_X1}'), the labels where the dataset has them "
            "('labels'), and another model's x1 prediction where two models of one task ran: "
            "the disagreement "
            f"between two trained networks, the scale for the compression effect.{scale} "
            "Mean Dice over cases with its 95% t-interval (one fixed model: no training noise; "
            "NaN with one case), mean HD95 (mm) and mean absolute volume difference (mL). "
            f"Every row: {TABLE}.{left_out}")
    return Section(title, text, summary.round(4), figure)
