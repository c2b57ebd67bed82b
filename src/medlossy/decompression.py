"""Turn a store back into a volume (and a file), every chunk (slice, block or tile) checked
against its checksum."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from medlossy import __version__
from medlossy.atomic import atomic_output
from medlossy.codecs import get_codec
from medlossy.codecs.intensity import CodeMapping
from medlossy.codecs.pool import default_workers
from medlossy.errors import MedlossyError
from medlossy.io import write_volume
from medlossy.io.nifti import nifti_image, saved_header
from medlossy.outputs import DECOMPRESSED_NOTE
from medlossy.store import SliceStore
from medlossy.volume import Volume


def read_store(path: str | Path, *, workers: int | None = None) -> Volume:
    """The decoded volume, in the source's array order, dtype and geometry."""
    store = SliceStore(path)
    attributes = store.attributes
    geometry = attributes["geometry"]
    codec = get_codec(attributes["codec"]["name"])
    shape = tuple(geometry["shape"])
    source = attributes.get("source", {})
    header = {key: value for key, value in source.items() if key != "file"}
    try:
        saved_header(header)
    except ValueError as error:
        raise MedlossyError(store.path, f"corrupt store metadata ({error})") from None
    try:
        array = np.empty(shape, dtype=store.mapping.original_dtype)
    except MemoryError:
        raise MedlossyError(store.path, f"declares a {shape} volume, too large to hold in "
                                        "memory here") from None
    slices_first = np.moveaxis(array, geometry["axial_axis"], 0)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as threads:
        decoded = threads.map(lambda index: store.decode_chunk(index, codec),
                              range(store.chunks))
        for index, codes in enumerate(decoded):
            held, rows, columns = store.chunk_window(index)
            slices_first[held.start : held.stop, rows, columns] = store.mapping.to_values(codes)
    return Volume(array, np.asarray(geometry["affine"], dtype=float),
                  modality=attributes.get("modality", "OTHER"), header=header)


def volume_from_codes(codes: Iterable[np.ndarray], mapping: CodeMapping,
                      attributes: dict) -> Volume:
    """The volume a store's attributes describe, from the decoded codes of its axial slices
    in order (what ``read_store`` returns, for a caller that has just decoded them)."""
    geometry = attributes["geometry"]
    array = np.empty(tuple(geometry["shape"]), dtype=mapping.original_dtype)
    slices_first = np.moveaxis(array, geometry["axial_axis"], 0)
    for index, slice_codes in enumerate(codes):
        slices_first[index] = mapping.to_values(slice_codes)
    source = attributes.get("source", {})
    header = {key: value for key, value in source.items() if key != "file"}
    return Volume(array, np.asarray(geometry["affine"], dtype=float),
                  modality=attributes.get("modality", "OTHER"), header=header)


def decoded_nifti(store_path: str | Path, *, workers: int | None = None) -> nib.Nifti1Image:
    """The NIfTI image ``medlossy decompress STORE out.nii`` writes, as nibabel reads that
    file back (header, affine, scaling and voxels alike; only its comment naming the writer
    is left out), built in memory: for readers that hand stores to code written for nibabel
    images (medlossy.loading's MONAI and TorchIO readers)."""
    volume = read_store(store_path, workers=workers)
    try:
        image = nifti_image(volume)
    except ValueError as error:
        raise MedlossyError(store_path, f"corrupt store metadata ({error})") from None
    # Serialised and parsed again: an image built on a kept header has no affine until
    # saved (a load takes it from the header's sform / qform as nibabel chooses) and holds
    # stored values, not the scaling applied by an array proxy, as a loaded file does.
    return type(image).from_bytes(image.to_bytes())


def decompress_to_file(store_path: str | Path, output: str | Path, *,
                       workers: int | None = None, replace: bool = True) -> Volume:
    """Decode a store and write it (.nii, .nii.gz or .nrrd), atomically; ``replace`` False
    refuses an ``output`` that exists by then."""
    volume = read_store(store_path, workers=workers)
    try:
        with atomic_output(output, replace=replace) as temporary:
            write_volume(volume, temporary,
                         note=f"{DECOMPRESSED_NOTE} {__version__} from {Path(store_path).name}")
    except MedlossyError as error:
        raise MedlossyError(output, error.problem) from None
    return volume
