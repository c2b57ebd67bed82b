"""`--lossless` is bit-exact on the stored values, or refused with one line saying what works.

Regression tests for issue 12: each case below once exited 0 with "lossless reached" and a
non-zero error (int16 NIfTI with scl_slope 0.5 / scl_inter 10: 0.015 after scaling and the
header's scaling rewritten; int32 0..100000: off by 1 on a third of the voxels; float32 MR
with fractional values: 0.011).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import open_with_stock_zarr

from medlossy.decompression import read_store
from medlossy.store import SliceStore


def _compress(cli, source, store, *options):
    return cli("compress", source, store, "--lossless", "--workers", "1", "--quiet", *options)


def _round_trip(cli, source, tmp_path, *options):
    """Compress losslessly and decompress; returns (store, decoded NIfTI image)."""
    store = tmp_path / "s.zarr"
    code, _, err = _compress(cli, source, store, *options)
    assert code == 0, err
    code, _, err = cli("decompress", store, tmp_path / "back.nii.gz", "--quiet")
    assert code == 0, err
    return store, nib.load(tmp_path / "back.nii.gz")


@pytest.fixture(scope="module")
def scaled_int16_file(ct_b_crop_array, ct_b_crop_image, tmp_path_factory):
    """CT stored as int16 with scl_slope 0.5 / scl_inter 10 (values in half units)."""
    raw = np.asarray(ct_b_crop_array, dtype=np.int16)
    image = nib.Nifti1Image(raw, ct_b_crop_image.affine)
    image.header["scl_slope"], image.header["scl_inter"] = 0.5, 10.0
    path = tmp_path_factory.mktemp("lossless") / "scaled.nii.gz"
    nib.save(image, path)
    return path


def test_scaled_int16_nifti_keeps_its_integers_and_its_scaling(cli, scaled_int16_file,
                                                                tmp_path):
    source = nib.load(scaled_int16_file)
    store, back = _round_trip(cli, scaled_int16_file, tmp_path)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(source.dataobj))
    np.testing.assert_array_equal(back.dataobj.get_unscaled(), source.dataobj.get_unscaled())
    assert back.get_data_dtype() == np.int16
    assert (back.dataobj.slope, back.dataobj.inter) == (0.5, 10.0)
    attributes = SliceStore(store).attributes
    assert attributes["achieved"]["max_abs_error"] == 0
    assert attributes["codec"]["name"] == "jpeg2k"  # 16-bit integers: JPEG 2000 holds them
    # stock zarr reads the scaled values, the same as medlossy
    np.testing.assert_array_equal(open_with_stock_zarr(store)[:],
                                  np.moveaxis(read_store(store, workers=1).array, 2, 0))


@pytest.fixture(scope="module")
def wide_int32_file(ct_b_crop_array, ct_b_crop_image, tmp_path_factory):
    """int32 values spanning 0..100000 (17 bits)."""
    values = (np.asarray(ct_b_crop_array, dtype=np.int64) + 1024) * 100003 // 5000
    values = np.clip(values, 0, 100000).astype(np.int32)
    values.flat[0], values.flat[1] = 0, 100000
    assert values.max() - values.min() > 65535
    path = tmp_path_factory.mktemp("lossless") / "wide.nii.gz"
    nib.save(nib.Nifti1Image(values, ct_b_crop_image.affine), path)
    return path


@pytest.fixture(scope="module")
def float_mr_file(mr_array, mr_path, tmp_path_factory):
    """MR as float32 with fractional values."""
    rng = np.random.default_rng(3)
    values = (np.asarray(mr_array, dtype=np.float32) * np.float32(0.613)
              + rng.random(mr_array.shape, dtype=np.float32)).astype(np.float32)
    path = tmp_path_factory.mktemp("lossless") / "mr_float.nii.gz"
    nib.save(nib.Nifti1Image(values, nib.load(mr_path).affine), path)
    return path


@pytest.mark.parametrize("name", ["wide_int32_file", "float_mr_file"])
def test_data_beyond_16_bits_is_stored_exactly_with_a_lossless_codec(cli, request, tmp_path,
                                                                    name):
    source_file = request.getfixturevalue(name)
    source = np.asarray(nib.load(source_file).dataobj)
    store, back = _round_trip(cli, source_file, tmp_path)
    decoded = np.asarray(back.dataobj)
    assert decoded.dtype == source.dtype
    np.testing.assert_array_equal(decoded, source)
    attributes = SliceStore(store).attributes
    assert attributes["codec"]["name"] == "blosc"
    assert "lossless" in attributes["codec"]["standard"]
    assert attributes["achieved"]["max_abs_error"] == 0
    assert attributes["intensity"]["exact"] is True
    stock = open_with_stock_zarr(store)
    assert stock.dtype == source.dtype
    np.testing.assert_array_equal(stock[:], np.moveaxis(source, 2, 0))


@pytest.mark.parametrize(("name", "why"), [("wide_int32_file", "values need 17 bits"),
                                           ("float_mr_file", "fractional")])
def test_jpeg2k_lossless_of_data_it_cannot_hold_is_refused(cli, request, tmp_path, name, why):
    store = tmp_path / "s.zarr"
    code, _, err = _compress(cli, request.getfixturevalue(name), store, "--codec", "jpeg2k")
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert why in err and "--codec blosc" in err
    assert not store.exists()


def test_lossless_dicom_output_of_float_data_is_refused_pointing_to_a_store(cli, float_mr_file,
                                                                            tmp_path):
    """DICOM pixel data cannot take Blosc: the refusal says what works for that output."""
    output = tmp_path / "series"
    code, _, err = _compress(cli, float_mr_file, output, "--format", "dicom")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "fractional" in err and "write a store" in err and "--codec blosc" in err
    assert not output.exists()


@pytest.fixture(scope="module")
def scaled_signed_file(ct_b_crop_array, ct_b_crop_image, tmp_path_factory):
    """Signed int16 stored integers (CT, negatives) under scl_slope 0.37 / scl_inter -12.5:
    fractional values that are exactly the file's integers scaled."""
    image = nib.Nifti1Image(np.asarray(ct_b_crop_array, dtype=np.int16), ct_b_crop_image.affine)
    image.header["scl_slope"], image.header["scl_inter"] = 0.37, -12.5
    path = tmp_path_factory.mktemp("lossless") / "scaled_signed.nii.gz"
    nib.save(image, path)
    return path


