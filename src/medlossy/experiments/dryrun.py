"""``medlossy study CONFIG --dry-run``: every unit a config implies, which are cached, and
what the rest will cost, before anything runs.

Data flow: the config -> the datasets' sizes (image headers where the data are on disk, the
config's ``cases`` / ``voxels_per_case`` hints where not) -> the segmentation plan of the
real run (``segmentation.plan_segmentation``, with the same unit keys, so "cached" means the
run will skip it) -> GPU-hours and storage from measured speeds:

- training: iterations x batch x patch voxels at 38 Mvox/s, the training throughput of an
  nnU-Net-sized 3D U-Net in bf16 on one H100 (measured by the developers; BENCHMARKS.md);
  the paper's 300 x 250 iterations of 2 x 128^3 voxels give 2.3 h per model, about the 2 h
  on an H100 that the paper reports;
- prediction: every test voxel covered 8 times by sliding windows at half-patch steps and
  8 times again by nnU-Net's mirroring, a forward pass costing a third of a training step;
- storage: raw 16-bit bytes / ratio per store (the ratio is exact by construction), the
  decoded NIfTI copy of every ratio (assumed half of raw, gzip on 16-bit CT), the backend's
  cached preprocessing per ratio and checkpoints per model (``Workload``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medlossy.datasets.sweep import ratio_tag, read_manifest
from medlossy.experiments import segmentation as seg
from medlossy.experiments.config import StudyConfig, training_experiments

TRAIN_VOXELS_PER_SECOND = 38e6  # H100, bf16, nnU-Net-like 3D U-Net (CODECS.md, DATA.md)
PREDICTION_PASSES = 8 * 8 / 3  # window overlap x mirroring / forward-only speed-up
DECODED_SHARE = 0.5


@dataclass(frozen=True)
class DatasetSize:
    name: str
    cases: int
    voxels_per_case: float
    measured: bool


def dataset_size(path: Path, cases: int | None, voxels: float | None) -> DatasetSize:
    """Cases and mean voxels per case: from the image headers, else the config's hints."""
    if (path / "dataset.json").exists():
        import nibabel as nib

        from medlossy.datasets.nnunet_raw import open_raw_dataset

        dataset = open_raw_dataset(path)
        found = [case for case in dataset.cases() if case.label is not None]
        counts = []
        for case in found:
            image = next(iter(case.images.values()))
            try:
                shape = nib.load(image).shape
            except (OSError, nib.filebasedimages.ImageFileError):  # not NIfTI: use the hint
                continue
            counts.append(float(len(case.images)) * float(pd.Series(shape[:3]).prod()))
        if counts:
            return DatasetSize(dataset.name, len(found), sum(counts) / len(counts), True)
        return DatasetSize(dataset.name, len(found), float(voxels or 0), False)
    return DatasetSize(path.name, int(cases or 0), float(voxels or 0), False)


def _sweeps(config: StudyConfig, out: Path, sizes: dict[Path, DatasetSize],
            ratios: list[float]) -> list[seg.SweepFolders]:
    """The training sweeps of every dataset and codec: as compressed where their sweep.json
    holds every ratio but those out of the codec's reach, else as they will be."""
    sweeps = []
    for entry in config.datasets:
        if not entry.train:
            continue
        for codec in config.codecs:
            name = config.sweep_name(sizes[entry.path].name, codec)
            folder = out / "sweeps" / name
            if (folder / "sweep.json").exists():
                sweep = seg.sweep_folders(name, folder)
                unreached = {float(tag[1:]) for tag in json.loads(
                    (folder / "sweep.json").read_text()).get("out_of_reach", {})}
                if set(ratios) - unreached <= set(sweep.by_ratio):
                    sweeps.append(sweep)
                    continue
            sweeps.append(seg.SweepFolders(name, {
                r: folder / "nnunet" / f"(to compress)_{ratio_tag(r)}" for r in ratios}))
    return sweeps


