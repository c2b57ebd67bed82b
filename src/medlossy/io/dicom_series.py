"""A DICOM series (a folder of single-frame slices, or one multi-frame file) through pydicom.

pydicom decodes every transfer syntax it has a plugin for (JPEG 2000 via pylibjpeg-openjpeg);
it has no notion of a volume, so stacking slices and building the affine is done here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medlossy.errors import MedlossyError
from medlossy.volume import Volume

SUFFIXES = (".dcm",)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _read_headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers = []
    for file in files:
        try:
            headers.append((file, pydicom.dcmread(file, stop_before_pixels=True)))
        except InvalidDicomError:
            continue  # folders often hold DICOMDIR-less extras (notes, thumbnails)
    if not headers:
        raise MedlossyError(folder, "no DICOM files in this folder")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise MedlossyError(folder, f"holds {len(series)} DICOM series; point to one series")
    return headers


def _slice_normal(ds: pydicom.Dataset) -> np.ndarray:
    row, column = np.asarray(ds.ImageOrientationPatient, dtype=float).reshape(2, 3)
    return np.cross(row, column)


def _pixels(path: Path) -> np.ndarray:
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as error:  # decoder plugins raise their own types
        raise MedlossyError(path, f"cannot decode DICOM pixel data ({error})") from None
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope == int(slope) and intercept == int(intercept):
        return pixels.astype(np.int32) * int(slope) + int(intercept)
    return pixels.astype(np.float32) * slope + intercept


def read_dicom_series(path: Path, modality: str = "OTHER") -> Volume:
    """Read one series; slices sorted along their normal, values in real units (HU for CT)."""
    if not path.exists():
        raise MedlossyError(path, "no such file or folder")
    if path.is_file():
        return _from_slices(path, [(path, pydicom.dcmread(path, stop_before_pixels=True))],
                            modality)
    return _from_slices(path, _read_headers(path), modality)


def _from_slices(path: Path, headers: list[tuple[Path, pydicom.Dataset]],
                 modality: str) -> Volume:
    if int(getattr(headers[0][1], "NumberOfFrames", 1) or 1) > 1:
        raise MedlossyError(path, "multi-frame DICOM is not supported yet; use a slice series")
    normal = _slice_normal(headers[0][1])
    headers.sort(key=lambda item: float(np.dot(normal, np.asarray(item[1].ImagePositionPatient,
                                                                   dtype=float))))
    first = headers[0][1]
    planes = [_pixels(file) for file, _ in headers]
    if len({p.shape for p in planes}) != 1:
        raise MedlossyError(path, "slices of different sizes in one series")
    # DICOM rows run along the column direction: array axes (column, row, slice) give i, j, k.
    array = np.stack([p.T for p in planes], axis=-1)
    row_step, column_step = (float(v) for v in first.PixelSpacing)
    row_dir, column_dir = np.asarray(first.ImageOrientationPatient, dtype=float).reshape(2, 3)
    origin = np.asarray(first.ImagePositionPatient, dtype=float)
    if len(headers) > 1:
        last = np.asarray(headers[-1][1].ImagePositionPatient, dtype=float)
        slice_step = (last - origin) / (len(headers) - 1)
    else:
        slice_step = normal * float(getattr(first, "SliceThickness", 1) or 1)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * column_step
    affine_lps[:3, 1] = column_dir * row_step
    affine_lps[:3, 2] = slice_step
    affine_lps[:3, 3] = origin
    if modality == "OTHER" and str(getattr(first, "Modality", "")) in ("CT", "MR"):
        modality = str(first.Modality)
    return Volume(array, _LPS_TO_RAS @ affine_lps, modality=modality, header={"format": "dicom"})
