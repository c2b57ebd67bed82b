"""PSNR, MSE, max error, ratio and bits per voxel, checked against scikit-image and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from medlossy.metrics import (
    CT_DATA_RANGE,
    ErrorTally,
    bits_per_voxel,
    compression_ratio,
    data_range_for,
    describe_peak,
    detect_modality,
    max_abs_error,
    mse,
    psnr,
    psnr_from_mse,
    raw_bytes,
)


def _noisy(reference: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = np.rint(rng.normal(0.0, sigma, reference.shape))
    return (reference.astype(np.int32) + noise.astype(np.int32)).astype(reference.dtype)


def test_psnr_matches_skimage_for_ct(ct_b_crop_array):
    test = _noisy(ct_b_crop_array, sigma=25.0)
    expected = peak_signal_noise_ratio(ct_b_crop_array, test, data_range=4096)
    assert psnr(ct_b_crop_array, test, 4096) == pytest.approx(expected, rel=1e-12)
    assert CT_DATA_RANGE == 4096


def test_psnr_matches_skimage_for_mr_range(mr_array):
    test = _noisy(mr_array, sigma=7.0, seed=1)
    data_range = float(mr_array.max()) - float(mr_array.min())
    expected = peak_signal_noise_ratio(mr_array, test, data_range=data_range)
    assert psnr(mr_array, test, data_range) == pytest.approx(expected, rel=1e-12)


def test_psnr_matches_skimage_for_float_arrays():
    rng = np.random.default_rng(2)
    reference = rng.random((7, 9, 5)).astype(np.float32) * 830.0
    test = reference + rng.normal(0, 3.0, reference.shape).astype(np.float32)
    expected = peak_signal_noise_ratio(reference, test, data_range=830.0)
    assert psnr(reference, test, 830.0) == pytest.approx(expected, rel=1e-9)


def test_mse_and_max_abs_error_by_hand():
    reference = np.zeros((2, 2, 2), dtype=np.int16)
    test = reference.copy()
    test[0, 0, 0], test[1, 1, 0] = 3, -4
    assert mse(reference, test) == pytest.approx(25.0 / 8.0)
    assert max_abs_error(reference, test) == 4.0
    assert psnr(reference, test, 100.0) == pytest.approx(10 * math.log10(100.0**2 / (25 / 8)))


def test_errors_do_not_overflow_16_bit_types():
    reference = np.full((4, 4), -32768, dtype=np.int16)
    test = np.full((4, 4), 32767, dtype=np.int16)
    assert max_abs_error(reference, test) == 65535.0
    assert mse(reference, test) == pytest.approx(65535.0**2)
    low = np.zeros((3, 3), dtype=np.uint16)
    assert max_abs_error(low + 65535, low) == 65535.0  # unsigned wrap-around would give 1


@pytest.mark.parametrize("axis", [0, 2])
def test_tally_slice_by_slice_equals_whole_array(ct_b_crop_array, axis):
    test = _noisy(ct_b_crop_array, sigma=40.0, seed=3)
    tally = ErrorTally()
    for index in range(ct_b_crop_array.shape[axis]):
        tally.add(np.take(ct_b_crop_array, index, axis=axis), np.take(test, index, axis=axis))
    assert tally.voxels == ct_b_crop_array.size
    assert tally.mse == pytest.approx(mse(ct_b_crop_array, test), rel=1e-12)
    assert tally.max_abs_error == max_abs_error(ct_b_crop_array, test)
    assert tally.psnr(4096) == pytest.approx(
        peak_signal_noise_ratio(ct_b_crop_array, test, data_range=4096), rel=1e-12)


def test_tally_rejects_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        ErrorTally().add(np.zeros((3, 4)), np.zeros((4, 3)))


def test_identical_arrays_give_infinite_psnr(mr_array):
    assert psnr(mr_array, mr_array.copy(), 880.0) == math.inf
    assert psnr_from_mse(0.0, 4096) == math.inf
    assert max_abs_error(mr_array, mr_array) == 0.0


def test_empty_tally_has_zero_mse_and_infinite_psnr():
    tally = ErrorTally()
    assert tally.mse == 0.0
    assert tally.psnr(4096) == math.inf


def test_raw_bytes_count_16_bits_per_voxel():
    assert raw_bytes((10, 20, 30)) == 2 * 10 * 20 * 30


def test_ratio_and_bits_per_voxel_arithmetic():
    shape = (10, 20, 30)  # 6000 voxels, 12000 raw bytes
    assert compression_ratio(shape, 1200) == pytest.approx(10.0)
    assert compression_ratio(shape, 12000) == pytest.approx(1.0)
    assert bits_per_voxel(shape, 750) == pytest.approx(1.0)
    assert bits_per_voxel(shape, 12000) == pytest.approx(16.0)


@pytest.mark.parametrize("stored", [1, 977, 12000, 50001])
def test_bits_per_voxel_is_16_over_ratio(stored):
    shape = (33, 41, 7)
    assert bits_per_voxel(shape, stored) == pytest.approx(16.0 / compression_ratio(shape, stored))


def test_data_range_rules():
    assert data_range_for("CT") == 4096.0
    assert data_range_for("CT", -1000, 3000) == 4096.0  # CT ignores the measured span
    assert data_range_for("MR", -5, 830) == 835.0
    assert data_range_for("MR", 0, 830, data_range=1200) == 1200.0  # explicit wins
    assert data_range_for("OTHER", 7, 7) == 1.0  # constant volume: no zero peak


@pytest.mark.parametrize(("requested", "low", "high", "known", "expected"), [
    ("auto", -1024, 3071, "OTHER", ("CT", "auto: values in HU range")),
    ("auto", 0, 254, "OTHER", ("OTHER", "auto: values not in HU range")),  # uint8 T1
    ("auto", -3, 809, "OTHER", ("OTHER", "auto: values not in HU range")),
    ("auto", -1024, 3071, "MR", ("MR", "recorded in the input")),  # a DICOM header says so
    ("MR", -1024, 3071, "CT", ("MR", "given")),  # the user's word wins
    ("OTHER", 0, 254, "OTHER", ("OTHER", "given")),
])
def test_one_modality_rule(requested, low, high, known, expected):
    assert detect_modality(requested, low, high, known=known) == expected


def test_datasets_name_what_is_not_ct_mr():
    assert detect_modality("auto", 0, 812, not_ct="MR") == ("MR", "auto: values not in HU range")
    assert detect_modality("auto", -1000, 2000, not_ct="MR")[0] == "CT"


def test_peak_is_stated_with_its_rule():
    assert describe_peak("MR", "auto: values not in HU range", 812.0, "max - min") == \
        "modality MR (auto: values not in HU range), r = max - min = 812"
    assert describe_peak("CT", "given", 4096.0, "CT") == "modality CT (given), r = 4096 (CT)"
    assert describe_peak("MR", "given", 900.0, "given").endswith("r = 900 (given)")


def test_data_range_errors():
    with pytest.raises(ValueError, match="needs a data range"):
        data_range_for("MR")
    with pytest.raises(ValueError, match="positive"):
        data_range_for("CT", data_range=0)


def test_mse_of_wide_integers_does_not_overflow():
    # Errors of 3e9 (a uint32 or int64 volume compressed lossily): their squares pass int64's
    # range; an int64 sum wrapped to a negative MSE and PSNR failed with "math domain error".
    reference = np.array([[0, 4_000_000_000], [7, 2**40]], dtype=np.int64)
    test = np.array([[3_000_000_000, 1_000_000_000], [7, 2**40 - 5]], dtype=np.int64)
    expected = (9e18 + 9e18 + 0 + 25) / 4
    assert mse(reference, test) == pytest.approx(expected)
    low = np.array([[0], [7]], dtype=np.uint32)
    assert mse(low, low + np.array([[4_000_000_000], [0]], dtype=np.uint32)) \
        == pytest.approx(16e18 / 2)
    assert psnr(reference, test, 2.0**41) == pytest.approx(10 * np.log10(2.0**82 / expected))