def dry_run(config: StudyConfig, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(units, totals, notes): one row per unit, cost per kind of unit, what was assumed."""
    from medlossy.experiments.study import sweep_ratios

    sizes = {e.path: dataset_size(e.path, e.cases, e.voxels_per_case) for e in config.datasets}
    ratios = sweep_ratios(config, nominal_budget=True)
    notes = [f"{s.name}: {s.cases} cases x {s.voxels_per_case / 1e6:.1f} Mvox "
             + ("(image headers)" if s.measured else "(config hints: data not on disk)")
             for s in sizes.values()]
    rows = []
    for entry, codec in itertools.product(config.datasets, config.codecs):
        size = sizes[entry.path]
        name = config.sweep_name(size.name, codec)
        folder = out / "sweeps" / name
        done = (read_manifest(folder) if (folder / "manifest.csv").exists()
                else pd.DataFrame())
        for ratio in ratios if entry.train else sorted(config.ratios):
            compressed = int((done["ratio_target"] == ratio).sum()) if len(done) else 0
            raw = size.cases * size.voxels_per_case * 2
            rows.append({"unit": "compress", "dataset": name, "ratio": ratio,
                         "fold": "", "fraction": "", "cached": compressed >= size.cases > 0,
                         "gpu_hours": 0.0,
                         "storage_gb": (raw / ratio + raw * DECODED_SHARE) / 1e9})
    backend = config.backend
    wanted = training_experiments(config)
    if wanted:
        plan = seg.plan_segmentation(config, _sweeps(config, out, sizes, ratios), out)
        by_name = {config.sweep_name(size.name, codec): size for size in sizes.values()
                   for codec in config.codecs}
        for unit in plan.train.values():
            work = backend.workload(unit.request)
            rows.append({"unit": "train", "dataset": unit.dataset,
                         "ratio": "mixed" if unit.request.mixed_datasets else unit.ratio,
                         "fold": unit.request.fold, "fraction": unit.request.train_fraction,
                         "cached": unit.done(),
                         "gpu_hours": work.iterations * work.voxels_per_iteration
                         / TRAIN_VOXELS_PER_SECOND / 3600,
                         "storage_gb": work.checkpoint_bytes / 1e9})
        for dataset, ratio in sorted({(u.dataset, u.ratio) for u in plan.train.values()}):
            share = backend.workload(config.train_request(0)).preprocessed_share
            if share:
                size = by_name[dataset]
                rows.append({"unit": "preprocess", "dataset": dataset, "ratio": ratio,
                             "fold": "", "fraction": "", "cached": False, "gpu_hours": 0.0,
                             "storage_gb": size.cases * size.voxels_per_case * 2 * share / 1e9})
        for unit in plan.evaluations.values():
            size = by_name[unit.model.dataset]
            test_cases = size.cases / config.folds
            rows.append({"unit": "predict+evaluate", "dataset": unit.model.dataset,
                         "ratio": unit.ratio_test, "fold": unit.model.request.fold,
                         "fraction": unit.model.request.train_fraction, "cached": unit.done(),
                         "gpu_hours": test_cases * size.voxels_per_case * PREDICTION_PASSES
                         / TRAIN_VOXELS_PER_SECOND / 3600,
                         "storage_gb": test_cases * size.voxels_per_case * 0.1 / 1e9})
        notes.append(f"backend {backend.name}: "
                     + (backend.workload(config.train_request(0)).note or "patch from the config"))
    units = pd.DataFrame(rows)
    units["to_run"] = ~units["cached"]
    totals = units.groupby("unit", sort=False).agg(
        units=("cached", "size"), cached=("cached", "sum"),
        gpu_hours_to_run=("gpu_hours", lambda h: float(h[units.loc[h.index, "to_run"]].sum())),
        gpu_hours_all=("gpu_hours", "sum"), storage_gb=("storage_gb", "sum")).reset_index()
    total = {"unit": "total", **{c: totals[c].sum() for c in totals.columns if c != "unit"}}
    totals = pd.concat([totals, pd.DataFrame([total])], ignore_index=True)
    notes.append(f"GPU-hours: training at {TRAIN_VOXELS_PER_SECOND / 1e6:g} Mvox/s (one H100, "
                 "bf16, measured by medlossy's developers); prediction "
                 f"{PREDICTION_PASSES:.1f} training-voxel equivalents per test voxel.")
    return units.drop(columns=["to_run"]), totals, notes


def format_dry_run(units: pd.DataFrame, totals: pd.DataFrame, notes: list[str]) -> str:
    from medlossy.tables import markdown_table

    shown = units.assign(gpu_hours=units["gpu_hours"].round(3),
                         storage_gb=units["storage_gb"].round(3))
    rounded = totals.round(2)
    return "\n\n".join(["## Units", markdown_table(shown), "## Totals",
                        markdown_table(rounded), "## Assumptions",
                        "\n".join(f"- {note}" for note in notes)]) + "\n"
