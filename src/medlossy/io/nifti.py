"""NIfTI-1/2 through nibabel, keeping the whole header so a round trip changes only voxels."""

from __future__ import annotations

import base64
import logging
import math
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from medlossy.checksums import with_voxel_digest
from medlossy.errors import MedlossyError
from medlossy.volume import Volume

SUFFIXES = (".nii", ".nii.gz")
#: The header fields that place the voxels in the world (NIfTI-1 and -2 name them alike):
#: qform and sform with their codes, voxel sizes and qfac (pixdim), units.
_GEOMETRY_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                    "qoffset_x", "qoffset_y", "qoffset_z", "pixdim", "srow_x", "srow_y",
                    "srow_z", "xyzt_units")
_READ_ERRORS = (OSError, EOFError, ValueError, OverflowError, zlib.error)
_FLOAT32 = np.finfo(np.float32)
_DEFLATE_MAX_RATIO = 1032  # deflate (gzip) never inflates more than this


def _squeezed(image: nib.Nifti1Image, path: Path, lazy: bool):
    """The voxels as 3D: trailing singleton axes ((x, y, z, 1) is common) dropped."""
    shape = tuple(image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise MedlossyError(path, f"expected a 3D volume, got shape {tuple(image.shape)}")
    proxy = image.dataobj
    _check_size(path, shape, proxy.dtype, int(proxy.offset))
    if lazy:
        if shape == tuple(image.shape):
            return proxy
        # Same bytes, three axes; a fresh proxy that keeps the file open like nib.load's.
        return type(proxy)(proxy.file_like, (shape, proxy.dtype, proxy.offset, proxy.slope,
                                             proxy.inter), keep_file_open=True)
    try:
        return np.asarray(proxy).reshape(shape)
    except _READ_ERRORS as error:
        raise MedlossyError(path, f"truncated or corrupt voxel data ({error})") from None


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """nibabel logs the header fields it repairs straight to stderr ("pixdim[1,2,3] should
    be non-zero"): lines before ours that break the one-line errors. Its logger's level
    alone is raised (with no handler, Python's last-resort handler would print them);
    what nibabel refuses still raises."""
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _in_units(count: float) -> str:
    """A byte count for people: 70.4 TB, 25.6 kB."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB"


def _check_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
    """Refuse a header that claims more voxels than its file can hold or this machine can
    read, in one line, before any allocation (a damaged dim field otherwise ends in a
    MemoryError)."""
    need = math.prod(shape) * np.dtype(dtype).itemsize
    claim = f"header claims {'x'.join(map(str, shape))} {np.dtype(dtype)} voxels " \
            f"({_in_units(need)})"
    size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        if need > size * _DEFLATE_MAX_RATIO:
            raise MedlossyError(path, f"{claim}, more than a {size}-byte gzip file can hold "
                                      "(corrupt header?)")
    elif offset + need > size:
        raise MedlossyError(path, f"{claim} from byte {offset}, but the file has {size} bytes "
                                  "(truncated, or a corrupt header)")
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to compare
        return
    if need > memory:
        raise MedlossyError(path, f"{claim}, more than this machine's memory "
                                  f"({_in_units(memory)})")


def read_nifti(path: Path, modality: str = "OTHER", *, lazy: bool = False) -> Volume:
    """Read a NIfTI file; scaling (scl_slope/inter) is applied as nibabel does.

    With ``lazy`` the volume keeps nibabel's array proxy: voxels are read when sliced. A
    file holding integers with a scaling records it (``scl_slope``, ``scl_inter`` in the
    header dict), so those integers can be stored and written back exactly.
    """
    with _quiet_nibabel():
        try:
            # keep_file_open: a lazy read goes slab by slab; reopening a .nii.gz for each
            # slab re-inflates it from the start (72 s instead of 2 s for a 512x512x1000 CT).
            image = nib.load(path, keep_file_open=lazy)
        except FileNotFoundError:
            raise MedlossyError(path, "no such file") from None
        except Exception as error:  # nibabel raises many types for corrupt headers
            raise MedlossyError(path, f"not a readable NIfTI file ({error})") from None
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise MedlossyError(path, f"not a NIfTI image ({type(image).__name__})")
        array = _squeezed(image, path, lazy)
    saved = image.header.copy()
    header = {"format": "nifti2" if isinstance(image, nib.Nifti2Image) else "nifti1"}
    slope = float(getattr(image.dataobj, "slope", 1.0))
    inter = float(getattr(image.dataobj, "inter", 0.0))
    if (slope, inter) != (1.0, 0.0) and image.get_data_dtype().kind in "iuf":
        # nibabel moves the scaling from the header into the proxy: put it back, so the
        # header written on decompression has the source's scl_slope / scl_inter (for
        # float files too: their stored floats times the slope are what nibabel reads).
        saved.set_slope_inter(slope, inter)
        header.update(scl_slope=slope, scl_inter=inter)
    header["header_b64"] = base64.b64encode(saved.binaryblock).decode("ascii")
    try:
        return Volume(array, image.affine, modality=modality, header=header)
    except ValueError as error:
        raise MedlossyError(path, f"unusable NIfTI geometry ({error})") from None


def _stored_values(volume: Volume, dtype: np.dtype) -> np.ndarray | None:
    """Values back to what a scaled file holds: (value - inter) / slope, rounded to its
    integers; for a float file None when its floats under the scaling do not give the
    values back exactly."""
    slope, inter = volume.header["scl_slope"], volume.header["scl_inter"]
    values = np.asarray(volume.array, dtype=np.float64)
    stored = (values - inter) / slope
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        return np.clip(np.rint(stored), limits.min, limits.max).astype(dtype)
    stored = stored.astype(dtype)
    # nibabel reads stored * slope + inter in float64, as here
    return stored if np.array_equal(stored.astype(np.float64) * slope + inter, values) \
        else None


def _rescaled_integers(volume: Volume) -> np.ndarray | None:
    """The stored integers of a source read with a rescale (a DICOM series: ``scl_dtype``),
    when NIfTI's float32 scl_slope / scl_inter hold that rescale exactly; None otherwise
    (the values are then written as they are)."""
    saved = volume.header
    try:
        dtype = np.dtype(saved["scl_dtype"])
        exact = all(float(np.float32(saved[key])) == float(saved[key])
                    for key in ("scl_slope", "scl_inter"))
    except (KeyError, TypeError, ValueError):  # absent, or damaged store metadata
        return None
    return _stored_values(volume, dtype) if exact and dtype.kind in "iu" else None


def saved_header(saved: dict) -> nib.Nifti1Header | None:
    """The NIfTI header kept from a source (None if the source was not NIfTI); ValueError
    when what was kept is damaged."""
    if saved.get("format") not in ("nifti1", "nifti2"):
        return None
    header_type = nib.Nifti2Header if saved["format"] == "nifti2" else nib.Nifti1Header
    try:
        header = header_type(binaryblock=base64.b64decode(saved["header_b64"], validate=True))
        dtype = header.get_data_dtype()
    except Exception as error:  # base64, size and dtype errors come in several types
        raise ValueError(f"saved NIfTI header unusable ({error})") from None
    if dtype.kind not in "biuf":
        raise ValueError(f"saved NIfTI header has voxel type {dtype}")
    if ("scl_slope" in saved) != ("scl_inter" in saved):
        raise ValueError("saved scaling has only one of scl_slope and scl_inter")
    for key in ("scl_slope", "scl_inter"):
        value = saved.get(key, 1.0)
        # NIfTI holds them as float32: finite there, and a slope of normal magnitude.
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not abs(value) < _FLOAT32.max \
                or (key == "scl_slope" and not abs(value) >= _FLOAT32.tiny):
            raise ValueError(f"saved {key} is {value!r}")
    return header


def write_nifti(volume: Volume, path: Path, *, note: str | None = None) -> None:
    """Write ``volume``; a header kept from a NIfTI source restores dtype, codes, units and
    scaling (a scaled integer source gets its integers and scl_slope / scl_inter back).
    ``note`` is written as a NIfTI comment extension (what wrote the file), ending in the
    digest of the voxels and geometry written (``checksums.with_voxel_digest``)."""
    try:
        image = nifti_image(volume, note=note)
    except ValueError as error:
        raise MedlossyError(path, str(error)) from None
    nib.save(image, path)


def nifti_image(volume: Volume, *, note: str | None = None) -> nib.Nifti1Image:
    """The image ``write_nifti`` saves, in memory (ValueError: a damaged kept header)."""
    saved = volume.header
    header = saved_header(saved)
    if header is not None:
        image_type = nib.Nifti2Image if saved["format"] == "nifti2" else nib.Nifti1Image
        stored = _stored_values(volume, header.get_data_dtype()) \
            if "scl_slope" in saved else None
        if stored is not None:
            image = image_type(stored, None, header=header)
            # Set after construction (which resets scaling): nibabel then writes the
            # stored values as they are under the source's scl_slope / scl_inter.
            image.header.set_slope_inter(saved["scl_slope"], saved["scl_inter"])
        elif "scl_slope" in saved:
            # Floats that the source's scaling cannot give back exactly: written as they
            # are (float64, no scaling), so nibabel reads the same values.
            header.set_data_dtype(np.float64)
            image = image_type(np.asarray(volume.array, dtype=np.float64), None,
                               header=header)
            image.header.set_slope_inter(1.0, 0.0)
        else:
            image = image_type(volume.array, None, header=header)
    else:
        stored = _rescaled_integers(volume)
        image = nib.Nifti1Image(volume.array if stored is None else stored, volume.affine)
        if stored is not None:
            image.header.set_slope_inter(saved["scl_slope"], saved["scl_inter"])
        image.set_qform(volume.affine, code=1)
        image.set_sform(volume.affine, code=1)
        image.header.set_xyzt_units("mm")
    if note is not None:
        image.update_header()  # the geometry fields as nib.save writes them
        written = np.asarray(image.dataobj, dtype=image.get_data_dtype())
        slope, intercept = image.header.get_slope_inter()
        scaling = (1.0 if slope is None else slope, 0.0 if intercept is None else intercept)
        image.header.extensions.append(nib.nifti1.Nifti1Extension(
            "comment", with_voxel_digest(note, written, geometry_fields(image.header),
                                         scaling).encode()))
    return image


def geometry_fields(header: nib.Nifti1Header) -> dict:
    """The header's geometry fields as plain numbers (what a note's digest covers)."""
    return {name: np.asarray(header[name]).tolist() for name in _GEOMETRY_FIELDS}


def notes(path: Path) -> list[str]:
    """The comment extensions of a NIfTI file (``write_nifti``'s ``note``)."""
    extensions = nib.load(path).header.extensions
    return [ext.get_content().decode("utf-8", "replace") for ext in extensions
            if ext.get_code() == nib.nifti1.extension_codes["comment"]]
