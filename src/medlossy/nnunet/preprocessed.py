"""nnU-Net's preprocessed training cases as 16-bit medlossy stores, read by nnU-Net's loader.

Data flow: nnU-Net preprocesses as usual (transpose -> crop -> normalise -> resample, float32
in blosc2) -> :func:`convert_folder` turns each case's image channels back into 16-bit
integers on the scale of the normalisation's input (CT: clipped Hounsfield units, q =
round(x * std + mean); other schemes: fixed point, q = round(x * K)) and compresses them
into one store each (lossless, or at the ratio asked: lossless where that is smaller, the
closest ratio where the codec cannot reach it; the folder's record says which case got
what); the segmentation stays nnU-Net's lossless blosc2 file, the properties its pickle ->
:class:`MedlossyStoreDataset`, a dataset class with nnU-Net's ``nnUNetBaseDataset``
contract, hands nnU-Net's data loader a lazy image whose crops decode only the slices
(tiled stores: the tiles) they touch and apply the normalisation on the fly, x = (q -
offset) / scale, in float32 as nnU-Net computes it.

What is exact: with a lossless store, a voxel differs from nnU-Net's float32 value only by
rounding to the integer grid, at most half a step (0.5 / std for CT: 0.5 HU), and not at
all (float32 equality) where nnU-Net neither resampled nor clipped an integer image.
Lossy stores add the codec's error on top; the segmentation and the properties (class
locations for foreground oversampling) are nnU-Net's, unchanged.

Imports nnU-Net: only the worker process (``medlossy.nnunet.worker``) imports this module.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import blosc2
import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset

from medlossy.atomic import atomic_output
from medlossy.codecs.jpeg2k import MIN_SIDE
from medlossy.compression import compress_volume, ratio_reach
from medlossy.errors import MedlossyError
from medlossy.jsonfile import write_json
from medlossy.loading.volume import StoreVolume
from medlossy.nnunet.storage import LOSSLESS, PreprocessedStorage
from medlossy.ratecontrol import Target, lossless_fits
from medlossy.volume import Volume

PROPERTIES_KEY = "medlossy_stores"
#: Fixed point of schemes without a stored scale: 1/1024 of a standard deviation per step.
FIXED_POINT = 1024.0
_INT16 = np.iinfo(np.int16)


def channel_scales(data: np.ndarray, schemes: Sequence[str],
                   intensity_properties: dict[str, dict]) -> list[tuple[float, float]]:
    """(offset, scale) per channel: q = round(x * scale + offset), x = (q - offset) / scale.

    CTNormalization: offset = the dataset's foreground mean, scale = its std, so that q is
    in the clipped source units (Hounsfield units); the other schemes keep no such scale in
    the plans: a fixed point of 1/1024, made coarser only where the case would overflow
    16 bits.
    """
    scales = []
    for channel, scheme in enumerate(schemes):
        if scheme == "CTNormalization":
            properties = intensity_properties[str(channel)]
            scales.append((float(properties["mean"]), max(float(properties["std"]), 1e-8)))
        else:
            peak = float(np.abs(data[channel]).max(initial=0.0))
            scales.append((0.0, min(FIXED_POINT, _INT16.max / peak) if peak else FIXED_POINT))
    return scales


def quantise(channel: np.ndarray, offset: float, scale: float) -> np.ndarray:
    """nnU-Net's normalised float32 values -> int16 codes on the source's scale."""
    codes = np.rint(channel.astype(np.float64) * scale + offset)
    return np.clip(codes, _INT16.min, _INT16.max).astype(np.int16)


def dequantise(codes: np.ndarray, offset: float, scale: float) -> np.ndarray:
    """int16 codes (or their decoded values) -> normalised float32, with nnU-Net's float32
    operations (CTNormalization: subtract the mean, divide by the std)."""
    values = np.asarray(codes, dtype=np.float32)
    values -= np.float32(offset)
    values /= np.float32(scale)
    return values


def _volume(codes: np.ndarray, spacing: Sequence[float], modality: str) -> Volume:
    """A Volume whose axis 0 is the axial axis, so that store slices are nnU-Net's axis 0."""
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = spacing[2], spacing[1], \
        spacing[0], 1.0
    return Volume(codes, affine, modality=modality)


def _pad_slices(codes: np.ndarray) -> np.ndarray:
    """Slices widened to the codecs' smallest side by repeating their edge: a case cropped
    to a small foreground (a 20 x 40 slice) is refused by the codecs as it is. The loader
    never reads the padding: it keeps the case's own shape (the stores' ``shape``)."""
    short = [(0, 0)] + [(0, max(0, MIN_SIDE - side)) for side in codes.shape[1:]]
    return np.pad(codes, short, mode="edge") if any(after for _, after in short) else codes


