"""NIfTI-1/2 through nibabel, keeping the whole header so a round trip changes only voxels."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medlossy.errors import MedlossyError
from medlossy.volume import Volume

SUFFIXES = (".nii", ".nii.gz")


def read_nifti(path: Path, modality: str = "OTHER", *, lazy: bool = False) -> Volume:
    """Read a NIfTI file; scaling (scl_slope/inter) is applied as nibabel does.

    With ``lazy`` the volume keeps nibabel's array proxy: voxels are read when sliced.
    """
    try:
        # keep_file_open: a lazy read goes slab by slab; reopening a .nii.gz for each slab
        # re-inflates it from the start (72 s instead of 2 s for a 512x512x1000 CT here).
        image = nib.load(path, keep_file_open=lazy)
    except FileNotFoundError:
        raise MedlossyError(path, "no such file") from None
    except Exception as error:  # nibabel raises many types for corrupt headers
        raise MedlossyError(path, f"not a readable NIfTI file ({error})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise MedlossyError(path, f"not a NIfTI image ({type(image).__name__})")
    if lazy:
        array = image.dataobj
    else:
        try:
            array = np.asarray(image.dataobj)
        except (OSError, EOFError, ValueError, zlib.error) as error:
            raise MedlossyError(path, f"truncated or corrupt voxel data ({error})") from None
    header = {
        "format": "nifti2" if isinstance(image, nib.Nifti2Image) else "nifti1",
        "header_b64": base64.b64encode(image.header.binaryblock).decode("ascii"),
    }
    return Volume(array, image.affine, modality=modality, header=header)


def write_nifti(volume: Volume, path: Path) -> None:
    """Write ``volume``; a header kept from a NIfTI source restores dtype, codes and units."""
    saved = volume.header
    if saved.get("format") in ("nifti1", "nifti2"):
        header_type = nib.Nifti2Header if saved["format"] == "nifti2" else nib.Nifti1Header
        header = header_type(binaryblock=base64.b64decode(saved["header_b64"]))
        image_type = nib.Nifti2Image if saved["format"] == "nifti2" else nib.Nifti1Image
        image = image_type(volume.array, None, header=header)
    else:
        image = nib.Nifti1Image(volume.array, volume.affine)
        image.set_qform(volume.affine, code=1)
        image.set_sform(volume.affine, code=1)
        image.header.set_xyzt_units("mm")
    nib.save(image, path)
