"""Summaries of a sweep: per-ratio footprint and quality, and a full checksum verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.checksums import sha256_file
from medlossy.datasets.sweep import (
    SweepTask,
    finished_part,
    read_manifest,
    source_changed,
    sweep_file,
    written_root,
)
from medlossy.errors import MedlossyError
from medlossy.tables import markdown_table


def _read(out: Path) -> tuple[dict, pd.DataFrame]:
    try:
        sweep = json.loads((out / "sweep.json").read_text())
    except FileNotFoundError:
        raise MedlossyError(out, "not a finished sweep (sweep.json is missing; run `medlossy "
                                 "dataset compress` first)") from None
    return sweep, read_manifest(out)


def summarise(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per ratio: images, bytes raw/stored, achieved ratio, PSNR mean/min, seconds."""
    finite = manifest.assign(psnr_db=manifest["psnr_db"].astype(float))
    summary = finite.groupby("ratio_target").agg(
        images=("case", "size"),
        raw_bytes=("raw_bytes", "sum"),
        stored_bytes=("stored_bytes", "sum"),
        all_reached=("target_reached", "all"),
        psnr_mean_db=("psnr_db", lambda p: float(np.nanmean(p)) if p.notna().any() else np.inf),
        psnr_min_db=("psnr_db", lambda p: float(np.nanmin(p)) if p.notna().any() else np.inf),
        encode_seconds=("encode_seconds", "sum"),
        decode_seconds=("decode_seconds", "sum"),
    ).reset_index()
    summary.insert(4, "ratio_achieved", summary["raw_bytes"] / summary["stored_bytes"])
    return summary.round({"ratio_achieved": 3, "psnr_mean_db": 2, "psnr_min_db": 2,
                          "encode_seconds": 2, "decode_seconds": 2})


def write_sweep_report(out: Path) -> tuple[pd.DataFrame, dict]:
    """Write report.csv and report.md into the sweep folder; returns the summary and sweep."""
    sweep, manifest = _read(out)
    summary = summarise(manifest)
    with atomic_output(out / "report.csv") as temporary:
        summary.to_csv(temporary, index=False)
    lines = [f"# Sweep of {sweep['source']}\n",
             "Ratio = raw 16-bit bytes / every byte of the stores; PSNR over lossy images "
             "(inf: all lossless). Lossless (x1) and images where lossless already fits the "
             "budget count as infinite PSNR and are left out of the means.\n",
             markdown_table(summary), ""]
    if sweep.get("bad_cases"):
        lines += ["## Bad cases (skipped)\n"]
        lines += [f"- {problem}" for problem in sweep["bad_cases"].values()]
    with atomic_output(out / "report.md") as temporary:
        temporary.write_text("\n".join(lines) + "\n")
    return summary, sweep


def _mixing(out: Path, sweep: dict, manifest: pd.DataFrame) -> list[str]:
    """What shows that another source's sweep was written into this folder: nnU-Net datasets
    this sweep did not make, two datasets under one id, rows outside this sweep's outputs."""
    problems = []
    datasets = set(sweep["datasets"].values())
    present = sorted(p.name for p in (out / "nnunet").iterdir()) \
        if (out / "nnunet").is_dir() else []
    for name in present:
        if name not in datasets:
            problems.append(f"{out / 'nnunet' / name}: not a dataset of this sweep (of "
                            f"{sweep.get('input', sweep['source'])}): another sweep was "
                            "written into this folder")
    by_id: dict[str, list[str]] = {}
    for name in present:
        by_id.setdefault(name.split("_", 1)[0], []).append(name)
    for names in by_id.values():
        if len(names) > 1:
            problems.append(f"{out / 'nnunet'}: {len(names)} datasets share one nnU-Net id: "
                            f"{', '.join(names)}")
    for row in manifest.to_dict("records"):  # decoded: nnunet/<dataset>/images*/<file>
        if Path(row["decoded"]).parent.parent.name not in datasets:
            problems.append(f"{out / row['decoded']}: manifest row of case {row['case']} is not in "
                            "this sweep's datasets (mixed sweep folder)")
    return problems


def _source(out: Path, sweep: dict, manifest: pd.DataFrame) -> Path:
    """The dataset the sweep compressed; a cropped or converted copy in the sweep's own
    prepared/ is taken from ``out`` (the folder may have been copied or moved since)."""
    source = Path(sweep["source"])
    written = sweep.get("root") or written_root(manifest["store"].iloc[0])  # before "root"
    if written is not None and source.is_relative_to(written):
        return out / source.relative_to(written)
    return source


def verify_sweep(out: Path) -> list[str]:
    """Every problem found: another sweep mixed in, then stores, decoded images and label
    copies against checksums."""
    sweep, manifest = _read(out)
    problems = _mixing(out, sweep, manifest)
    for row in manifest.to_dict("records"):
        try:
            store, decoded = sweep_file(out, row, "store"), sweep_file(out, row, "decoded")
        except MedlossyError as error:
            problems.append(str(error))
            continue
        tile = row.get("tile")  # absent before tiles; empty (NaN) for whole-slice stores
        task = SweepTask(case=row["case"], split=row["split"], channel=int(row["channel"]),
                         modality=row["modality"], image="", ratio=float(row["ratio_target"]),
                         data_range=0.0, store=str(store), decoded=str(decoded),
                         root=str(out), tile=None if tile is None or pd.isna(tile) else int(tile),
                         zarr_format=sweep.get("zarr_format", 2),
                         shard_slices=sweep.get("shard_slices"),
                         part=str(out / "parts" / f"r{row['ratio_target']:g}" /
                                  f"{row['case']}_{int(row['channel']):04d}.json"))
        done = finished_part(task)
        if done is None:
            problems.append(f"{store}: store or decoded image does not match its "
                            f"checksums (case {row['case']}, ratio {row['ratio_target']:g})")
        elif done.get("source"):
            image = _source(out, sweep, manifest) / done["source"]["file"]
            if source_changed(done, image):
                problems.append(f"{image}: changed since the sweep compressed it (case "
                                f"{row['case']}, ratio {row['ratio_target']:g}); rerun "
                                f"the sweep")
    source_labels = _source(out, sweep, manifest) / "labelsTr"
    for name in sweep["datasets"].values():
        for copy in sorted((out / "nnunet" / name / "labelsTr").glob("*")):
            original = source_labels / copy.name
            if original.exists() and sha256_file(original) != sha256_file(copy):
                problems.append(f"{copy}: label differs from {original}")
    return problems
