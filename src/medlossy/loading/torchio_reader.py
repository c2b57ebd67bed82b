"""TorchIO reads stores: ``tio.ScalarImage("CASE_0000.zarr", reader=store_reader)``.

Data flow: store path -> every chunk decoded and CRC-checked (``decompression``) -> the
NIfTI image ``medlossy decompress`` would write, built in memory -> its voxels and nibabel's
affine, the pair a TorchIO reader returns. TorchIO asks a reader for the whole image (its
samplers crop patches from the loaded tensor), so the whole store is decoded; no module
here imports torchio (``pip install 'medlossy[torchio]'`` installs it).
"""

from __future__ import annotations

import os

import numpy as np

from medlossy.decompression import decoded_nifti


def store_reader(path: str | os.PathLike[str], *, workers: int | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, affine) of a store as nibabel reads its decoded NIfTI: the decoded dtype
    (integers stay integers; TorchIO widens uint16 and uint32 for torch), axes in the
    source file's order, the 4x4 voxel-to-RAS affine. ``workers``: decoding threads (default:
    one per core; ``functools.partial(store_reader, workers=1)`` in DataLoader workers).

    Example:
        >>> import torchio as tio
        >>> image = tio.ScalarImage("stores/r20/CASE_0000.zarr", reader=store_reader)
        >>> image.affine  # the decoded NIfTI's, read when the image is first used
    """
    image = decoded_nifti(path, workers=workers)
    return np.asanyarray(image.dataobj), image.affine
