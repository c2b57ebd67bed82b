"""nnU-Net-like preprocessing: intensity normalisation fitted on training cases, resampling.

CT: clip to the 0.5 / 99.5 percentiles of foreground voxels (label > 0) over the training
cases, then z-score with their foreground mean and std. MR: z-score per image and channel.
Resampling to the target spacing scales each array axis (images trilinear, labels nearest);
predictions are resampled back the same way before the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medlossy.datasets.nnunet_raw import Case, RawDataset
from medlossy.decompression import read_store
from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.store.link import is_store_link, read_store_link
from medlossy.store.remote import is_url, join
from medlossy.volume import Volume

_SAMPLES_PER_CASE = 100_000  # foreground voxels drawn per case for the CT statistics


@dataclass
class LoadedCase:
    name: str
    channels: np.ndarray  # (C, X, Y, Z) float32, original grid
    labels: np.ndarray | None  # (X, Y, Z) uint8
    spacing: tuple[float, float, float]
    affine: np.ndarray


def store_folder(dataset: RawDataset) -> Path | str:
    """The folder of compressed stores a sweep's decoded dataset was made from: a path
    relative to the dataset, or a URL (stores served over HTTP, read through fsspec)."""
    relative = dataset.metadata.get("medlossy", {}).get("stores")
    if relative is None:
        raise MedlossyError(dataset.root / "dataset.json", "training source 'store' needs a "
                            "dataset made by `medlossy dataset compress` (no medlossy.stores)")
    if is_url(relative):
        return str(relative)
    return (dataset.root / relative).resolve()


def _read_store(stores: Path | str, case: Case, channel: int):
    path = join(stores, f"{case.name}_{channel:04d}.zarr")
    if not is_url(stores) and not Path(path).exists():
        raise MedlossyError(path, f"no store for case {case.name} channel {channel}")
    return read_store(path, workers=1)


def _read_image(path: Path, modality: str) -> Volume:
    """An image file, or the store that a stores-only sweep's link (``CASE_0000.mlstore``)
    names, decoded in memory: such a dataset has no decoded copy to read."""
    if is_store_link(path):
        return read_store(read_store_link(path), workers=1)
    return read_volume(path, modality)


def load_case(dataset: RawDataset, case: Case, stores: Path | str | None = None,
              ) -> LoadedCase:
    """Images from the dataset's files (a store link: its store), or decoded in memory from
    ``stores``; labels from the dataset (lossless) either way."""
    if stores is None:
        volumes = [_read_image(case.images[c], dataset.channel_modality(c))
                   for c in dataset.channels]
    else:
        volumes = [_read_store(stores, case, c) for c in dataset.channels]
    labels = None
    if case.label is not None:
        labels = np.asarray(read_volume(case.label).array).astype(np.uint8)
    channels = np.stack([np.asarray(v.array, dtype=np.float32) for v in volumes])
    return LoadedCase(case.name, channels, labels, volumes[0].spacing[:3], volumes[0].affine)


def fit_normalisation(dataset: RawDataset, cases: list[LoadedCase], seed: int = 0,
                      ) -> list[dict[str, Any]]:
    """Per-channel normalisation parameters, from training cases only."""
    rng = np.random.default_rng(seed)
    specs = []
    for index, channel in enumerate(dataset.channels):
        modality = dataset.channel_modality(channel)
        if modality != "CT":
            specs.append({"modality": modality, "scheme": "zscore-per-image"})
            continue
        samples = []
        for case in cases:
            values = case.channels[index][case.labels > 0] if case.labels is not None \
                else case.channels[index].ravel()
            if values.size > _SAMPLES_PER_CASE:
                values = rng.choice(values, _SAMPLES_PER_CASE, replace=False)
            samples.append(values)
        pooled = np.concatenate(samples) if samples else np.zeros(1, np.float32)
        low, high = np.percentile(pooled, [0.5, 99.5])
        clipped = np.clip(pooled, low, high)
        specs.append({"modality": "CT", "scheme": "ct-foreground", "clip": [float(low),
                      float(high)], "mean": float(clipped.mean()),
                      "std": float(max(clipped.std(), 1e-6))})
    return specs


def normalise(channels: np.ndarray, specs: list[dict[str, Any]]) -> np.ndarray:
    out = np.empty_like(channels, dtype=np.float32)
    for index, spec in enumerate(specs):
        values = channels[index].astype(np.float32)
        if spec["scheme"] == "ct-foreground":
            values = (np.clip(values, *spec["clip"]) - spec["mean"]) / spec["std"]
        else:
            values = (values - values.mean()) / max(float(values.std()), 1e-6)
        out[index] = values
    return out


def resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...],
                    target: tuple[float, ...]) -> tuple[int, int, int]:
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target,
                                                             strict=True))


def resample_image(channels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    if tuple(channels.shape[1:]) == tuple(shape):
        return channels
    tensor = torch.from_numpy(np.ascontiguousarray(channels))[None]
    return F.interpolate(tensor, size=shape, mode="trilinear", align_corners=False)[0].numpy()


def resample_labels(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    if tuple(labels.shape) == tuple(shape):
        return labels
    tensor = torch.from_numpy(labels.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=shape, mode="nearest")[0, 0].numpy().astype(np.uint8)


@dataclass
class PreparedCase:
    name: str
    image: np.ndarray  # (C, X, Y, Z) float32 at the target spacing, normalised
    labels: np.ndarray | None  # (X, Y, Z) uint8 at the target spacing


def prepare(case: LoadedCase, specs: list[dict[str, Any]],
            target_spacing: tuple[float, ...]) -> PreparedCase:
    shape = resampled_shape(case.channels.shape[1:], case.spacing, target_spacing)
    image = resample_image(normalise(case.channels, specs), shape)
    labels = None if case.labels is None else resample_labels(case.labels, shape)
    return PreparedCase(case.name, image, labels)