def _tile(storage: PreprocessedStorage, shape: Sequence[int]) -> int | None:
    """The store's tile side: none where a slice fits in one tile."""
    return storage.tile if storage.tile and max(shape[1:]) > storage.tile else None


def _store_channel(codes: np.ndarray, spacing: Sequence[float], modality: str, path: Path,
                   storage: PreprocessedStorage, workers: int) -> dict[str, Any]:
    """One channel's store: lossless where asked, or where lossless fits the ratio's budget
    (``ratecontrol.lossless_fits``, the rule of a compress at a ratio; the lossless store
    is written first here, so that a case it fits needs no search at the ratio); else at
    the ratio, or, where the codec cannot reach it (a small noisy crop), at the closest
    ratio it reaches, said on stderr: training data keeps every case rather than losing
    the conversion. Returns how it was stored: ``stored_as`` (lossless, the storage's xR,
    or the closest xR), the ``ratio`` achieved and the ``bytes``, every stored byte
    counted."""
    volume = _volume(codes, spacing, modality)
    # Zarr 3, one shard: a tiled store is then one file, not one per tile (a 128 x 128
    # tile at x20 holds about 1.6 KB, less than a file system block)
    options = {"codec_name": storage.codec, "workers": workers, "source": str(path),
               "tile": _tile(storage, codes.shape), "zarr_format": 3}
    achieved = compress_volume(volume, path, Target("lossless"), **options)["achieved"]
    stored_as = LOSSLESS
    if storage.ratio is not None and not lossless_fits(
            achieved["stored_bytes"], int(achieved["raw_bytes"] / storage.ratio)):
        try:
            achieved = compress_volume(volume, path, Target("ratio", storage.ratio),
                                       **options)["achieved"]
            stored_as = storage.name
        except MedlossyError:
            reach, _ = ratio_reach(volume, storage.codec, workers=workers, source=str(path),
                                   tile=options["tile"], zarr_format=3)
            if reach >= storage.ratio:
                raise
            achieved = compress_volume(volume, path, Target("ratio", reach),
                                       **options)["achieved"]
            stored_as = f"x{achieved['ratio']:.2f}"
            print(f"medlossy: note: {path.name}: {storage.codec} cannot reach "
                  f"{storage.name} here (its coarsest setting gives x{reach:.2f}); stored at "
                  f"{stored_as}, the closest", file=sys.stderr)
    return {"stored_as": stored_as, "ratio": achieved["ratio"],
            "bytes": achieved["stored_bytes"]}


def save_case(data: np.ndarray, seg_file: str | os.PathLike[str], properties: dict,
              output_filename_truncated: str, *, storage: PreprocessedStorage,
              scales: Sequence[tuple[float, float]], modality: str = "OTHER",
              workers: int = 1) -> list[dict[str, Any]]:
    """Write one case: a store per image channel, nnU-Net's segmentation file copied, the
    properties with the stores' (offset, scale); returns how each channel was stored
    (:func:`_store_channel`)."""
    spacing = [float(s) for s in properties["spacing"]]
    stores, stored = [], []
    for channel, (offset, scale) in enumerate(scales):
        name = f"{Path(output_filename_truncated).name}_{channel:04d}.zarr"
        path = Path(output_filename_truncated).parent / name
        codes = _pad_slices(quantise(data[channel], offset, scale))
        stored.append(_store_channel(codes, spacing, modality, path, storage, workers))
        stores.append({"store": name, "offset": offset, "scale": scale,
                       "shape": list(data.shape[1:])})
    shutil.copyfile(seg_file, f"{output_filename_truncated}_seg.b2nd")
    with open(f"{output_filename_truncated}.pkl", "wb") as handle:
        pickle.dump({**properties, PROPERTIES_KEY: stores}, handle)
    return stored


class NormalisedStores:
    """A case's image (channels, z, y, x) as nnU-Net's loader slices it: each crop decodes
    only what it covers and comes back normalised, float32."""

    dtype = np.dtype(np.float32)

    def __init__(self, folder: str, stores: list[dict[str, Any]]) -> None:
        self.channels = [(StoreVolume(os.path.join(folder, entry["store"])),
                          float(entry["offset"]), float(entry["scale"])) for entry in stores]
        # the case's shape: its stores' slices may be padded (folders written before
        # "shape" was recorded hold unpadded stores)
        self.shape = (len(stores), *stores[0].get("shape", self.channels[0][0].shape))
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self[:]
        return values if dtype is None else values.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            raise TypeError("NormalisedStores takes slices, not Ellipsis")
        key = key + (slice(None),) * (self.ndim - len(key))
        bounds = []
        for axis, part in enumerate(key):
            if not isinstance(part, slice) or part.step not in (None, 1):
                raise TypeError(f"NormalisedStores takes contiguous slices, got {part!r}")
            bounds.append(range(*part.indices(self.shape[axis])))
        channels, box = bounds[0], bounds[1:]
        out = np.empty([len(b) for b in bounds], dtype=np.float32)
        if out.size == 0:
            return out
        start = tuple(b.start for b in box)
        size = tuple(len(b) for b in box)
        for index, channel in enumerate(channels):
            volume, offset, scale = self.channels[channel]
            out[index] = dequantise(volume.read(start, size), offset, scale)
        return out


