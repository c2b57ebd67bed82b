"""Put a volume onto another's voxel grid before comparing them voxel by voxel.

Two files of one scan may store its voxels in different orders (a DICOM series written
along -z, a NIfTI in RAS, a transposed array): their affines say so. ``to_reference_frame``
reorients the test volume by whole-axis flips and transposes (nibabel.orientations) so that
each voxel index means the same point in space in both, then checks that the two affines
now agree; grids that differ otherwise (shape, spacing, origin, direction) are refused,
since no reordering of voxels compares them fairly.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from medlossy.volume import Volume

#: Largest distance (as a fraction of the smallest voxel side) between where the two affines
#: put the same voxel, anywhere in the grid: float32 NIfTI and DICOM decimal strings agree
#: far closer than this, a different grid differs by a good part of a voxel.
GRID_TOLERANCE = 0.01


@dataclass(frozen=True)
class Aligned:
    """The test volume's voxels in the reference's voxel order, and what was done."""

    array: np.ndarray
    #: None when the two already shared one voxel order; else e.g. "LPI -> LPS: axis 2
    #: flipped"
    reoriented: str | None


def _codes(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(affine))


def _what_was_done(transform: np.ndarray, before: str, after: str) -> str | None:
    flipped = [int(axis) for axis, (_, flip) in enumerate(transform) if flip < 0]
    order = [int(axis) for axis, _ in sorted(enumerate(transform[:, 0]), key=lambda a: a[1])]
    steps = []
    if flipped:  # nibabel flips the test's own axes first, then transposes
        steps.append(f"axis {', '.join(map(str, flipped))} flipped")
    if order != sorted(order):
        steps.append(f"axes transposed to ({', '.join(map(str, order))})")
    return f"{before} -> {after}: {', '.join(steps)}" if steps else None


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    """Homogeneous voxel coordinates of the grid's 8 corners, one per column."""
    points = np.array(list(product(*[(0, n - 1) for n in shape[:3]])), dtype=float).T
    return np.vstack([points, np.ones(points.shape[1])])


def _mm(values) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def grid_difference(reference: Volume, shape: tuple[int, ...],
                    affine: np.ndarray) -> str | None:
    """How the grid (``shape``, ``affine``) differs from ``reference``'s, or None when every
    voxel lies within ``GRID_TOLERANCE`` of a voxel side of the reference's."""
    if tuple(shape) != reference.shape:
        return f"shape {_mm(shape)} vs {_mm(reference.shape)}"
    tolerance = GRID_TOLERANCE * min(reference.spacing)
    moved = np.abs(affine @ _corners(shape) - reference.affine @ _corners(shape))[:3]
    if moved.max() <= tolerance:
        return None
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(spacing, reference.spacing, rtol=0, atol=tolerance):
        return f"spacing {_mm(spacing)} mm vs {_mm(reference.spacing)} mm"
    origin, reference_origin = affine[:3, 3], reference.affine[:3, 3]
    if not np.allclose(origin, reference_origin, rtol=0, atol=tolerance):
        return f"origin {_mm(origin)} mm vs {_mm(reference_origin)} mm"
    return (f"axis directions differ (voxels up to {moved.max():.3g} mm apart; orientation "
            f"{_codes(affine)} vs {_codes(reference.affine)})")


def to_reference_frame(reference: Volume, test: Volume) -> Aligned:
    """``test``'s voxels reordered onto ``reference``'s grid (flips and transposes only).

    Raises ValueError saying what differs (shape, spacing, origin, direction) when the grids
    are not the same up to such a reordering.
    """
    transform = ornt_transform(io_orientation(test.affine), io_orientation(reference.affine))
    array = apply_orientation(np.asarray(test.array), transform)
    affine = test.affine @ inv_ornt_aff(transform, test.shape)
    difference = grid_difference(reference, array.shape, affine)
    if difference is not None:
        raise ValueError(difference)
    return Aligned(array, _what_was_done(transform, _codes(test.affine),
                                         _codes(reference.affine)))
