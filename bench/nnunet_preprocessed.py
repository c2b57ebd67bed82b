"""nnU-Net's preprocessed training data: its blosc2 float32 vs 16-bit medlossy stores.

Usage (writes bench/results/nnunet_preprocessed.{json,md}; data under bench/out/nnprep/):
    .venv/bin/python bench/nnunet_preprocessed.py [--seconds 20] [--workers 2] [--augment]
        [--decode-cache MB]

Data flow: two CTs (CT B, real, 1.5 mm isotropic; a 512x512x96 CT-like volume built from
CT C's slices, 0.98 x 0.98 x 0.4 mm) -> nnU-Net's own preprocessing steps (CTNormalization
with the foreground's intensity statistics, resampling to 1.0 x 0.98 x 0.98 mm with its
resampling function, class locations, ``nnUNetDatasetBlosc2.save_case`` with
``comp_blosc2_params`` for the patch) -> ``medlossy.nnunet.preprocessed.convert_folder`` per
variant (lossless HTJ2K, HTJ2K and JPEG 2000 at x10 and x20, tiles of 128) -> patches per
second through nnU-Net's ``nnUNetDataLoader`` (batch 2 of 64x160x160, a third foreground-
oversampled, no augmentation: the data supply alone) in ``--workers`` processes of
nnU-Net's ``NonDetMultiThreadedAugmenter``, each variant in a fresh process, with the load
average before and after. Bytes: the image files only (the segmentation is nnU-Net's blosc2
file in every variant), on disk in whole file-system blocks, and files; the normalised
values' largest error against nnU-Net's float32 and the stores' own PSNR (peak 4096 HU, the
lowest of the cases).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import _common
import memory
import numpy as np

from medlossy.loading import set_decode_cache

PATCH = (64, 160, 160)
TARGET_SPACING = (1.0, 0.9765625, 0.9765625)
OUT = _common.OUT / "nnprep"
LABELS = {"background": 0, "body": 1, "bone": 2}
#: (label, storage, codec, tile)
VARIANTS = (("HTJ2K lossless", "lossless", "htj2k", 128),
            ("HTJ2K x10", "x10", "htj2k", 128), ("HTJ2K x20", "x20", "htj2k", 128),
            ("HTJ2K x20 untiled", "x20", "htj2k", 0),
            ("JPEG 2000 x10", "x10", "jpeg2k", 128), ("JPEG 2000 x20", "x20", "jpeg2k", 128))


def _cases() -> dict[str, tuple[np.ndarray, tuple[float, ...]]]:
    """name -> (int16 slices-first voxels, spacing in that order)."""
    from medlossy.io import read_volume

    _, ct_b = _common.demo_cts()["CT B"]
    synthetic = read_volume(memory.synthetic_ct(96), "CT")
    found = {}
    for name, volume in (("ct_b", ct_b), ("synthetic", synthetic)):
        axis = volume.axial_axis
        spacing = (volume.spacing[axis], *(s for a, s in enumerate(volume.spacing) if a != axis))
        found[name] = (_common.slices_first(volume).astype(np.int16), spacing)
    return found


def _labels(image: np.ndarray) -> np.ndarray:
    """Body (> -300 HU) 1, bone (> 250 HU) 2: foreground classes for oversampling."""
    return ((image > -300).astype(np.int8) + (image > 250)).astype(np.int8)


def preprocess(folder: Path) -> dict:
    """nnU-Net's steps for each case into ``folder`` (blosc2); returns the minimal plans."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
        CTNormalization,
    )
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.preprocessing.resampling.default_resampling import (
        compute_new_shape,
        resample_data_or_seg_to_shape,
    )
    from nnunetv2.training.dataloading.nnunet_dataset import (
        comp_blosc2_params,
        nnUNetDatasetBlosc2,
    )

    cases = _cases()
    foreground = np.concatenate([image[_labels(image) > 0] for image, _ in cases.values()])
    intensities = {"mean": float(foreground.mean()), "std": float(foreground.std()),
                   "percentile_00_5": float(np.percentile(foreground, 0.5)),
                   "percentile_99_5": float(np.percentile(foreground, 99.5))}
    plans = {"configurations": {"3d_fullres": {"normalization_schemes": ["CTNormalization"],
                                               "data_identifier": "nnUNetPlans_3d_fullres"}},
             "foreground_intensity_properties_per_channel": {"0": intensities}}
    folder.mkdir(parents=True, exist_ok=True)
    for name, (image, spacing) in cases.items():
        _common.progress(f"nnU-Net preprocessing {name} {image.shape} {spacing}")
        data = CTNormalization(False, intensities).run(image[None].astype(np.float32))
        shape = compute_new_shape(image.shape, spacing, TARGET_SPACING)
        data = resample_data_or_seg_to_shape(data, shape, spacing, TARGET_SPACING, order=3,
                                             order_z=0, force_separate_z=None)
        seg = resample_data_or_seg_to_shape(_labels(image)[None], shape, spacing,
                                            TARGET_SPACING, is_seg=True, order=1, order_z=0,
                                            force_separate_z=None)
        properties = {"spacing": list(TARGET_SPACING), "class_locations":
                      DefaultPreprocessor._sample_foreground_locations(seg, [1, 2])}
        blocks, chunks = comp_blosc2_params(data.shape, PATCH, 4)
        seg_blocks, seg_chunks = comp_blosc2_params(seg.shape, PATCH, 2)
        nnUNetDatasetBlosc2.save_case(data.astype(np.float32), seg.astype(np.int16),
                                      properties, str(folder / name), chunks=chunks,
                                      blocks=blocks, chunks_seg=seg_chunks,
                                      blocks_seg=seg_blocks)
    (folder.parent / "plans.json").write_text(json.dumps(plans, indent=2))
    return plans


