"""Fingerprint every store the rate control writes: sha256 of each stored file, every mode.

Run it on two versions of the code and compare the outputs: a change that moves rate control
around without changing what it decides leaves every line the same.

    PYTHONPATH=src python bench/ratecontrol_identity.py --out /tmp/after.json
    PYTHONPATH=/other/checkout/src python bench/ratecontrol_identity.py --out /tmp/before.json
    diff /tmp/before.json /tmp/after.json

Data: crops of the demo's real CT (int16) and MR (rescaled to uint8), a float CT whose values
16-bit codes cannot hold exactly, and a 34-slice CT for the 3D codecs (blocks of 16, the last
one short). Modes: ratio (every allocation; jpeg2k, htj2k, jpegxl, jpegls, sperr, sz3, zfp;
tiles), multi-ratio sweeps (layered and not), PSNR, max error, lossless, a ratio lossless
beats, a ratio out of reach, DICOM-style counting (``encode_volume``) and ``ratio_reach``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medlossy.compression import (
    Target,
    compress_volume,
    compress_volume_ratios,
    encode_volume,
    plan_volume,
    ratio_reach,
)
from medlossy.data.demo import demo_reference_files
from medlossy.errors import MedlossyError
from medlossy.volume import Volume

WORKERS = 2


def _crop(path: Path, crop: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path).slicer[crop]
    return np.asarray(image.dataobj), image.affine


def volumes() -> dict[str, Callable[[], Volume]]:
    """Fresh volumes by name (compress may set a volume's modality)."""
    files = demo_reference_files()
    ct, ct_affine = _crop(files / "aorta_report" / "example_ct.nii.gz",
                          (slice(60, 156), slice(40, 120), slice(80, 104)))
    tall, tall_affine = _crop(files / "aorta_report" / "example_ct.nii.gz",
                              (slice(60, 124), slice(40, 104), slice(70, 104)))
    mr, mr_affine = _crop(files / "example_mr_sm.nii.gz",
                          (slice(10, 106), slice(5, 85), slice(0, 20)))
    mr8 = np.rint(255.0 * (mr - mr.min()) / (mr.max() - mr.min())).astype(np.uint8)
    ct_float = (ct.astype(np.float32) * 0.37 + 0.11).astype(np.float32)
    return {
        "ct": lambda: Volume(ct.copy(), ct_affine, "CT"),
        "ct34": lambda: Volume(tall.copy(), tall_affine, "CT"),
        "mr8": lambda: Volume(mr8.copy(), mr_affine, "MR"),
        "ct_float": lambda: Volume(ct_float.copy(), ct_affine, "OTHER"),
    }


#: (name, volume, codec, target, tile)
SINGLE: list[tuple[str, str, str | None, Target, int | None]] = [
    ("ct_j2k_r10_psnr", "ct", "jpeg2k", Target("ratio", 10), None),
    ("ct_j2k_r10_equal", "ct", "jpeg2k", Target("ratio", 10, "equal"), None),
    ("ct_j2k_r10_optimal", "ct", "jpeg2k", Target("ratio", 10, "optimal"), None),
    ("ct_j2k_r10_tile32", "ct", "jpeg2k", Target("ratio", 10), 32),
    ("ct_j2k_r2", "ct", "jpeg2k", Target("ratio", 2), None),
    ("ct_j2k_r1.8", "ct", "jpeg2k", Target("ratio", 1.8), None),
    ("ct_j2k_r1.5_lossless_beats", "ct", "jpeg2k", Target("ratio", 1.5), None),
    ("ct_htj2k_r10", "ct", "htj2k", Target("ratio", 10), None),
    ("ct_jpegxl_r10", "ct", "jpegxl", Target("ratio", 10), None),
    ("ct_jpegls_r8", "ct", "jpegls", Target("ratio", 8), None),
    ("ct_j2k_psnr50", "ct", "jpeg2k", Target("psnr", 50), None),
    ("ct_htj2k_psnr45", "ct", "htj2k", Target("psnr", 45), None),
    ("ct_jpegls_maxerr5", "ct", "jpegls", Target("max_error", 5), None),
    ("ct_j2k_lossless", "ct", "jpeg2k", Target("lossless"), None),
    ("ct_float_lossless_default", "ct_float", None, Target("lossless"), None),
    ("ct_float_j2k_r10", "ct_float", "jpeg2k", Target("ratio", 10), None),
    ("mr8_j2k_r5", "mr8", "jpeg2k", Target("ratio", 5), None),
    ("mr8_jpegls_r5", "mr8", "jpegls", Target("ratio", 5), None),
    ("mr8_j2k_psnr40", "mr8", "jpeg2k", Target("psnr", 40), None),
    ("mr8_jpegls_maxerr2", "mr8", "jpegls", Target("max_error", 2), None),
    ("mr8_lossless", "mr8", None, Target("lossless"), None),
    ("ct34_sperr_r20", "ct34", "sperr", Target("ratio", 20), None),
    ("ct34_sz3_r20", "ct34", "sz3", Target("ratio", 20), None),
    ("ct34_zfp_r20", "ct34", "zfp", Target("ratio", 20), None),
    ("ct34_zfp_r8", "ct34", "zfp", Target("ratio", 8), None),
    ("ct34_zfp_psnr45", "ct34", "zfp", Target("psnr", 45), None),
    ("ct34_sz3_psnr50", "ct34", "sz3", Target("psnr", 50), None),
    ("ct34_sperr_maxerr10", "ct34", "sperr", Target("max_error", 10), None),
    ("ct34_zfp_lossless", "ct34", "zfp", Target("lossless"), None),
    ("ct_jpegls_r200_out_of_reach", "ct", "jpegls", Target("ratio", 200), None),
]
#: (name, volume, codec, ratios, layered, tile)
SWEEPS: list[tuple[str, str, str | None, tuple[float, ...], bool, int | None]] = [
    ("ct_j2k_layered", "ct", None, (1, 5, 10, 20, 50), True, None),
    ("ct_j2k_plain", "ct", None, (1, 10), False, None),
    ("ct_j2k_low", "ct", None, (1.8, 2, 3), True, None),
    ("mr8_j2k_layered", "mr8", None, (1, 3, 8, 30), True, None),
    ("ct_float_layered", "ct_float", None, (1, 10), True, None),
    ("ct_j2k_tiled", "ct", None, (1, 20), True, 48),
    ("ct34_sperr", "ct34", "sperr", (1, 10), True, None),
]


def fingerprint(store: Path) -> dict[str, str]:
    """sha256 of every file of ``store`` by relative path."""
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


def _attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if k != "timing"}


