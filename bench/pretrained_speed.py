"""Seconds per volume of the pretrained brain-extraction models on the CPU (issue 22, item 3).

Data flow: Colin27 (``medlossy data brain``: Debian's mricron-data, 181 x 217 x 181 voxels of
1 mm) -> ``get_model(NAME, device="cpu").predict`` once to warm up (weights loaded, kernels
chosen), then ``--repeats`` timed calls -> median, min and max wall seconds and CPU seconds
per volume, the brain volume in mL, torch's thread count and the machine's load before the
run, as a Markdown table on stdout and JSON in ``--out``. A model whose extra is not
installed is reported as absent, not timed. HD-BET runs in medlossy's fast mode (one of its
five networks, no test-time mirroring); the note says so.

    PYTHONPATH=src .venv/bin/python bench/pretrained_speed.py [--models deepbet hd-bet]
        [--repeats 3] [--no-warm-up] [--out x.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent


def time_model(name: str, volume, repeats: int, warm_up: bool) -> dict[str, object]:
    """A warm-up call (unless not ``warm_up``), then ``repeats`` timed calls of one model on
    one volume."""
    import torch

    from medlossy.errors import MedlossyError
    from medlossy.pretrained import get_model

    try:
        model = get_model(name, device="cpu")
    except MedlossyError as error:
        return {"model": name, "absent": str(error)}
    if warm_up:
        model.predict(volume)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        mask = model.predict(volume)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    return {"model": name, "mode": model.mode, "torch_threads": torch.get_num_threads(),
            "repeats": repeats, "warm_up": warm_up,
            "median_s": round(statistics.median(walls), 2),
            "min_s": round(min(walls), 2), "max_s": round(max(walls), 2),
            "median_cpu_s": round(statistics.median(cpus), 2),
            "brain_ml": round(float(np.count_nonzero(mask)) * voxel_ml, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["deepbet", "hd-bet"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-warm-up", action="store_true",
                        help="time the first call too (HD-BET: minutes per call, its weights "
                             "load in about a second)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    arguments = parser.parse_args()
    sys.path.insert(0, str(BENCH))
    from _common import busy_cores, machine

    from medlossy.data.brain import prepare_brain_mr
    from medlossy.io import read_volume

    with tempfile.TemporaryDirectory(prefix="medlossy-pretrained-speed-") as scratch:
        folder = prepare_brain_mr(scratch)
        (image,) = sorted((folder / "imagesTs").glob("*.nii.gz"))
        volume = read_volume(image)
    busy, before = busy_cores(), machine()
    rows = [time_model(name, volume, arguments.repeats, not arguments.no_warm_up)
            for name in arguments.models]
    print("| model | mode | s per volume (median) | min | max | CPU s | brain mL |\n"
          "|---|---|---|---|---|---|---|")
    for row in rows:
        if "absent" in row:
            print(f"| {row['model']} | not installed: {row['absent']} | | | | | |")
            continue
        print(f"| {row['model']} | {row['mode'] or 'as published'} | {row['median_s']} | "
              f"{row['min_s']} | {row['max_s']} | {row['median_cpu_s']} | {row['brain_ml']} |")
    print(f"Colin27 {tuple(volume.array.shape)}, load average before "
          f"{before['load_average_at_start']}, busy cores before {busy:.2f}, nproc "
          f"{before['nproc']}", file=sys.stderr)
    if arguments.out:
        arguments.out.write_text(json.dumps({"machine": before, "busy_cores_before": busy,
                                             "image": "Colin27 ch2", "models": rows},
                                            indent=1) + "\n")


if __name__ == "__main__":
    main()
