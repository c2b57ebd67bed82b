"""What was lost and what was saved: PSNR as the study defines it, errors, ratio, bits/voxel.

PSNR = 10 log10(r^2 / MSE), MSE over all voxels; r = 4096 for CT, and for MR r = max - min
measured over the whole dataset (the caller passes it, since one volume cannot know it).
Whether a volume is CT is decided by one rule, ``detect_modality``, everywhere: as given,
else as the input records it, else CT when its values are Hounsfield units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CT_DATA_RANGE = 4096.0
RAW_BYTES_PER_VOXEL = 2  # the study's ratios count against 16-bit raw storage
#: Why ``detect_modality`` chose what it chose, in the words the commands print.
AUTO_CT = "auto: values in HU range"
AUTO_NOT_CT = "auto: values not in HU range"


def looks_like_ct(low: float, high: float) -> bool:
    """Air near -1000 HU and nothing far beyond the 12-bit HU range: Hounsfield units."""
    return -3100 <= low <= -600 and high <= 4096 * 4


def detect_modality(requested: str, low: float, high: float, *, known: str = "OTHER",
                    not_ct: str = "OTHER") -> tuple[str, str]:
    """The modality of values in [low, high], and why: ``requested`` ("CT", "MR", "OTHER")
    wins; "auto" takes what the input records (``known``: a DICOM header's CT or MR), else
    CT when the values are Hounsfield units, else ``not_ct`` (nnU-Net datasets say "MR":
    any name but CT gets nnU-Net's z-score normalisation)."""
    if requested != "auto":
        return requested, "given"
    if known in ("CT", "MR"):
        return known, "recorded in the input"
    if looks_like_ct(low, high):
        return "CT", AUTO_CT
    return not_ct, AUTO_NOT_CT


def describe_peak(modality: str, how: str, data_range: float, rule: str) -> str:
    """One line for the user: 'modality MR (auto: values not in HU range), r = max - min =
    812'; ``rule`` says where r came from: "given", "CT", "recorded" (in a store), or the
    span it measures, such as "max - min"."""
    if rule in ("given", "CT", "recorded"):
        return f"modality {modality} ({how}), r = {data_range:g} ({rule})"
    return f"modality {modality} ({how}), r = {rule} = {data_range:g}"


def peak_rule(modality: str, data_range: float | None, span: str = "max - min") -> str:
    """Where ``data_range_for`` takes r from, for ``describe_peak``."""
    return "given" if data_range is not None else "CT" if modality == "CT" else span


def data_range_for(modality: str, low: float | None = None, high: float | None = None,
                   data_range: float | None = None) -> float:
    """The PSNR peak r: explicit ``data_range`` wins, then 4096 for CT, else ``high - low``."""
    if data_range is not None:
        if data_range <= 0:
            raise ValueError(f"data range must be positive, got {data_range}")
        return float(data_range)
    if modality == "CT":
        return CT_DATA_RANGE
    if low is None or high is None:
        raise ValueError(f"{modality} needs a data range (max - min over the dataset)")
    return float(high - low) or 1.0


def psnr_from_mse(mse: float, data_range: float) -> float:
    """PSNR in dB; infinite when nothing was lost."""
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _int64_safe(array: np.ndarray) -> bool:
    """Integers whose differences int64 holds exactly (at most 32 bits, or bool)."""
    return array.dtype.kind in "iub" and array.dtype.itemsize <= 4


@dataclass
class ErrorTally:
    """Squared and absolute errors summed slice by slice, so no volume-sized temporary exists."""

    squared_error: float = 0.0
    voxels: int = 0
    max_abs_error: float = 0.0

    def add(self, reference: np.ndarray, test: np.ndarray) -> None:
        if reference.shape != test.shape:
            raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
        if reference.ndim == 3:
            # One slice at a time: float64 copies of a whole slab were the compressor's peak.
            for reference_slice, test_slice in zip(reference, test, strict=True):
                self.add(reference_slice, test_slice)
            return
        if _int64_safe(reference) and _int64_safe(test):
            # Integers (most CT): exact int64 differences and sum, about 3x faster, while the
            # sum of squares cannot overflow int64 (it wraps silently); else in float64.
            difference = np.subtract(reference, test, dtype=np.int64)
            flat = difference.ravel()
            if flat.size and int(np.abs(flat).max()) ** 2 * flat.size >= 2**63:
                flat = flat.astype(np.float64)
            self.squared_error += float(np.dot(flat, flat))
        else:
            difference = reference.astype(np.float64) - test.astype(np.float64)
            self.squared_error += float(np.dot(difference.ravel(), difference.ravel()))
        self.voxels += difference.size
        if difference.size:
            self.max_abs_error = max(self.max_abs_error, float(np.abs(difference).max()))

    @property
    def mse(self) -> float:
        return self.squared_error / self.voxels if self.voxels else 0.0

    def psnr(self, data_range: float) -> float:
        return psnr_from_mse(self.mse, data_range)


def mse(reference: np.ndarray, test: np.ndarray) -> float:
    tally = ErrorTally()
    tally.add(reference, test)
    return tally.mse


def max_abs_error(reference: np.ndarray, test: np.ndarray) -> float:
    tally = ErrorTally()
    tally.add(reference, test)
    return tally.max_abs_error


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    """PSNR of ``test`` against ``reference`` with peak ``data_range`` (4096 for CT)."""
    return psnr_from_mse(mse(reference, test), data_range)


def raw_bytes(shape: tuple[int, ...]) -> int:
    """Bytes of a volume stored raw at 16 bits per voxel, the study's reference size."""
    return RAW_BYTES_PER_VOXEL * math.prod(shape)


def compression_ratio(shape: tuple[int, ...], stored_bytes: int) -> float:
    """Raw 16-bit bytes / every byte stored for the volume."""
    return raw_bytes(shape) / stored_bytes


def bits_per_voxel(shape: tuple[int, ...], stored_bytes: int) -> float:
    return 8.0 * stored_bytes / math.prod(shape)
