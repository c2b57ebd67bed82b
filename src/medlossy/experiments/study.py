"""Run the study's experiments on datasets and write the report.

Available now: experiment 1 (image quality). Training experiments (train on each ratio,
cross-ratio, pretrained on compressed, storage budget) and the reader study analysis are
separate work items; the report lists them as not run rather than leaving them out silently.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.experiments.quality import STUDY_RATIOS, run_quality
from medlossy.report.quality_figure import plot_quality
from medlossy.report.study_report import Section, quality_summary, write_report

NOT_YET = ("train on each ratio (Table 1, Fig. 2 left)", "cross-ratio matrix (Fig. 3)",
           "pretrained model on compressed inputs (Table 2)",
           "storage budget: few-shot vs compressed (Fig. 2 right)", "reader study analysis")


def run_study(datasets: Sequence[Path], out: Path, ratios: Sequence[float] = STUDY_RATIOS, *,
              workers: int | None = None, show_progress: bool = False) -> list[Path]:
    """Run the available experiments on every dataset; returns the report files."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tables = []
    for index, folder in enumerate(datasets):
        dataset = open_raw_dataset(folder)
        # Each dataset's ratios get their own block of nnU-Net ids, so all coexist.
        tables.append(run_quality(dataset, out / "sweeps" / dataset.name, ratios,
                                  base_id=800 + 10 * index, workers=workers,
                                  show_progress=show_progress))
    table = pd.concat(tables, ignore_index=True)
    with atomic_output(out / "quality.csv") as temporary:
        table.to_csv(temporary, index=False)
    figures = plot_quality(table, out / "quality")
    seconds = time.perf_counter() - started
    sections = [
        Section("1. Image quality", "PSNR (r = 4096 for CT; max - min over the dataset for MR) "
                "of every image at every ratio; ratio 1 is lossless. Achieved ratios count "
                "every byte of each store. Images stored losslessly (x1, and x2 where lossless "
                "already fits the budget) have infinite PSNR and are not plotted. Per-image "
                "rows: quality.csv.",
                quality_summary(table), figures),
        Section("Not run yet", "These experiments of the study are not implemented in this "
                "version of medlossy: " + "; ".join(NOT_YET) + "."),
    ]
    preamble = (f"Datasets: {', '.join(p.name for p in datasets)}. Ratios: "
                f"{', '.join(f'x{r:g}' for r in ratios)}. Wall time {seconds:.0f} s.")
    return write_report(out, "medlossy study report", preamble, sections)
