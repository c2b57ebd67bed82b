"""OME-Zarr (NGFF 0.4 and 0.5) ``multiscales`` metadata from a store's medlossy geometry.

Data flow: medlossy geometry (source affine, axial axis) -> the store's axis order (axial axis
first, then the other two source axes) -> per store axis a spacing (length of the affine's
column) and a translation (the origin projected on that column's direction) -> the NGFF
``multiscales`` entry that imaging tools (ome-zarr-py, napari, neuroglancer) read.

NGFF 0.4 is the version that lives in Zarr format 2; 0.5 lives in Zarr format 3, under the
group attribute ``ome`` with the version there instead of inside each ``multiscales`` entry
(see store-format.md). Both have scale and translation per axis but no rotation, so an
oblique affine is expressed in the frame of the voxel axes: coordinate ``k`` of voxel ``i``
is ``translation[k] + scale[k] * i`` millimetres along the direction of store axis ``k``,
exact for any orthogonal affine. The full affine (and with it the rotation to RAS+ world)
stays in the medlossy attributes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NGFF_VERSION = "0.4"
#: The OME-Zarr version of Zarr format 3 stores.
NGFF_V3_VERSION = "0.5"
#: The path of the full-resolution array inside the store's root group.
LEVEL0 = "0"
AXIS_NAMES = ("z", "y", "x")


def store_axes(axial_axis: int) -> list[int]:
    """Source array axes in the store's order: the axial axis first."""
    return [axial_axis] + [axis for axis in range(3) if axis != axial_axis]


def scale_and_translation(affine: np.ndarray, axial_axis: int,
                          ) -> tuple[list[float], list[float]]:
    """Voxel spacing and origin (mm) along each store axis."""
    affine = np.asarray(affine, dtype=float)
    origin = affine[:3, 3]
    scale, translation = [], []
    for axis in store_axes(axial_axis):
        column = affine[:3, axis]
        length = float(np.linalg.norm(column))
        direction = column / length if length > 0 else column
        scale.append(length if length > 0 else 1.0)
        translation.append(float(origin @ direction))
    return scale, translation


def multiscales(geometry: dict[str, Any], name: str, zarr_format: int = 2,
                ) -> list[dict[str, Any]]:
    """The ``multiscales`` attribute of a store with one resolution level (NGFF 0.4 for
    Zarr format 2, 0.5 for format 3: no per-entry version)."""
    scale, translation = scale_and_translation(np.asarray(geometry["affine"], dtype=float),
                                               int(geometry["axial_axis"]))
    version = {"version": NGFF_VERSION} if zarr_format == 2 else {}
    return [{
        **version,
        "name": name,
        "axes": [{"name": axis, "type": "space", "unit": "millimeter"} for axis in AXIS_NAMES],
        "datasets": [{"path": LEVEL0, "coordinateTransformations": [
            {"type": "scale", "scale": [round(v, 9) for v in scale]},
            {"type": "translation", "translation": [round(v, 6) for v in translation]},
        ]}],
    }]


def ome_attributes(geometry: dict[str, Any], name: str) -> dict[str, Any]:
    """The NGFF 0.5 ``ome`` group attribute of a Zarr format 3 store."""
    return {"version": NGFF_V3_VERSION, "multiscales": multiscales(geometry, name, 3)}
