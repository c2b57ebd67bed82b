"""Does ratio mode land within 1% for codecs whose sizes step (SZ3, ZFP, JPEG-LS)?

Every codec x ratio x volume through compress_volume (one worker): the ratio recomputed from
the files on disk (raw 16-bit bytes / every byte under the store), the PSNR (r = 4096) the
store records, or the one-line refusal of a ratio out of the codec's reach. Volumes: two
96 x 96 x 64 phantoms (seeds 0 and 1), a 128 x 112 x 64 crop of CT B and all of CT A.

    PYTHONPATH=src .venv/bin/python bench/ratio_band.py [--codecs sz3 zfp] [--csv OUT.csv]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from medlossy.compression import Target, compress_volume
from medlossy.data.demo import demo_reference_files
from medlossy.data.phantom import PhantomConfig, generate_case
from medlossy.errors import MedlossyError
from medlossy.volume import Volume


def volumes() -> Iterator[tuple[str, Callable[[], Volume]]]:
    for seed in (0, 1):
        image = generate_case(seed, PhantomConfig(shape=(96, 96, 64), seed=seed)).image
        yield f"phantom{seed}", (lambda i=image: Volume(np.asarray(i.array), i.affine.copy(),
                                                        modality="CT"))
    reference = demo_reference_files()
    ct_b = nib.load(reference / "aorta_report" / "example_ct.nii.gz")
    crop = np.ascontiguousarray(np.asarray(ct_b.dataobj)[40:168, 30:142, 60:124])
    yield "ct_b_crop", lambda: Volume(crop, ct_b.affine.copy(), modality="CT")
    ct_a = nib.load(reference / "example_ct.nii.gz")
    whole = np.asarray(ct_a.dataobj)
    yield "ct_a", lambda: Volume(whole, ct_a.affine.copy(), modality="CT")


def walk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codecs", nargs="+", default=["sz3", "zfp", "jpegls"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[5, 10, 20, 50, 100])
    parser.add_argument("--csv", type=Path, default=None)
    arguments = parser.parse_args(argv)
    rows = []
    for name, make in volumes():
        for codec in arguments.codecs:
            for ratio in arguments.ratios:
                folder = Path(tempfile.mkdtemp())
                row = {"volume": name, "codec": codec, "ratio": ratio}
                try:
                    attributes = compress_volume(make(), folder / "s.zarr",
                                                 Target("ratio", ratio), codec_name=codec,
                                                 workers=1)
                    achieved = attributes["achieved"]
                    on_disk = achieved["raw_bytes"] / walk_bytes(folder / "s.zarr")
                    row.update(achieved=round(on_disk, 4),
                               within=abs(on_disk / ratio - 1.0) <= 0.01,
                               psnr_db=achieved["psnr_db"],
                               setting=attributes["codec"]["setting"]["mode"], refused="")
                except MedlossyError as error:
                    row.update(achieved="", within="", psnr_db="", setting="",
                               refused=error.problem)
                finally:
                    shutil.rmtree(folder)
                rows.append(row)
                print(row, flush=True)
    if arguments.csv is not None:
        with open(arguments.csv, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
