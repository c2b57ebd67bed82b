"""The in-memory volume: voxels, where they are in space, and what modality they come from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

MODALITIES = ("CT", "MR", "OTHER")


@dataclass
class Volume:
    """A 3D image with its geometry.

    Attributes:
        array: voxels in the file's own index order (i, j, k): a numpy array, or an array proxy
            (nibabel's) that reads voxels only when sliced, so big files stream slab by slab.
        affine: 4x4 voxel-to-world (RAS+ mm) matrix.
        modality: "CT", "MR" or "OTHER"; decides the PSNR peak.
        header: format-specific fields needed to write the file back faithfully.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = "OTHER"
    header: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        """Axis codes such as "RAS" or "LPS" (nibabel's convention: direction each axis points)."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def axial_axis(self) -> int:
        """The array axis that runs most along the body's superior-inferior direction."""
        return int(np.argmax(np.abs(self.affine[2, :3]) / np.maximum(self.spacing, 1e-12)))

    def slabs(self, size: int = 16) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first slice index, slab) along the axial axis, slices first in each slab.

        Slabs are read one at a time from a lazy array, so a whole volume is never loaded.
        """
        axis, count = self.axial_axis, self.shape[self.axial_axis]
        for start in range(0, count, size):
            index: list[slice] = [slice(None)] * 3
            index[axis] = slice(start, min(start + size, count))
            yield start, np.moveaxis(np.asarray(self.array[tuple(index)]), axis, 0)

    def slice_shape(self) -> tuple[int, int]:
        """(rows, columns) of one axial slice: the other two axes, in array order."""
        rows, columns = (n for axis, n in enumerate(self.shape) if axis != self.axial_axis)
        return rows, columns
