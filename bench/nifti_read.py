"""How long one slab-by-slab pass over a .nii.gz takes, as compress_volume reads it.

compress_volume reads a lazy NIfTI three times, 16 axial slices at a time (scan, fill the slice
buffer, measure the errors). With nibabel's default (keep_file_open='auto') a .nii.gz stays
open between reads only when indexed_gzip is installed; otherwise every slab re-opens the file
and decompresses it from the start up to the slab (medlossy read it that way before commit
2ed4ce2). This times, on memory.py's synthetic CT: one pass of Volume.slabs() over medlossy's
read_volume(lazy=True), over nib.load() with the default and with keep_file_open=True, and one
whole-volume read.

    .venv/bin/python bench/nifti_read.py [--slices 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse

import _common
import memory
import nibabel as nib
import numpy as np

from medlossy.io import read_volume
from medlossy.volume import Volume


def slab_pass(volume: Volume) -> int:
    return sum(len(slab) for _, slab in volume.slabs())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=_common.REPEATS)
    arguments = parser.parse_args()
    info = _common.machine()
    source = memory.synthetic_ct(arguments.slices)
    try:
        import indexed_gzip  # noqa: F401
        has_indexed_gzip = True
    except ImportError:
        has_indexed_gzip = False
    cases = {
        "Volume.slabs() on medlossy's read_volume(lazy=True), as compress_volume reads":
            lambda: slab_pass(read_volume(source, "CT", lazy=True)),
        "Volume.slabs() on nib.load() (keep_file_open='auto', the default)":
            lambda: slab_pass(Volume(nib.load(source).dataobj, nib.load(source).affine)),
        "Volume.slabs() on nib.load(keep_file_open=True)":
            lambda: slab_pass(Volume(nib.load(source, keep_file_open=True).dataobj,
                                     nib.load(source).affine)),
        "np.asarray(nib.load(path).dataobj), whole volume":
            lambda: np.asarray(nib.load(source).dataobj).shape[2],
    }
    rows, results = [], []
    for label, function in cases.items():
        busy = _common.wait_for_quiet()
        best, runs, _ = _common.best_of(function, repeats=arguments.repeats)
        results.append({"case": label, "seconds_best": best, "seconds_all": runs,
                        "busy_cores_before": busy})
        rows.append([label, f"{best:.1f}"])
        _common.progress(f"  {label}: {best:.1f} s")
    markdown = "\n\n".join([
        "### Reading a .nii.gz slab by slab",
        f"{source.name} ({source.stat().st_size / 2**20:.0f} MiB), 16-slice slabs; "
        f"indexed_gzip installed: {has_indexed_gzip}; best of {arguments.repeats} runs.",
        _common.table(["one pass", "seconds"], rows),
        _common.machine_markdown(info),
    ])
    _common.save("nifti_read", {"machine": info, "source": str(source),
                                "indexed_gzip": has_indexed_gzip, "cases": results}, markdown)


if __name__ == "__main__":
    main()
