"""Property tests: damaged DICOM headers and files end in a one-line error or a correct volume.

A small series is built from pydicom's CT test slice (128x128, uncompressed, 4 slices 2.5 mm
apart); Hypothesis then deletes or rewrites geometry and pixel-description attributes, or
truncates and flips bytes of one file. The reader must either raise MedlossyError or return a
volume whose shape and values match what the files hold: never another exception.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from medlossy.errors import MedlossyError
from medlossy.io import read_volume

SLICES = 4
#: MEDLOSSY_FUZZ_EXAMPLES=2000 for a longer hunt; CI runs the default.
_FUZZ = settings(max_examples=int(os.environ.get("MEDLOSSY_FUZZ_EXAMPLES", "60")),
                 deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
             "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleSlope",
             "RescaleIntercept", "SamplesPerPixel", "NumberOfFrames", "SeriesInstanceUID",
             "Modality", "PhotometricInterpretation", "PixelData")
_VALUES = st.one_of(
    st.none(), st.just(""), st.integers(-(2**31), 2**31), st.floats(allow_nan=True),
    st.text(max_size=12), st.lists(st.floats(allow_nan=True, allow_infinity=True),
                                   max_size=7),
    st.lists(st.integers(-5, 5), max_size=7), st.binary(max_size=64))


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz_series")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for k in range(SLICES):
        ds.ImagePositionPatient = [-158.1, -179.0, -75.7 + 2.5 * k]
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{k + 1}"
        ds.save_as(folder / f"slice{k}.dcm")
    return folder


def _read_or_fail_cleanly(folder: Path) -> None:
    try:
        volume = read_volume(folder)
    except MedlossyError as error:
        assert "\n" not in str(error)
        return
    assert volume.array.ndim == 3 and volume.shape[2] <= SLICES
    assert np.isfinite(volume.affine).all()


@_FUZZ
@given(keyword=st.sampled_from(_KEYWORDS), value=_VALUES, which=st.integers(0, SLICES - 1),
       delete=st.booleans())
def test_damaged_header_attribute(series, tmp_path_factory, keyword, value, which, delete):
    folder = tmp_path_factory.mktemp("case")
    shutil.copytree(series, folder, dirs_exist_ok=True)
    file = folder / f"slice{which}.dcm"
    ds = pydicom.dcmread(file)
    try:
        if delete:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
        ds.save_as(file)
    except Exception:  # pydicom refuses to write this value at all: nothing to read back
        return
    _read_or_fail_cleanly(folder)


@_FUZZ
@given(which=st.integers(0, SLICES - 1), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 7)), max_size=8))
def test_truncated_or_bit_flipped_file(series, tmp_path_factory, which, cut, flips):
    folder = tmp_path_factory.mktemp("case")
    shutil.copytree(series, folder, dirs_exist_ok=True)
    file = folder / f"slice{which}.dcm"
    data = bytearray(file.read_bytes())
    for where, bit in flips:
        data[int(where * (len(data) - 1))] ^= 1 << bit
    file.write_bytes(bytes(data[: max(1, int(cut * len(data)))]) if cut < 1 else bytes(data))
    _read_or_fail_cleanly(folder)


def test_fuzz_series_reads_when_intact(series):
    volume = read_volume(series)
    assert volume.shape == (128, 128, SLICES)
    assert volume.array.dtype == np.int16
    assert volume.spacing[2] == pytest.approx(2.5)
