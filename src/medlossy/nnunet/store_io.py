"""nnU-Net v2 reads medlossy stores: ``MedlossyStoreIO``, an nnU-Net image reader/writer.

Data flow: a store link (``CASE_0000.mlstore``, see ``medlossy.store.link``) or a store
folder -> every chunk decoded and CRC-checked (``decompression.decoded_nifti``) -> the NIfTI
image ``medlossy decompress`` would write, in memory -> exactly what nnU-Net's
``NibabelIOWithReorient`` does with a loaded file: reorient to the closest canonical (RAS)
axes, transpose to nnU-Net's (z, y, x) order, spacing from the reoriented header. So
planning, preprocessing and prediction see the array and spacing nnU-Net would see on the
decoded .nii.gz, with no decoded copy on disk. Labels stay NIfTI (lossless, in labelsTr) and
are read the same way.

Segmentations nnU-Net names itself. nnU-Net gives every file of a dataset the dataset's
file ending, the link's here: its copies of the labels (``gt_segmentations/CASE.mlstore``,
the label file's bytes), its predictions and postprocessed predictions (``CASE.mlstore``),
and it evaluates by listing both folders by that ending. So ``write_seg`` writes the NIfTI
file under the name nnU-Net gives, and a ``.mlstore`` file that holds a NIfTI image rather
than a link (a link is a JSON object) is read as that image: nnU-Net's validation at the
end of training, ``nnUNetv2_evaluate_folder``, postprocessing and
``nnUNetv2_find_best_configuration`` then work on a stores dataset as on any other.

How nnU-Net finds it. nnU-Net picks a reader by the name in dataset.json's
``overwrite_image_reader_writer`` (and by file ending), but searches for that name only in
the modules of its own ``nnunetv2.imageio`` package, also in the worker processes it spawns
for fingerprinting, preprocessing and export. Rather than writing a file into nnU-Net's
installed package, :func:`register` makes the class visible to that search in the running
process: it sets it on ``nnunetv2.imageio.reader_writer_registry`` (one of the modules the
search imports) and adds it to the file-ending list. Processes that run nnU-Net for medlossy
(``python -m medlossy.nnunet.launch nnUNetv2_...`` and ``medlossy.nnunet.worker``) call it at
import, so the processes nnU-Net spawns from them, which import the main module again,
register it too.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import nibabel
import numpy as np
from nibabel.orientations import io_orientation
from nnunetv2.imageio import reader_writer_registry
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

from medlossy.decompression import decoded_nifti
from medlossy.errors import MedlossyError
from medlossy.store.link import LINK_ENDING, NNUNET_READER, is_store_link, read_store_link

NIFTI_ENDING = ".nii.gz"
_GZIP_MAGIC = b"\x1f\x8b"


def holds_link(path: Path) -> bool:
    """Whether a ``.mlstore`` file is a store link (a JSON object), not a segmentation that
    nnU-Net named with the dataset's ending (a NIfTI file, gzipped or not)."""
    with open(path, "rb") as handle:
        return handle.read(64).lstrip().startswith(b"{")


def nifti_from_file(path: Path) -> nibabel.Nifti1Image:
    """A NIfTI-1 or -2 file, whatever its name ends in (nibabel goes by the ending)."""
    data = path.read_bytes()
    if data.startswith(_GZIP_MAGIC):
        data = gzip.decompress(data)
    try:
        return nibabel.Nifti1Image.from_bytes(data)
    except nibabel.spatialimages.HeaderDataError:
        return nibabel.Nifti2Image.from_bytes(data)


def load_image(path: str | os.PathLike[str]) -> nibabel.Nifti1Image:
    """A store link, a store folder or a NIfTI file (also one named ``.mlstore`` by nnU-Net)
    as nibabel gives the decoded file."""
    path = Path(path)
    if is_store_link(path):
        if holds_link(path):
            return decoded_nifti(read_store_link(path), workers=1)
        try:
            return nifti_from_file(path)
        except (nibabel.spatialimages.HeaderDataError, nibabel.wrapstruct.WrapStructError,
                zlib.error, OSError, EOFError, ValueError):
            raise MedlossyError(path, "neither a medlossy store link (a JSON object) nor a "
                                      "NIfTI image") from None
    if path.suffix == ".zarr" or path.is_dir():
        return decoded_nifti(path, workers=1)
    return nibabel.load(path)


class MedlossyStoreIO(NibabelIOWithReorient):
    """nnU-Net's ``NibabelIOWithReorient`` for stores (and the NIfTI labels beside them).

    nnU-Net spawns its workers; each decodes one case with one thread (workers=1), so the
    cores are shared out by nnU-Net's ``-np`` as for NIfTI files.
    """

    supported_file_endings: ClassVar[list[str]] = [LINK_ENDING, ".zarr", ".nii", ".nii.gz"]

    def read_images(self, image_fnames: Sequence[str]) -> tuple[np.ndarray, dict]:
        images, original, reoriented, spacings = [], [], [], []
        for name in image_fnames:
            image = load_image(name)
            if image.ndim != 3:
                raise RuntimeError(f"{name}: only 3D images are supported, got {image.ndim}D")
            turned = image.as_reoriented(io_orientation(image.affine))
            original.append(image.affine)
            reoriented.append(turned.affine)
            spacings.append([float(zoom) for zoom in turned.header.get_zooms()[::-1]])
            images.append(turned.get_fdata().transpose((2, 1, 0))[None])
        # nnU-Net's checks: channels of one case share the grid (an affine that differs
        # only warns there, as here it cannot, since nnU-Net prints rather than raises)
        if not self._check_all_same([image.shape for image in images]):
            raise RuntimeError(f"not all channels have the same shape: {list(image_fnames)}")
        if not self._check_all_same(spacings):
            raise RuntimeError(f"not all channels have the same spacing: {list(image_fnames)}")
        properties = {"nibabel_stuff": {"original_affine": original[0],
                                        "reoriented_affine": reoriented[0]},
                      "spacing": spacings[0]}
        return np.vstack(images, dtype=np.float32, casting="unsafe"), properties

    def write_seg(self, seg: np.ndarray, output_fname: str, properties: dict) -> None:
        """NIfTI (gzipped), as ``NibabelIOWithReorient`` writes it, under the name nnU-Net
        gives: with the dataset's ending (``CASE.mlstore``), which nnU-Net's evaluation
        lists (see the module docstring). Written beside it first, then renamed: a reader
        never sees half a file."""
        if not output_fname.endswith(LINK_ENDING):
            super().write_seg(seg, output_fname, properties)
            return
        temporary = f"{output_fname}.partial{NIFTI_ENDING}"  # nibabel goes by the ending
        try:
            super().write_seg(seg, temporary, properties)
            os.replace(temporary, output_fname)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


def register() -> None:
    """Make ``MedlossyStoreIO`` findable by nnU-Net in this process (see the module
    docstring); calling it again changes nothing."""
    setattr(reader_writer_registry, NNUNET_READER, MedlossyStoreIO)
    if MedlossyStoreIO not in reader_writer_registry.LIST_OF_IO_CLASSES:
        reader_writer_registry.LIST_OF_IO_CLASSES.append(MedlossyStoreIO)
