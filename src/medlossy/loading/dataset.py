"""Training patches decoded on the fly from compressed stores: a PyTorch / MONAI dataset.

Data flow: stores (one per case and channel, ``CASE_0000.zarr``) + lossless label volumes
(``CASE.nii.gz``, read once, moved to the store's axis order) -> for sample ``i``: a random
generator seeded by (seed, i) picks a case and a box (a share of boxes centred on foreground)
-> ``StoreVolume.read`` decodes only that box's slices at the chosen resolution level -> a
dict ``{"image": (C, z, y, x) float32, "label": (1, z, y, x) uint8, "case", "start"}``,
optionally passed through a MONAI dictionary transform.

Sample ``i`` is a pure function of (seed, i), so a DataLoader's worker processes, a resumed
run and a run over decoded copies draw the same patches. Axes are the store's (z = axial).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.loading.volume import StoreVolume
from medlossy.store.remote import StoreFiles, basename, is_url

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
#: Foreground voxels remembered per case to centre patches on (a random subset).
_FOREGROUND_SAMPLES = 10_000


def _listed_stores(stores: str | os.PathLike[str]) -> list[Path] | list[str]:
    """One store, or the ``*.zarr`` stores of a folder: a path, or a URL (a folder URL is
    listed through fsspec, where its protocol lists: not plain HTTP without an index)."""
    if is_url(stores):
        files = StoreFiles(stores)
        if files.exists("zarr.json") or files.exists(".zattrs"):  # Zarr 3 or 2
            return [files.root]
        return files.listed(".zarr")
    folder = Path(stores)
    if (folder / ".zattrs").exists() or (folder / "zarr.json").exists():  # Zarr 2 or 3
        return [folder]
    if folder.is_dir():
        return sorted(folder.glob("*.zarr"))
    raise MedlossyError(folder, "no such store or folder of stores")


def group_stores(stores: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 ) -> dict[str, list[Path | str]]:
    """Case name -> its channel stores in channel order (``CASE_0000.zarr``, ``CASE_0001``);
    stores are paths or URLs."""
    if isinstance(stores, (str, os.PathLike)):
        paths = _listed_stores(stores)
    else:
        paths = [p if is_url(p) else Path(p) for p in stores]
    if not paths:
        raise MedlossyError(stores, "no *.zarr stores in this folder")
    cases: dict[str, dict[int, Path | str]] = {}
    for path in paths:
        stem = basename(path).removesuffix(".zarr")
        match = _CHANNEL.match(stem)
        case, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        cases.setdefault(case, {})[channel] = path
    return {case: [channels[c] for c in sorted(channels)] for case, channels in
            sorted(cases.items())}


def _label_file(labels: str | os.PathLike[str] | Mapping[str, Any], case: str) -> Path:
    if isinstance(labels, Mapping):
        return Path(labels[case])
    matches = sorted(Path(labels).glob(f"{case}.*"))
    if not matches:
        raise MedlossyError(labels, f"no label volume for case {case!r}")
    return matches[0]


class StorePatchDataset(Dataset):
    """Random training patches, decoded on the fly from stores.

    Args:
        stores: a folder of stores, one store, or a list of store paths.
        patch_size: (z, y, x) voxels at resolution ``level``, z along the store's slices.
        labels: a folder of label volumes named ``CASE.<ext>`` (any format medlossy reads) or
            a mapping case -> path; None for image-only patches.
        samples: the dataset's length (patches per epoch).
        foreground_fraction: share of patches centred on a labelled voxel.
        seed: patches are a function of (seed, index).
        level: resolution level decoded (0 = full; 1 = half in y and x, ...), decoded
            directly from the codestream where the codec allows.
        threads: decoding threads per patch (per DataLoader worker).
        transform: an optional (MONAI) dictionary transform applied to each sample.

    Example:
        >>> ds = StorePatchDataset("sweep/stores/r20", (64, 160, 160),
        ...                        labels="sweep/nnunet/Dataset812_AMOS_r20/labelsTr")
        >>> ds[0]["image"].shape
        torch.Size([1, 64, 160, 160])
    """

    def __init__(self, stores: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 patch_size: Sequence[int], labels: str | os.PathLike[str] | Mapping[str, Any]
                 | None = None, *, samples: int = 1000, foreground_fraction: float = 1 / 3,
                 seed: int = 0, level: int = 0, threads: int = 1,
                 transform: Callable[[dict], dict] | None = None) -> None:
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be three positive sizes, got {patch_size}")
        if not 0 <= foreground_fraction <= 1 or samples < 1 or level < 0 or threads < 1:
            raise ValueError("need 0 <= foreground_fraction <= 1, samples >= 1, level >= 0, "
                             "threads >= 1")
        self.patch_size = tuple(int(n) for n in patch_size)
        self.samples, self.seed, self.level = samples, seed, level
        self.foreground_fraction = foreground_fraction
        self.threads, self.transform = threads, transform
        self.cases = group_stores(stores)
        self.names = list(self.cases)
        self.volumes = {case: [StoreVolume(p, level=level) for p in paths]
                        for case, paths in self.cases.items()}
        self.labels = {case: self._read_labels(labels, case) for case in self.names} \
            if labels is not None else {}
        self.foreground = {case: self._foreground_sample(case, volume)
                           for case, volume in self.labels.items()}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = -1

    def _read_labels(self, labels: str | os.PathLike[str] | Mapping[str, Any], case: str,
                     ) -> np.ndarray:
        first = self.volumes[case][0]
        file = _label_file(labels, case)
        volume = read_volume(file)
        if tuple(volume.shape) != first.source_shape:
            raise MedlossyError(file, f"labels have shape {tuple(volume.shape)}, the store "
                                      f"{first.path.name} {first.source_shape}")
        array = np.moveaxis(np.asarray(volume.array), first.axial_axis, 0).astype(np.uint8)
        step = 2**self.level  # nearest neighbour: the reduced level's ceil(n / 2**L) grid
        return np.ascontiguousarray(array[:, ::step, ::step])

    def _foreground_sample(self, case: str, labels: np.ndarray) -> np.ndarray:
        found = np.argwhere(labels > 0)
        if len(found) > _FOREGROUND_SAMPLES:
            rng = np.random.default_rng([self.seed, self.names.index(case)])
            found = found[rng.choice(len(found), _FOREGROUND_SAMPLES, replace=False)]
        return found

    def __len__(self) -> int:
        return self.samples

    def box(self, index: int) -> tuple[str, tuple[int, int, int]]:
        """The case and start corner of patch ``index`` (pure function of seed and index)."""
        rng = np.random.default_rng([self.seed, index])
        case = self.names[int(rng.integers(len(self.names)))]
        shape = self.volumes[case][0].shape
        high = [max(n - p, 0) for n, p in zip(shape, self.patch_size, strict=True)]
        foreground = self.foreground.get(case)
        if foreground is not None and len(foreground) and rng.random() < \
                self.foreground_fraction:
            centre = foreground[int(rng.integers(len(foreground)))]
            start = [int(np.clip(c - p // 2, 0, h)) for c, p, h in
                     zip(centre, self.patch_size, high, strict=True)]
        else:
            start = [int(rng.integers(h + 1)) for h in high]
        return case, tuple(start)

    def _threads(self) -> ThreadPoolExecutor | None:
        if self.threads == 1:
            return None
        if self._pool is None or self._pool_pid != os.getpid():  # one pool per worker process
            self._pool = ThreadPoolExecutor(self.threads)
            self._pool_pid = os.getpid()
        return self._pool

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"], state["_pool_pid"] = None, -1  # threads do not cross processes
        return state

    def read_size(self, case: str) -> tuple[int, ...]:
        """The part of a patch that ``case`` fills (the rest, where the volume is smaller
        than the patch, is padding)."""
        return tuple(min(p, n) for p, n in zip(self.patch_size, self.volumes[case][0].shape,
                                               strict=True))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.samples:
            raise IndexError(index)
        case, start = self.box(index)
        volumes = self.volumes[case]
        size = self.read_size(case)
        image = np.stack([v.read(start, size, self._threads()) for v in volumes])
        sample: dict[str, Any] = {"image": image, "case": case, "start": start}
        if case in self.labels:
            box = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
            sample["label"] = self.labels[case][box][None]
        if size != self.patch_size:  # volume smaller than the patch: pad at the far end
            pad = [(0, 0)] + [(0, p - n) for p, n in zip(self.patch_size, size, strict=True)]
            sample["image"] = np.pad(sample["image"], pad, mode="edge")
            if "label" in sample:
                sample["label"] = np.pad(sample["label"], pad)
        sample["image"] = torch.from_numpy(sample["image"])
        if "label" in sample:
            sample["label"] = torch.from_numpy(np.ascontiguousarray(sample["label"]))
        return self.transform(sample) if self.transform is not None else sample
