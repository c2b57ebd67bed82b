"""Pick the reader or writer for a path from its name, so callers never branch on formats."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from medlossy.errors import MedlossyError
from medlossy.io import dicom_series, nifti, nrrd_format
from medlossy.volume import Volume

Reader = Callable[[Path, str], Volume]
Writer = Callable[..., None]  # (volume, path, *, note=None)

_READERS: dict[str, Reader] = {
    **dict.fromkeys(nifti.SUFFIXES, nifti.read_nifti),
    **dict.fromkeys(nrrd_format.SUFFIXES, nrrd_format.read_nrrd),
    **dict.fromkeys(dicom_series.SUFFIXES, dicom_series.read_dicom_series),
}
_WRITERS: dict[str, Writer] = {
    **dict.fromkeys(nifti.SUFFIXES, nifti.write_nifti),
    **dict.fromkeys(nrrd_format.SUFFIXES[:1], nrrd_format.write_nrrd),
}


def _format_key(path: Path, table: dict) -> str | None:
    name = path.name.lower()
    for suffix in sorted(table, key=len, reverse=True):
        if suffix and name.endswith(suffix):
            return suffix
    return None


def read_volume(path: str | os.PathLike[str], modality: str = "OTHER", *,
                lazy: bool = False, allow_gaps: bool = False) -> Volume:
    """Read a NIfTI/NRRD file or a folder of DICOM slices; errors name the file.

    ``lazy`` keeps NIfTI voxels on disk until sliced (other formats are read whole).
    ``allow_gaps`` accepts a DICOM series with missing slices or uneven spacing.
    """
    path = Path(path)
    if path.is_dir():
        return dicom_series.read_dicom_series(path, modality, allow_gaps=allow_gaps)
    key = _format_key(path, _READERS)
    if key is None:
        raise MedlossyError(path, "unknown image format (expected .nii, .nii.gz, .nrrd, .dcm "
                                  "or a folder of DICOM files)")
    if key in nifti.SUFFIXES:
        return nifti.read_nifti(path, modality, lazy=lazy)
    if key in dicom_series.SUFFIXES:
        return dicom_series.read_dicom_series(path, modality, allow_gaps=allow_gaps)
    return _READERS[key](path, modality)


def write_volume(volume: Volume, path: str | os.PathLike[str], *,
                 note: str | None = None) -> None:
    """Write ``volume`` in the format its name says (.nii, .nii.gz, .nrrd); ``note`` (what
    wrote it) is kept in the file's header."""
    path = Path(path)
    key = _format_key(path, _WRITERS)
    if key is None:
        raise MedlossyError(path, "cannot write this format (use .nii, .nii.gz or .nrrd)")
    _WRITERS[key](volume, path, note=note)
