"""Image quality of a decoded volume against its original: PSNR, MSE, max error.

Data flow: reference and test, each a volume file, a DICOM series folder or a medlossy store
(a folder, or a URL read through fsspec: ``https://host/CASE.zarr``) -> decoded into memory
(a store fetches its metadata once and each chunk once) -> the test reoriented onto the
reference's voxel grid -> one error tally -> a row. :func:`quality_table` does many pairs
through an executor (a process pool, or a Dask cluster's ``client.get_executor()``), each
pair opened in the worker that measures it, so workers on other machines read the same URLs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
import pandas as pd

from medlossy.decompression import read_store
from medlossy.errors import MedlossyError
from medlossy.frames import to_reference_frame
from medlossy.io import read_volume
from medlossy.metrics import (
    ErrorTally,
    data_range_for,
    describe_peak,
    detect_modality,
    peak_rule,
)
from medlossy.store import SliceStore
from medlossy.store.remote import is_url
from medlossy.volume import Volume

Location = str | os.PathLike[str]
#: Columns of :func:`quality_table`, one row per (reference, test) pair.
COLUMNS = ("reference", "test", "psnr_db", "data_range", "modality", "mse", "max_abs_error")


def store_attributes(location: Location) -> dict | None:
    """A medlossy store's attributes, or None for a volume file or DICOM folder. A URL is
    always a store (volume files are read from folders only): one that is not raises."""
    if is_url(location):
        return SliceStore(location).attributes
    folder = os.fspath(location)
    if os.path.isdir(folder) and any(os.path.exists(os.path.join(folder, name))
                                     for name in (".zattrs", "zarr.json")):
        return SliceStore(folder).attributes
    return None


def load_volume(location: Location) -> tuple[Volume, dict | None]:
    """The volume at ``location`` and its store attributes: a store (folder or URL)
    decoded, else a volume file (attributes None)."""
    attributes = store_attributes(location)
    if attributes is not None:
        return read_store(location), attributes
    return read_volume(location), None


def _peak(stores: dict[Location, dict | None], reference: Volume, modality: str,
          data_range: float | None) -> tuple[str, float, str]:
    """(modality, r, what to tell the user): ``modality`` and ``data_range`` as given;
    under auto the recorded modality and r of the first store of ``stores`` (location ->
    attributes, the test first: what ``info`` reports), else the one detection rule on the
    reference's values."""
    if modality == "auto" and data_range is None:
        for location, attributes in stores.items():
            if attributes is not None:
                recorded = attributes.get("modality", "OTHER")
                peak = float(attributes["achieved"]["data_range"])
                return recorded, peak, describe_peak(recorded, f"recorded in {location}",
                                                     peak, "recorded")
    low, high = float(np.min(reference.array)), float(np.max(reference.array))
    chosen, how = detect_modality(modality, low, high, known=reference.modality)
    peak = data_range_for(chosen, low, high, data_range)
    rule = peak_rule(chosen, data_range, "max - min of the reference")
    note = describe_peak(chosen, how, peak, rule)
    if rule not in ("given", "CT"):
        note += "; pass --range with the dataset's range to match the study"
    return chosen, peak, note


def volume_quality(reference: Location, test: Location, *, modality: str = "auto",
                   data_range: float | None = None) -> dict:
    """PSNR (None when identical), MSE and max abs error of ``test`` against ``reference``,
    with the peak r used and how it was chosen (``note``) and the reorientation applied.

    Raises:
        MedlossyError: a grid that differs beyond flips and transposes, an unreadable file
            or URL (naming it).
    """
    (original, reference_store), (measured, test_store) = (load_volume(reference),
                                                           load_volume(test))
    try:
        aligned = to_reference_frame(original, measured)
    except ValueError as error:
        raise MedlossyError(test, f"voxel grid differs from {reference}'s ({error}): cannot "
                                  "compare voxel by voxel") from None
    chosen, peak, note = _peak({test: test_store, reference: reference_store}, original,
                               modality, data_range)
    tally = ErrorTally()
    tally.add(np.asarray(original.array), aligned.array)
    value = tally.psnr(peak)
    return {"psnr_db": None if value == float("inf") else value, "data_range": peak,
            "modality": chosen, "mse": tally.mse, "max_abs_error": tally.max_abs_error,
            "reoriented": aligned.reoriented, "note": note}


def _row(pair: tuple[str, str]) -> dict:
    """One table row; runs in a worker process (module level: picklable by reference)."""
    reference, test = pair
    result = volume_quality(reference, test)
    return {"reference": reference, "test": test,
            **{key: result[key] for key in COLUMNS[2:]}}


def quality_table(pairs: Sequence[tuple[Location, Location]],
                  executor: Executor | None = None) -> pd.DataFrame:
    """:func:`volume_quality` of every (reference, test) pair, one row each in the order
    given (PSNR NaN where identical); through ``executor`` when given (each pair read in its
    worker), else here. The first failure raises (a ``MedlossyError`` naming its file or
    URL), so a table is complete or not made."""
    named = [(os.fspath(reference), os.fspath(test)) for reference, test in pairs]
    rows = list(executor.map(_row, named)) if executor is not None else list(map(_row, named))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table["psnr_db"] = table["psnr_db"].astype(float)
    return table
