"""One-encode sweeps: the cost of every ratio of one image against one single-ratio compress.

For each demo CT (a one-case nnU-Net dataset) this times, in this process with one worker:
- one `medlossy compress --ratio 20` (compress_volume; the store only, no NIfTI),
- the sweep's tasks at the study's 8 ratios the old way (run_task: a rate search per ratio),
- the same with run_image (the default: lossy ratios cut from layered JPEG 2000 encodes),
both sweeps including the decoded NIfTI outputs and part files. CPU seconds are the
load-independent figure (the machine is shared); wall seconds are given too.

PSNR per ratio both ways, and the old way's PSNR at the new store's exact bytes (interpolated
in log bytes between the old setting and one 0.3 dB above it), since the old search lands
anywhere within 0.4% of the budget and at x5 0.4% of the bytes is about 0.08 dB.

Usage: .venv/bin/python bench/sweep_encode.py [--cts "CT C,CT A"]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from _common import OUT, demo_cts, machine, machine_markdown, progress, save, table, timed

from medlossy.codecs import Setting, get_codec
from medlossy.compression import Target, compress_volume, plan_volume
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.datasets.sweep import STUDY_RATIOS, plan_sweep, run_image, run_task
from medlossy.io import read_volume
from medlossy.metrics import ErrorTally
from medlossy.store import SliceStore


def one_case_dataset(volume, folder: Path) -> Path:
    """An nnU-Net raw dataset holding ``volume`` as its only case (label: empty)."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.asarray(volume.array), volume.affine),
             folder / "imagesTr" / "case_0000.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(volume.shape, np.uint8), volume.affine),
             folder / "labelsTr" / "case.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": 1,
        "file_ending": ".nii.gz"}))
    return folder


def single_quality(image: Path, quality: float) -> tuple[int, float]:
    """Codestream bytes and PSNR (r = 4096) of every slice at one JPEG 2000 PSNR target."""
    volume = read_volume(image, "CT")
    plan = plan_volume(volume, None, None, str(image), Target("ratio", 20))
    codec = get_codec("jpeg2k")
    codes = plan.mapping.to_codes(np.moveaxis(np.asarray(volume.array), volume.axial_axis, 0))
    tally, total = ErrorTally(), 0
    for plane in codes:
        stream = codec.encode(plane, Setting("quality", quality))
        total += len(stream)
        tally.add(plane, codec.decode(stream))
    return total, tally.psnr(4096.0 / plan.mapping.step)


def old_psnr_at(image: Path, store: Path, new_store: Path) -> float | None:
    """The old search's PSNR at the new store's bytes, from the old RD curve near it."""
    old = SliceStore(store).attributes
    if old["codec"]["setting"]["mode"] != "quality":
        return None
    new = SliceStore(new_store).attributes
    quality = old["codec"]["setting"]["value"]
    chunks = sum(len(SliceStore(new_store).codestream(i)) for i in range(len(
        new["chunk_crc32"])))
    overhead = new["achieved"]["stored_bytes"] - chunks  # the store's metadata
    points = [single_quality(image, q) for q in (quality, quality + 0.3)]
    (b0, p0), (b1, p1) = [(b + overhead, p) for b, p in points]
    target = new["achieved"]["stored_bytes"]
    return p0 + (p1 - p0) * math.log(target / b0) / math.log(b1 / b0)


def bench_ct(name: str, description: str, volume) -> tuple[list[list], list[list], dict]:
    scratch = OUT / "sweep_encode" / name.replace(" ", "_")
    source = one_case_dataset(volume, scratch / "Dataset990_Sweep")
    image = source / "imagesTr" / "case_0000.nii.gz"
    progress(f"{name}: one compress at x20")
    single = timed(lambda: compress_volume(read_volume(image, "CT", lazy=True),
                                           scratch / "single.zarr", Target("ratio", 20),
                                           workers=1, source=str(image)),
                   repeats=1, setup=lambda: shutil.rmtree(scratch / "single.zarr",
                                                          ignore_errors=True))
    runs = {}
    for way, run in (("old", lambda tasks: [run_task(t) for t in tasks]),
                     ("new", run_image)):
        progress(f"{name}: {way} sweep")
        out = scratch / way
        shutil.rmtree(out, ignore_errors=True)
        tasks = plan_sweep(open_raw_dataset(source), out, STUDY_RATIOS).tasks()
        runs[way] = timed(lambda r=run, t=tasks: r(t), repeats=1)
    old_rows = {row["ratio_target"]: row for row in runs["old"]["result"]}
    new_rows = {row["ratio_target"]: row for row in runs["new"]["result"]}
    psnr_rows = []
    for ratio in STUDY_RATIOS:
        old, new = old_rows[float(ratio)], new_rows[float(ratio)]
        # rows name their stores relative to their sweep folder
        at_bytes = old_psnr_at(image, scratch / "old" / old["store"],
                               scratch / "new" / new["store"]) \
            if ratio > 1 else None

        def db(value: float | None) -> str:
            return "lossless" if value is None or not math.isfinite(value) else f"{value:.2f}"

        difference = "" if at_bytes is None or new["psnr_db"] is None \
            else f"{new['psnr_db'] - at_bytes:+.3f}"
        psnr_rows.append([name, f"x{ratio}", f"{old['ratio_achieved']:.3f}", db(old["psnr_db"]),
                          f"{new['ratio_achieved']:.3f}", db(new["psnr_db"]),
                          f"{new['psnr_db'] - old['psnr_db']:+.3f}"
                          if old["psnr_db"] and new["psnr_db"] else "",
                          db(at_bytes), difference])
    cost = [name, description.split(", ")[1]]
    for key in ("cpu_best", "wall_best"):
        cost += [f"{single[key]:.1f}", f"{runs['old'][key]:.1f}", f"{runs['new'][key]:.1f}",
                 f"{runs['old'][key] / single[key]:.1f}x",
                 f"{runs['new'][key] / single[key]:.1f}x"]
    document = {"single": {k: single[k] for k in ("cpu_best", "wall_best")},
                **{way: {k: runs[way][k] for k in ("cpu_best", "wall_best")} for way in runs},
                "rows": {way: [{k: v for k, v in row.items() if k != "reused"}
                               for row in runs[way]["result"]] for way in runs}}
    return [cost], psnr_rows, document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cts", default="CT C,CT A", help="demo CTs to use, comma-separated")
    arguments = parser.parse_args()
    info = machine()
    cts = demo_cts()
    costs, psnrs, document = [], [], {"machine": info}
    for name in arguments.cts.split(","):
        description, volume = cts[name.strip()]
        cost, psnr_rows, result = bench_ct(name.strip(), description, volume)
        costs += cost
        psnrs += psnr_rows
        document[name] = result
    markdown = "\n\n".join([
        "Cost of the 8-ratio sweep of one image (NIfTI outputs included) against one "
        "`compress --ratio 20` of it, one worker:",
        table(["CT", "shape", "compress CPU s", "old sweep CPU s", "new sweep CPU s",
               "old / compress", "new / compress", "compress wall s", "old wall s",
               "new wall s", "old / compress (wall)", "new / compress (wall)"], costs),
        "PSNR (dB, r = 4096) per ratio; 'old at new bytes' is the old search's PSNR at the "
        "new store's exact size:",
        table(["CT", "ratio", "old ratio", "old PSNR", "new ratio", "new PSNR", "new - old",
               "old at new bytes", "new - old at new bytes"], psnrs),
        machine_markdown(info)])
    save("sweep_encode", document, markdown)


if __name__ == "__main__":
    main()
