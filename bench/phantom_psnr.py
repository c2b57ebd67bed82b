"""Does the demo's SYNTHETIC phantom compress like the real demo CTs? PSNR per ratio by grid.

Data flow: phantom cases 0..N-1 (portal-venous, seed 0) drawn on each grid -> medlossy's
``compress_volume_ratios`` (JPEG 2000, every stored byte counted) -> mean PSNR (r = 4096) per
ratio; the real demo CTs (tsct_001..003 of ``medlossy data demo``) go through the same call.
The slice size matters at high ratios: every slice's JPEG 2000 header (about 110 bytes) is
paid out of the same byte budget.

    PYTHONPATH=src .venv/bin/python bench/phantom_psnr.py [--cases 2] [--grids 96,120,128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from medlossy.compression import compress_volume_ratios
from medlossy.data.demo import prepare_demo
from medlossy.data.phantom import PhantomConfig, generate_case
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.volume import Volume

RATIOS = (1, 5, 10, 20, 50, 70, 100)
FIELD_OF_VIEW_MM = 384.0  # the demo phantom's in-plane field of view
SLICES, SLICE_MM = 48, 4.0


def _psnr_by_ratio(volume: Volume) -> dict[float, float | None]:
    """PSNR per lossy ratio; None where the ratio is out of the codec's reach."""
    found: dict[float, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="phantom-psnr-") as scratch:
        for ratio in RATIOS[1:]:
            try:
                stores = compress_volume_ratios(volume, {ratio: Path(scratch) / f"{ratio}.zarr"},
                                                workers=1)
                found[ratio] = stores[ratio]["achieved"]["psnr_db"]
            except MedlossyError:  # out of the codec's reach
                found[ratio] = None
    return found


def _row(name: str, volumes: list[Volume]) -> str:
    started = time.perf_counter()
    values = [_psnr_by_ratio(volume) for volume in volumes]
    cells = []
    for ratio in RATIOS[1:]:
        got = [v[ratio] for v in values]
        cells.append("out of reach" if any(g is None for g in got)
                     else f"{np.mean(got):.1f}")
    return f"| {name} | {len(volumes)} | " + " | ".join(cells) + \
        f" | {time.perf_counter() - started:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--grids", default="96,104,112,120,128",
                        help="in-plane sizes over the same 384 mm field of view")
    parser.add_argument("--demo-data", type=Path, default=Path("/tmp/phantom-psnr-demo"))
    arguments = parser.parse_args()
    print(f"2 threads at most; load average {os.getloadavg()[0]:.2f} at the start\n")
    print("| data | images | " + " | ".join(f"x{r:g}" for r in RATIOS[1:]) + " | s |")
    print("|---|---|" + "---|" * (len(RATIOS) - 1) + "---|")
    real = open_raw_dataset(prepare_demo(arguments.demo_data)[0])
    print(_row("real demo CTs", [read_volume(path, "CT") for case in real.cases()
                                     for path in case.images.values()]),
          flush=True)
    for side in (int(n) for n in arguments.grids.split(",")):
        spacing = FIELD_OF_VIEW_MM / side
        config = PhantomConfig(shape=(side, side, SLICES), spacing=(spacing, spacing, SLICE_MM),
                               phase="portal-venous")
        volumes = [generate_case(k, config).image for k in range(arguments.cases)]
        print(_row(f"phantom {side}x{side}x{SLICES} of {spacing:.2f} mm", volumes), flush=True)


if __name__ == "__main__":
    main()