@pytest.mark.parametrize("codec", ["jpegxl", "jpegls"])
def test_uint16_only_codecs_keep_a_scaled_signed_file_exactly(cli, scaled_signed_file,
                                                               tmp_path, codec):
    # Found by a new user: JPEG XL / JPEG-LS refused this file that JPEG 2000 keeps exactly
    # ("values are fractional (float64)"): their unsigned-codes plan dropped the integers.
    source = nib.load(scaled_signed_file)
    store, back = _round_trip(cli, scaled_signed_file, tmp_path, "--codec", codec)
    np.testing.assert_array_equal(back.dataobj.get_unscaled(), source.dataobj.get_unscaled())
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(source.dataobj))
    assert back.get_data_dtype() == np.int16
    assert (back.dataobj.slope, back.dataobj.inter) == (source.dataobj.slope, -12.5)
    intensity = SliceStore(store).attributes["intensity"]
    assert intensity["code_dtype"] == "<u2" and intensity["exact"] is True
    assert intensity["shift"] == int(np.min(source.dataobj.get_unscaled())) < 0
    # stock zarr applies one scale and offset: the same values to float64 rounding
    np.testing.assert_allclose(open_with_stock_zarr(store)[:],
                               np.moveaxis(np.asarray(source.dataobj), 2, 0), rtol=0,
                               atol=1e-9)


def test_lossless_dicom_of_a_scaled_signed_file_keeps_integers_and_rescale(
        cli, scaled_signed_file, tmp_path):
    # Found by a new user: refused although Rescale Slope / Intercept hold the scaling.
    import pydicom

    from medlossy.io import read_volume

    output = tmp_path / "series"
    code, _, err = _compress(cli, scaled_signed_file, output, "--format", "dicom")
    assert code == 0, err
    source = nib.load(scaled_signed_file)
    (frames,) = output.iterdir()  # neither CT nor MR here: one Secondary Capture object
    dataset = pydicom.dcmread(frames)
    assert dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # J2K lossless
    assert np.float32(dataset.RescaleSlope) == np.float32(0.37)  # as NIfTI holds it
    raw = np.asarray(source.dataobj.get_unscaled()).astype(np.int64)
    assert np.array_equal(np.unique(dataset.pixel_array.astype(np.int64) + raw.min()),
                          np.unique(raw))
    back = read_volume(output)  # float32, the smallest type holding the rescaled values
    np.testing.assert_allclose(back.array, np.asarray(source.dataobj), rtol=1e-6, atol=1e-5)


def test_scaled_float32_file_keeps_its_floats_and_its_scaling(cli, ct_b_crop_image,
                                                               tmp_path):
    # Found by a new user: blosc --lossless of float32 with scl_slope gave slope 1 and
    # values off by up to 7.6e-6 (the scaled values cast back into float32).
    rng = np.random.default_rng(5)
    raw = rng.normal(0, 300, ct_b_crop_image.shape).astype(np.float32)
    image = nib.Nifti1Image(raw, ct_b_crop_image.affine)
    image.header["scl_slope"], image.header["scl_inter"] = 0.37, -12.5
    path = tmp_path / "float_scaled.nii.gz"
    nib.save(image, path)
    source = nib.load(path)
    _, back = _round_trip(cli, path, tmp_path)
    assert back.get_data_dtype() == np.float32
    assert (back.dataobj.slope, back.dataobj.inter) == (source.dataobj.slope, -12.5)
    np.testing.assert_array_equal(back.dataobj.get_unscaled(), raw)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(source.dataobj))


def test_a_scaled_file_whose_stored_integers_span_17_bits_is_refused_saying_so(cli, tmp_path):
    # Found by a new user: int32 stored integers -40000..39999 under scl_slope 0.5 were
    # refused as "values are fractional (float64)", hiding that the integers need 17 bits.
    stored = np.random.default_rng(7).integers(-40000, 40000, (40, 36, 4)).astype(np.int32)
    image = nib.Nifti1Image(stored, np.diag([1.0, 1.0, 2.0, 1.0]))
    image.header["scl_slope"], image.header["scl_inter"] = 0.5, 1.0
    source = tmp_path / "wide_scaled.nii.gz"
    nib.save(image, source)
    store = tmp_path / "s.zarr"
    code, _, err = _compress(cli, source, store, "--codec", "jpeg2k")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "stored integers" in err and "17 bits" in err and "--codec blosc" in err
    assert not store.exists()