class MedlossyStoreDataset(nnUNetBaseDataset):
    """nnU-Net's dataset contract over a folder :func:`convert_folder` wrote."""

    def __init__(self, folder: str, identifiers: list[str] | None = None,
                 folder_with_segs_from_previous_stage: str | None = None) -> None:
        super().__init__(folder, identifiers, folder_with_segs_from_previous_stage)
        # opened stores by case: opening one reads and checks its metadata (several ms),
        # which nnU-Net's loader would otherwise pay for every patch
        self._images: dict[str, NormalisedStores] = {}

    def load_case(self, identifier: str):
        with open(os.path.join(self.source_folder, f"{identifier}.pkl"), "rb") as handle:
            properties = pickle.load(handle)
        stores = properties.pop(PROPERTIES_KEY)
        data = self._images.get(identifier)
        if data is None:
            data = self._images[identifier] = NormalisedStores(self.source_folder, stores)
        options = {} if os.name == "nt" else {"mmap_mode": "r"}
        seg = blosc2.open(urlpath=os.path.join(self.source_folder, f"{identifier}_seg.b2nd"),
                          mode="r", dparams={"nthreads": 1}, **options)
        seg_prev = None
        if self.folder_with_segs_from_previous_stage is not None:
            seg_prev = blosc2.open(urlpath=os.path.join(
                self.folder_with_segs_from_previous_stage, f"{identifier}.b2nd"), mode="r",
                dparams={"nthreads": 1}, **options)
        return data, seg, seg_prev, properties

    @staticmethod
    def save_case(data, seg, properties, output_filename_truncated, **options) -> None:
        """Stores are written from nnU-Net's preprocessed files (:func:`convert_folder`),
        which hold the segmentation this would need to write first."""
        raise NotImplementedError("medlossy stores are written by "
                                  "medlossy.nnunet.preprocessed.convert_folder")

    @staticmethod
    def get_identifiers(folder: str) -> list[str]:
        return sorted(name[:-4] for name in os.listdir(folder) if name.endswith(".pkl"))


def convert_folder(source: str | os.PathLike[str], target: str | os.PathLike[str],
                   plans: dict, configuration: str, storage: PreprocessedStorage, *,
                   workers: int = 1) -> dict[str, Any]:
    """nnU-Net's blosc2 preprocessed folder ``source`` -> ``target`` of stores (atomically);
    returns (and writes as the folder's :func:`marker_file`) what was written, its bytes."""
    if storage.is_blosc2:
        raise ValueError("blosc2 is nnU-Net's own folder: nothing to convert")
    source = Path(source)
    settings = plans["configurations"][configuration]
    schemes = list(settings["normalization_schemes"])
    intensities = plans.get("foreground_intensity_properties_per_channel", {})
    modality = "CT" if schemes == ["CTNormalization"] * len(schemes) else "OTHER"
    cases = sorted(p.name[: -len(".b2nd")] for p in source.glob("*.b2nd")
                   if not p.name.endswith("_seg.b2nd"))
    if not cases:
        raise MedlossyError(source, "holds no nnU-Net preprocessed cases (*.b2nd)")
    source_bytes = seg_bytes = 0
    stored: dict[str, list[dict[str, Any]]] = {}
    with atomic_output(target) as temporary:
        temporary.mkdir(parents=True)
        for case in cases:
            data = blosc2.open(urlpath=str(source / f"{case}.b2nd"), mode="r")[:]
            with open(source / f"{case}.pkl", "rb") as handle:
                properties = pickle.load(handle)
            stored[case] = save_case(data, source / f"{case}_seg.b2nd", properties,
                                     str(temporary / case), storage=storage,
                                     scales=channel_scales(data, schemes, intensities),
                                     modality=modality, workers=workers)
            source_bytes += (source / f"{case}.b2nd").stat().st_size
            seg_bytes += (source / f"{case}_seg.b2nd").stat().st_size
    image_bytes = sum(channel["bytes"] for channels in stored.values() for channel in channels)
    marker = {**storage.to_dict(), "configuration": configuration, "cases": len(cases),
              "normalization_schemes": schemes, "image_bytes": image_bytes,
              "blosc2_image_bytes": source_bytes, "segmentation_bytes": seg_bytes,
              "stored": stored}
    write_json(marker_file(target), marker)
    return marker


def marker_file(folder: str | os.PathLike[str]) -> Path:
    """The JSON beside a folder of stores, written once it is complete (beside it, not in
    it: nnU-Net tells dataset classes apart by the file endings a folder holds)."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".json")