def run(scratch: Path) -> dict[str, Any]:
    made = volumes()
    results: dict[str, Any] = {}
    for name, volume, codec, target, tile in SINGLE:
        print(name, file=sys.stderr)
        store = scratch / f"{name}.zarr"
        try:
            attributes = compress_volume(made[volume](), store, target, codec_name=codec,
                                         workers=WORKERS, source=f"{name}.nii.gz", tile=tile)
        except MedlossyError as error:
            results[name] = {"error": str(error)}
            continue
        results[name] = {"files": fingerprint(store), "attributes": _attributes(attributes)}
    for name, volume, codec, ratios, layered, tile in SWEEPS:
        print(name, file=sys.stderr)
        decoded: dict[str, str] = {}

        def on_store(ratio, _attributes, volume_out, _seconds, decoded=decoded) -> None:
            array = np.ascontiguousarray(volume_out.array)
            decoded[f"{ratio:g}"] = hashlib.sha256(array.tobytes()).hexdigest()

        outputs = {r: scratch / f"{name}_r{r:g}.zarr" for r in ratios}
        written = compress_volume_ratios(made[volume](), outputs, codec_name=codec,
                                         workers=WORKERS, layered=layered, on_store=on_store,
                                         source=f"{name}.nii.gz", tile=tile)
        results[name] = {f"{r:g}": {"files": fingerprint(outputs[r]),
                                    "attributes": _attributes(written[r])}
                         for r in ratios}
        results[name]["decoded"] = decoded
    print("dicom-style counting, ratio reach", file=sys.stderr)
    for codec, target in (("jpeg2k", Target("ratio", 10)), ("htj2k", Target("psnr", 48)),
                          ("jpegls", Target("max_error", 3))):
        volume = made["ct"]()
        plan = plan_volume(volume, codec, None, "dicom.nii.gz", target, sixteen_bit=True)
        found = encode_volume(volume, plan, target, lambda s: sum(map(len, s)),
                              workers=WORKERS, source="dicom.nii.gz")
        digest = hashlib.sha256(b"".join(found.streams)).hexdigest()
        results[f"encode_volume_{codec}_{target.mode}"] = {
            "setting": [found.setting.mode, found.setting.value], "reached": found.reached,
            "passes": found.passes, "streams": digest, "mse": found.tally.mse}
    for codec in ("jpegls", "sz3", "jpeg2k"):
        results[f"ratio_reach_{codec}"] = ratio_reach(made["ct34"](), codec, workers=WORKERS)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="JSON file of every fingerprint (default: none, required)")
    arguments = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ratecontrol-identity-"))
    try:
        results = run(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    arguments.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    stores = sum(len(v.get("files", ())) for v in results.values() if isinstance(v, dict))
    print(f"{len(results)} cases, {stores} single-store files: {arguments.out}")


if __name__ == "__main__":
    main()
