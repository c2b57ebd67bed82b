"""Stores-only sweeps: the 7 lossy ratios with and without decoded NIfTI copies, against one
`compress --ratio 20`, on a synthetic CT-like volume (512x512x48 int16, 0.78 x 0.78 x 2.5 mm).

Twice: in this process with one worker, as bench/sweep_encode.py (one `compress_volume` at
x20, the store only, then the sweep's ``run_image`` at ratios 2, 5, 10, 20, 50, 70, 100), and
as the commands a user types (`medlossy compress --ratio 20` against `medlossy dataset
compress --ratios 2,...,100 --workers 1`, each a child process: wall seconds only, since
their pool workers start from a forkserver that is never waited for, so no rusage holds their
CPU time). Each sweep runs with the "nifti" layout (a decoded .nii.gz per ratio, the sweep before
``--layout stores``) and the "stores" layout (a link per ratio). CPU seconds are the
load-independent figure on a shared machine; wall seconds are given too, and the bytes each
layout adds beside the stores.

Usage: .venv/bin/python bench/stores_sweep.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from _common import OUT, machine, machine_markdown, progress, save, table, timed, tree_bytes

from medlossy.compression import Target, compress_volume
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.datasets.sweep import plan_sweep, run_image
from medlossy.io import read_volume

LOSSY = (2, 5, 10, 20, 50, 70, 100)
SHAPE = (512, 512, 48)
SPACING = (0.78, 0.78, 2.5)


def synthetic_ct(seed: int = 0) -> nib.Nifti1Image:
    """An abdomen-like CT in HU: air, a body with a fat rim, soft-tissue organs with smooth
    texture, a spine and ribs, and 12 HU of noise (synthetic: no real CT here)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    body = ((x - 256) / 210) ** 2 + ((y - 250) / 160) ** 2
    hu = np.where(body < 1, -100.0, -1000.0).astype(np.float32)
    hu[body < 0.8] = 40.0
    for cx, cy, rx, ry, value in ((180, 220, 70, 55, 60), (330, 240, 50, 40, 30),
                                  (260, 300, 35, 30, 150), (200, 300, 25, 25, 20)):
        organ = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - 24) / 30) ** 2 < 1
        hu[organ] = value
    spine = ((x - 256) / 22) ** 2 + ((y - 350) / 20) ** 2 < 1
    hu[spine] = 700.0
    ribs = (np.abs(body - 0.85) < 0.03) & (np.sin(z / 3.0 + x / 40.0) > 0.6)
    hu[ribs] = 500.0
    texture = np.fft.irfftn(np.fft.rfftn(rng.normal(0, 1, SHAPE)) *
                            np.exp(-np.sum(np.meshgrid(*(np.fft.fftfreq(n) ** 2 for n in
                                                          SHAPE[:2]),
                                                        np.fft.rfftfreq(SHAPE[2]) ** 2,
                                                        indexing="ij"), axis=0) * 400),
                            SHAPE, axes=(0, 1, 2)).astype(np.float32)
    hu += np.where(body < 0.8, 25 * texture / texture.std(), 0) + rng.normal(0, 12, SHAPE)
    affine = np.diag([*SPACING, 1.0])
    return nib.Nifti1Image(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), affine)


def one_case_dataset(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    image = synthetic_ct()
    nib.save(image, folder / "imagesTr" / "case_0000.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), image.affine),
             folder / "labelsTr" / "case.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": 1,
        "file_ending": ".nii.gz"}))
    return folder


def _command(*arguments: object) -> None:
    medlossy = Path(sys.executable).parent / "medlossy"
    subprocess.run([str(medlossy), *(str(a) for a in arguments), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)


def cli_rows(source: Path, scratch: Path, results: dict) -> list[list[str]]:
    """The same comparison through the command line (child processes, whole tree's CPU)."""
    image = source / "imagesTr" / "case_0000.nii.gz"
    progress("command: compress --ratio 20")
    single = timed(lambda: _command("compress", image, scratch / "cli_single.zarr", "--ratio",
                                    20, "--modality", "CT"), repeats=1,
                   setup=lambda: shutil.rmtree(scratch / "cli_single.zarr", ignore_errors=True))
    results["cli single"] = {"wall": single["wall_best"]}
    rows = []
    for layout in ("nifti", "stores"):
        progress(f"command: dataset compress --layout {layout}")
        out = scratch / f"cli_{layout}"
        shutil.rmtree(out, ignore_errors=True)
        run = timed(lambda o=out, lay=layout: _command(
            "dataset", "compress", source, "--ratios", ",".join(map(str, LOSSY)), "--out", o,
            "--layout", lay, "--workers", 1), repeats=1)
        results[f"cli {layout}"] = {"wall": run["wall_best"]}
        rows.append([f"command, {layout}", "-", f"{run['wall_best']:.1f}", "-",
                     f"**{run['wall_best'] / single['wall_best']:.1f}x**",
                     f"{tree_bytes(out / 'stores') / 1e6:.2f}",
                     f"{tree_bytes(out / 'nnunet') / 1e6:.3f}"])
    return rows


def main() -> None:
    info = machine()
    scratch = OUT / "stores_sweep"
    source = one_case_dataset(scratch / "Dataset990_Synthetic")
    image = source / "imagesTr" / "case_0000.nii.gz"
    progress("one compress at x20")
    single = timed(lambda: compress_volume(read_volume(image, "CT", lazy=True),
                                           scratch / "single.zarr", Target("ratio", 20),
                                           workers=1, source=str(image)),
                   repeats=1, setup=lambda: shutil.rmtree(scratch / "single.zarr",
                                                          ignore_errors=True))
    rows, results = [], {"single": {k: single[k] for k in ("wall_best", "cpu_best")}}
    for layout in ("nifti", "stores"):
        progress(f"{layout} sweep")
        out = scratch / layout
        shutil.rmtree(out, ignore_errors=True)
        tasks = plan_sweep(open_raw_dataset(source), out, LOSSY, layout=layout).tasks()
        run = timed(lambda t=tasks: run_image(t), repeats=1)
        beside = tree_bytes(out / "nnunet")
        results[layout] = {"wall": run["wall_best"], "cpu": run["cpu_best"],
                           "nnunet_bytes": beside, "stores_bytes": tree_bytes(out / "stores")}
        rows.append([f"in process, {layout}", f"{run['cpu_best']:.1f}", f"{run['wall_best']:.1f}",
                     f"**{run['cpu_best'] / single['cpu_best']:.1f}x**",
                     f"{run['wall_best'] / single['wall_best']:.1f}x",
                     f"{tree_bytes(out / 'stores') / 1e6:.2f}", f"{beside / 1e6:.3f}"])
    rows += cli_rows(source, scratch, results)
    header = ["layout", "sweep CPU s", "sweep wall s", "CPU / compress", "wall / compress",
              "stores MB", "nnunet/ MB"]
    cli = results["cli single"]
    text = (f"One compress --ratio 20: in process {single['cpu_best']:.1f} CPU s, "
            f"{single['wall_best']:.1f} s wall; as a command {cli['wall']:.1f} s wall.\n\n"
            + table(header, rows) + "\n\n" + machine_markdown(info))
    save("stores_sweep", {"machine": info, "results": results}, text)


if __name__ == "__main__":
    main()
