"""Experiment 1 of the study: image quality (PSNR) of each dataset at each ratio.

Every image is compressed into its own store under ``out/stores/<dataset>/r<ratio>/``; a store
that already exists and passes its checksums is reused, so an interrupted run resumes.
PSNR peak: 4096 for CT; for MR, max - min over the whole dataset, per channel (STUDY.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medlossy.compression import Target, compress_volume
from medlossy.datasets.nnunet_raw import ImageFile, RawDataset
from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.metrics import CT_DATA_RANGE
from medlossy.store import SliceStore

STUDY_RATIOS = (1, 2, 5, 10, 20, 50, 70, 100)


@dataclass(frozen=True)
class QualityRow:
    dataset: str
    case: str
    channel: int
    modality: str
    ratio_target: float
    ratio_achieved: float
    target_reached: bool
    stored_bytes: int
    raw_bytes: int
    psnr_db: float
    data_range: float
    mse: float
    max_abs_error: float
    encode_seconds: float


def _target(ratio: float) -> Target:
    return Target("lossless") if ratio == 1 else Target("ratio", float(ratio))


def dataset_ranges(dataset: RawDataset, images: Iterable[ImageFile]) -> dict[int, float]:
    """PSNR peak per channel: 4096 for CT, max - min over all of the dataset's images for MR."""
    low: dict[int, float] = {}
    high: dict[int, float] = {}
    for image in images:
        if image.modality == "CT":
            continue
        volume = read_volume(image.path, image.modality, lazy=True)
        for _, slab in volume.slabs(64):
            low[image.channel] = min(low.get(image.channel, np.inf), float(slab.min()))
            high[image.channel] = max(high.get(image.channel, -np.inf), float(slab.max()))
    ranges = {channel: high[channel] - low[channel] for channel in low}
    return {channel: ranges.get(channel, CT_DATA_RANGE)
            for channel in {image.channel for image in dataset.images()}}


def _reusable(store_path: Path, target: Target, data_range: float) -> dict | None:
    """The attributes of a finished store for the same target and PSNR peak, else None."""
    try:
        store = SliceStore(store_path)
    except MedlossyError:
        return None
    attributes = store.attributes
    if attributes.get("target") != target.to_dict() or store.verify():
        return None
    if attributes["achieved"]["data_range"] != float(f"{data_range:.6g}"):
        return None
    return attributes


def run_quality(dataset: RawDataset, out: Path, ratios: Iterable[float] = STUDY_RATIOS, *,
                workers: int | None = None, show_progress: bool = False) -> list[QualityRow]:
    """Compress every image of ``dataset`` at every ratio; one row per image and ratio."""
    images = dataset.images()
    ranges = dataset_ranges(dataset, images)
    rows = []
    tasks = [(ratio, image) for ratio in ratios for image in images]
    for ratio, image in tqdm(tasks, desc=f"{dataset.name} quality", unit="image",
                             disable=not show_progress):
        target = _target(ratio)
        store_path = (out / "stores" / dataset.name / f"r{ratio:g}" /
                      f"{image.case}_{image.channel:04d}.zarr")
        attributes = _reusable(store_path, target, ranges[image.channel])
        if attributes is None:
            volume = read_volume(image.path, image.modality, lazy=True)
            attributes = compress_volume(volume, store_path, target,
                                         data_range=ranges[image.channel], workers=workers,
                                         source=str(image.path))
        achieved = attributes["achieved"]
        rows.append(QualityRow(
            dataset=dataset.name, case=image.case, channel=image.channel,
            modality=image.modality, ratio_target=float(ratio),
            ratio_achieved=achieved["ratio"], target_reached=achieved["target_reached"],
            stored_bytes=achieved["stored_bytes"], raw_bytes=achieved["raw_bytes"],
            psnr_db=np.inf if achieved["psnr_db"] is None else achieved["psnr_db"],
            data_range=achieved["data_range"], mse=achieved["mse"],
            max_abs_error=achieved["max_abs_error"],
            encode_seconds=achieved["encode_seconds"]))
    return rows


def rows_as_dicts(rows: Iterable[QualityRow]) -> list[dict]:
    return [asdict(row) for row in rows]