def _augmentation() -> tuple[tuple[int, ...], object]:
    """nnU-Net's training pipeline for this patch (3D, rotation +-30 degrees, all mirror
    axes): the larger patch its loader crops first, and its transforms."""
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    rotation = (-30.0 / 360 * 2 * np.pi, 30.0 / 360 * 2 * np.pi)
    initial = tuple(int(n) for n in get_patch_size(PATCH, rotation, rotation, rotation,
                                                   (0.85, 1.25)))
    transforms = nnUNetTrainer.get_training_transforms(
        PATCH, rotation, None, (0, 1, 2), False, use_mask_for_norm=[False],
        foreground_labels=[1, 2])
    return initial, transforms


def measure(folder: str, kind: str, workers: int, seconds: float,
            augment: bool = False) -> dict:
    """Patches per second of nnU-Net's loader over ``folder`` (run in a fresh process);
    ``augment``: with nnU-Net's training transforms, as its trainer runs the loader."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import (
        NonDetMultiThreadedAugmenter,
    )
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from medlossy.nnunet.preprocessed import MedlossyStoreDataset

    dataset = (nnUNetDatasetBlosc2 if kind == "blosc2" else MedlossyStoreDataset)(folder)
    initial, transforms = _augmentation() if augment else (PATCH, None)
    loader = nnUNetDataLoader(dataset, 2, initial, PATCH, LabelManager(LABELS, None),
                              oversample_foreground_percent=0.33, transforms=transforms)
    supply = loader if workers == 0 else NonDetMultiThreadedAugmenter(
        loader, None, workers, max(6, workers // 2), None, False, 0.002)
    for _ in range(2):
        next(supply)
    children = [process.pid for process in getattr(supply, "_processes", [])]
    load_before = os.getloadavg()[0]
    cpu = _cpu_seconds(children)
    started, patches = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        patches += len(next(supply)["keys"])
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(children) - cpu
    if workers:
        supply._finish()
    rate = patches / elapsed
    return {"patches_per_second": round(rate, 2),
            "mvox_per_second": round(rate * np.prod(PATCH) / 1e6, 1),
            "mvox_per_cpu_second": round(patches * np.prod(PATCH) / 1e6 / cpu, 1),
            "patches": patches, "seconds": round(elapsed, 1), "cpu_seconds": round(cpu, 1),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def _cpu_seconds(children: list[int]) -> float:
    """CPU time of this process and of the loader's worker processes (still running, so
    read from /proc: the rusage of children counts only those reaped)."""
    total = time.process_time()
    for pid in children:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _measured(folder: Path, kind: str, workers: int, seconds: float, augment: bool) -> dict:
    result = subprocess.run([sys.executable, __file__, "--measure", str(folder), kind,
                             "--workers", str(workers), "--seconds", str(seconds),
                             *(["--augment"] if augment else [])],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _image_files(folder: Path, kind: str) -> list[Path]:
    if kind == "blosc2":
        return [p for p in folder.glob("*.b2nd") if not p.name.endswith("_seg.b2nd")]
    return [p for p in folder.glob("*.zarr/**/*") if p.is_file()]


def _image_bytes(folder: Path, kind: str) -> int:
    return sum(p.stat().st_size for p in _image_files(folder, kind))


def _disk_bytes(folder: Path, kind: str) -> int:
    """What the files take on the file system (whole blocks), as du counts."""
    return sum(p.stat().st_blocks * 512 for p in _image_files(folder, kind))


def _max_error(blosc2_folder: Path, folder: Path) -> float:
    """Largest |store - nnU-Net| over every normalised voxel."""
    import blosc2

    from medlossy.nnunet.preprocessed import MedlossyStoreDataset

    dataset = MedlossyStoreDataset(str(folder))
    error = 0.0
    for case in dataset.identifiers:
        expected = blosc2.open(str(blosc2_folder / f"{case}.b2nd"), mode="r")[:]
        error = max(error, float(np.abs(np.asarray(dataset.load_case(case)[0]) - expected)
                                 .max()))
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--augment", action="store_true",
                        help="with nnU-Net's training transforms (results: "
                             "nnunet_preprocessed_augment)")
    parser.add_argument("--only", nargs="+", default=None, metavar="VARIANT",
                        help="these store variants only, e.g. 'HTJ2K x20'")
    parser.add_argument("--decode-cache", type=float, default=None, metavar="MB",
                        help="each loader worker keeps up to MB of decoded slices/tiles "
                             "(results: ..._cacheMB)")
    parser.add_argument("--measure", nargs=2, metavar=("FOLDER", "KIND"))
    arguments = parser.parse_args()
    if arguments.decode_cache is not None:  # the measuring processes and workers inherit it
        set_decode_cache(arguments.decode_cache)
    if arguments.measure:
        print(json.dumps(measure(*arguments.measure, arguments.workers, arguments.seconds,
                                 arguments.augment)))
        return

    import blosc2

    from medlossy.nnunet.preprocessed import convert_folder
    from medlossy.nnunet.storage import parse_storage
    from medlossy.store import SliceStore

    source = OUT / "nnUNetPlans_3d_fullres"
    plans = json.loads((OUT / "plans.json").read_text()) if (OUT / "plans.json").exists() \
        else preprocess(source)
    rows, document = [], {"machine": _common.machine(), "patch": PATCH, "batch": 2,
                          "workers": arguments.workers, "augment": arguments.augment,
                          "decode_cache_mb": arguments.decode_cache, "variants": []}
    voxels = sum(int(np.prod(blosc2.open(str(p), mode="r").shape))
                 for p in source.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))
    blosc2_bytes = _image_bytes(source, "blosc2")
    variants = [("nnU-Net blosc2 float32", source, "blosc2", None)]
    for label, storage, codec, tile in VARIANTS:
        if arguments.only and label not in arguments.only:
            continue
        kind = parse_storage(storage, codec, tile)
        folder = OUT / kind.folder(source.name)
        if not folder.exists():
            _common.progress(f"converting: {label}")
            started = time.perf_counter()
            convert_folder(source, folder, plans, "3d_fullres", kind, workers=2)
            _common.progress(f"  {time.perf_counter() - started:.0f} s")
        variants.append((label, folder, "stores", _max_error(source, folder)))
    psnr = {folder: min((SliceStore(store).attributes["achieved"]["psnr_db"] or math.inf
                         for store in folder.glob("*.zarr")), default=None)
            for _, folder, kind, _ in variants if kind == "stores"}
    for label, folder, kind, error in variants:
        _common.progress(f"measuring: {label}")
        run = _measured(folder, kind, arguments.workers, arguments.seconds,
                        arguments.augment)
        stored, disk = _image_bytes(folder, kind), _disk_bytes(folder, kind)
        entry = {"variant": label, "image_bytes": stored, "of_blosc2": stored / blosc2_bytes,
                 "disk_bytes": disk, "files": len(_image_files(folder, kind)),
                 "min_store_psnr_db": psnr.get(folder),
                 "bytes_per_voxel": stored / voxels, "max_abs_error_normalised": error, **run}
        document["variants"].append(entry)
        rows.append([label, f"{stored / 1e6:.1f}", f"{stored / blosc2_bytes:.3f}",
                     f"{disk / 1e6:.1f}", str(entry["files"]),
                     f"{8 * stored / voxels:.2f}", "-" if error is None else f"{error:.3g}",
                     "-" if kind == "blosc2" else f"{psnr[folder]:.1f}",
                     f"{run['patches_per_second']:.2f}", f"{run['mvox_per_second']:.1f}",
                     f"{run['mvox_per_cpu_second']:.1f}",
                     f"{run['load_before']:.1f} / {run['load_after']:.1f}"])
    blosc2_rate = document["variants"][0]["patches_per_second"]
    blosc2_cpu_rate = document["variants"][0]["mvox_per_cpu_second"]
    for entry, row in zip(document["variants"], rows, strict=True):
        entry["of_blosc2_rate"] = entry["patches_per_second"] / blosc2_rate
        entry["of_blosc2_cpu_rate"] = entry["mvox_per_cpu_second"] / blosc2_cpu_rate
        row.insert(9, f"{entry['of_blosc2_rate']:.2f}")
        row.insert(12, f"{entry['of_blosc2_cpu_rate']:.2f}")
    markdown = "\n".join([
        f"### nnU-Net preprocessed data: blosc2 vs stores ({voxels / 1e6:.1f} Mvox in 2 "
        f"cases, patches {'x'.join(map(str, PATCH))}, batch 2, {arguments.workers} loader "
        f"workers{', nnU-Net augmentation' if arguments.augment else ''}, decode cache "
        f"{arguments.decode_cache or 0:g} MB per worker)", "",
        _common.table(["variant", "image MB", "of blosc2", "on disk MB", "files", "bits/voxel",
                       "max error (normalised)", "store PSNR dB (min)", "patches/s",
                       "of blosc2 rate", "Mvox/s", "Mvox/CPU-s", "of blosc2 per CPU-s",
                       "load 1 min before / after"], rows), "",
        _common.machine_markdown(document["machine"])])
    _common.save("nnunet_preprocessed" + ("_augment" if arguments.augment else "")
                 + ("" if arguments.decode_cache is None else
                    f"_cache{arguments.decode_cache:g}"),
                 document, markdown)


if __name__ == "__main__":
    main()
