"""Every transfer syntax archives hold, and enhanced multi-frame objects, read to one volume.

pydicom's test files hold the same 64x64 MR slice in several transfer syntaxes; an enhanced
(Legacy Converted Enhanced CT) multi-frame object is made with highdicom from a series medlossy
wrote, and must read to the same volume as the single-frame series.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medlossy.compression import Target
from medlossy.dicom_export import compress_to_dicom
from medlossy.errors import MedlossyError
from medlossy.io import read_volume


@pytest.mark.parametrize("name", [
    "MR_small_RLE.dcm",  # RLE Lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
])
def test_each_transfer_syntax_reads_the_same_slice(name):
    reference = read_volume(get_testdata_file("MR_small.dcm"))
    volume = read_volume(get_testdata_file(name))
    assert volume.shape == (64, 64, 1) and volume.modality == "MR"
    np.testing.assert_array_equal(volume.array, reference.array)


def test_jpeg_ls_near_lossless_decodes(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("JPEGLSNearLossless_16.dcm"))
    # A secondary capture without geometry: give it a plane, as an image series has.
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(tmp_path / "jls.dcm")
    volume = read_volume(tmp_path / "jls.dcm")
    np.testing.assert_array_equal(volume.array[:, :, 0], ds.pixel_array.T)


def test_enhanced_multiframe_reads_like_its_single_frame_series(ct_b_crop_file, tmp_path):
    highdicom = pytest.importorskip("highdicom")
    series = tmp_path / "series"
    compress_to_dicom(ct_b_crop_file, series, Target("lossless"), workers=1)
    slices = [pydicom.dcmread(f) for f in sorted(series.glob("*.dcm"))]
    for ds in slices:
        ds.decompress()
    enhanced = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=highdicom.UID(), series_number=9,
        sop_instance_uid=highdicom.UID(), instance_number=1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    single, multi = read_volume(series), read_volume(tmp_path / "enhanced.dcm")
    assert int(pydicom.dcmread(tmp_path / "enhanced.dcm").NumberOfFrames) == len(slices)
    np.testing.assert_array_equal(multi.array, single.array)
    np.testing.assert_allclose(multi.affine, single.affine, atol=1e-4)


def test_missing_pixel_data_and_a_corrupted_frame_name_the_file(ct_c_dicom, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    files = sorted(ct_c_dicom.iterdir())
    for file in files:
        (folder / file.name).write_bytes(file.read_bytes())
    ds = pydicom.dcmread(folder / files[4].name)
    del ds.PixelData
    ds.save_as(folder / files[4].name)
    with pytest.raises(MedlossyError, match="has no pixel data") as caught:
        read_volume(folder)
    assert files[4].name in str(caught.value)
    (folder / files[4].name).write_bytes(files[4].read_bytes())
    ds = pydicom.dcmread(folder / files[7].name)
    frame = bytearray(ds.PixelData)
    frame[200:4000] = bytes(3800)  # zeroes across the codestream's header and first packets
    ds.PixelData = bytes(frame)
    ds.save_as(folder / files[7].name)
    with pytest.raises(MedlossyError, match="cannot decode DICOM pixel data") as caught:
        read_volume(folder)
    assert files[7].name in str(caught.value)
