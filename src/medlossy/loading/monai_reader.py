"""MONAI reads stores: ``LoadImage(reader=MedlossyStoreReader())``.

Data flow: store path(s) -> every chunk decoded and CRC-checked (``decompression``) -> the
NIfTI image ``medlossy decompress`` would write, built in memory -> MONAI's own
``NibabelReader.get_data``. So the array, the affine and every meta key are what
``NibabelReader`` gives for the decoded file, with no decoded copy on disk. MONAI hands a
reader a file name and takes the whole array back (its crops run afterwards), so the whole
store is decoded; ``StorePatchDataset`` decodes only the slices or tiles a patch needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from monai.config import PathLike
from monai.data import NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.utils import ensure_tuple

from medlossy.decompression import decoded_nifti
from medlossy.store.ngff import LEVEL0


def is_store(path: PathLike) -> bool:
    """Whether ``path`` names a store: a ``.zarr`` name, or a folder laid out as one."""
    folder = Path(path)
    return folder.suffix.lower() == ".zarr" or (
        (folder / ".zattrs").is_file()
        and ((folder / LEVEL0 / ".zarray").is_file() or (folder / ".zarray").is_file())
    ) or ((folder / "zarr.json").is_file() and (folder / LEVEL0 / "zarr.json").is_file())


class MedlossyStoreReader(NibabelReader):
    """Read medlossy stores in ``LoadImage`` / ``LoadImaged`` as their decoded NIfTI.

    ``get_data`` is ``NibabelReader``'s, applied to the decoded images. A list of stores (a
    case's channels, ``CASE_0000.zarr``, ``CASE_0001.zarr``) is stacked as channels, as
    ``NibabelReader`` stacks a list of files.

    Args:
        channel_dim: as ``NibabelReader``'s.
        as_closest_canonical: as ``NibabelReader``'s (reorient to RAS).
        squeeze_non_spatial_dims: as ``NibabelReader``'s.
        workers: decoding threads per store (default: one per core).

    Example:
        >>> from monai.transforms import LoadImaged
        >>> load = LoadImaged(["image", "label"], reader=MedlossyStoreReader(),
        ...                   ensure_channel_first=True)
        >>> case = load({"image": "stores/r20/CASE_0000.zarr",
        ...              "label": "labelsTr/CASE.nii.gz"})  # labels: MONAI's NIfTI reader
    """

    def __init__(self, channel_dim: str | int | None = None, as_closest_canonical: bool = False,
                 squeeze_non_spatial_dims: bool = False, *, workers: int | None = None,
                 ) -> None:
        super().__init__(channel_dim=channel_dim, as_closest_canonical=as_closest_canonical,
                         squeeze_non_spatial_dims=squeeze_non_spatial_dims)
        self.workers = workers

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(is_store(name) for name in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        """The decoded NIfTI image of each store (a list for several); ``kwargs`` are
        accepted for MONAI's interface and unused (there is no file to open)."""
        filenames: Sequence[PathLike] = ensure_tuple(data)
        self.filenames = filenames  # what NibabelReader.get_data pairs images with
        images = [correct_nifti_header_if_necessary(decoded_nifti(name, workers=self.workers))
                  for name in filenames]
        return images if len(filenames) > 1 else images[0]
