"""Mapping voxel values onto the 16-bit codes a JPEG 2000 codestream holds, and back."""

from __future__ import annotations

import numpy as np
import pytest

from medlossy.codecs.intensity import CodeMapping, plan_mapping


def _plan(values: np.ndarray) -> CodeMapping:
    values = np.asarray(values)
    integral = bool(np.all(values == np.round(values))) if values.dtype.kind == "f" else True
    return plan_mapping(float(values.min()), float(values.max()), values.dtype, integral)


def test_int16_passes_through_exactly(ct_b_crop_array):
    mapping = _plan(ct_b_crop_array)
    assert (mapping.code_dtype, mapping.rescaled, mapping.exact) == ("<i2", False, True)
    assert mapping.max_rounding_error == 0.0
    codes = mapping.to_codes(ct_b_crop_array)
    assert codes.dtype == np.int16
    np.testing.assert_array_equal(codes, ct_b_crop_array)
    back = mapping.to_values(codes)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, ct_b_crop_array)


def test_uint16_above_int16_passes_through_as_unsigned():
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    mapping = _plan(values)
    assert mapping.code_dtype == "<u2" and not mapping.rescaled
    np.testing.assert_array_equal(mapping.to_codes(values), values)
    back = mapping.to_values(mapping.to_codes(values))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, values)


def test_small_uint16_uses_signed_codes_and_comes_back_unsigned():
    values = np.array([0, 12, 32767], dtype=np.uint16)
    mapping = _plan(values)
    assert mapping.code_dtype == "<i2" and mapping.original_dtype == "<u2"
    back = mapping.to_values(mapping.to_codes(values))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, values)


def test_int32_within_int16_passes_through_and_keeps_int32(ct_a_path):
    import nibabel as nib

    values = np.asarray(nib.load(ct_a_path).dataobj)  # CT A: int32 HU
    assert values.dtype == np.int32
    mapping = _plan(values)
    assert mapping.code_dtype == "<i2" and mapping.exact and not mapping.rescaled
    codes = mapping.to_codes(values)
    assert codes.dtype == np.int16
    back = mapping.to_values(codes)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, values)


def test_wide_range_int32_is_shifted_exactly():
    rng = np.random.default_rng(0)
    values = rng.integers(-40000, 20001, size=(50, 60), dtype=np.int32)
    values[0, 0], values[0, 1] = -40000, 20000  # span 60000: fits 16 bits after a shift
    mapping = _plan(values)
    assert mapping.code_dtype == "<u2" and mapping.offset == -40000.0 and mapping.scale == 1.0
    assert mapping.exact and mapping.max_rounding_error == 0.0
    codes = mapping.to_codes(values)
    assert codes.dtype == np.uint16 and codes.min() == 0 and codes.max() == 60000
    back = mapping.to_values(codes)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, values)


def test_integers_wider_than_16_bits_are_rescaled_within_the_stated_error():
    values = np.arange(0, 200001, dtype=np.int32)
    mapping = _plan(values)
    assert mapping.rescaled and not mapping.exact
    back = mapping.to_values(mapping.to_codes(values))
    assert back.dtype == np.int32
    error = np.abs(back.astype(np.int64) - values).max()
    assert error <= mapping.max_rounding_error
    # every value 0..200000 is present, so the worst case is met: the bound is tight
    assert error == mapping.max_rounding_error


def _float_mr(mr_array: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(4)
    return (mr_array * np.float32(0.731) + rng.random(mr_array.shape, dtype=np.float32)
            - np.float32(3.3)).astype(np.float32)


def test_float_mr_is_rescaled_within_max_rounding_error(mr_array):
    values = _float_mr(mr_array)
    mapping = _plan(values)
    assert mapping.rescaled and not mapping.exact and mapping.code_dtype == "<u2"
    codes = mapping.to_codes(values)
    assert codes.min() == 0 and codes.max() == 65535  # the whole code range is used
    back = mapping.to_values(codes)
    assert back.dtype == np.float32
    error = np.abs(back.astype(np.float64) - values.astype(np.float64)).max()
    # The mapping's own bound, plus half a float32 step at the largest magnitude: the values
    # come back as float32, which cannot hold the exact reconstruction.
    float32_step = float(np.spacing(np.abs(values).max()))
    assert error <= mapping.max_rounding_error + float32_step / 2
    assert mapping.max_rounding_error == pytest.approx(
        0.5 * (float(values.max()) - float(values.min())) / 65535)


def test_float64_is_rescaled_within_max_rounding_error():
    rng = np.random.default_rng(5)
    values = rng.normal(100.0, 40.0, size=(64, 64))
    mapping = _plan(values)
    back = mapping.to_values(mapping.to_codes(values))
    assert back.dtype == np.float64
    assert np.abs(back - values).max() <= mapping.max_rounding_error * (1 + 1e-9)


def test_to_values_of_codes_round_trips_to_the_same_codes(mr_array):
    values = _float_mr(mr_array)
    mapping = _plan(values)
    codes = mapping.to_codes(values)
    np.testing.assert_array_equal(mapping.to_codes(mapping.to_values(codes)), codes)


def test_integral_floats_are_exact(ct_b_crop_array):
    values = ct_b_crop_array.astype(np.float32)  # CT saved as float: whole numbers only
    mapping = _plan(values)
    assert mapping.exact and not mapping.rescaled and mapping.code_dtype == "<i2"
    back = mapping.to_values(mapping.to_codes(values))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, values)


def test_non_integral_floats_in_int16_range_are_not_truncated():
    values = np.array([0.25, 1.5, 2.75, 100.1], dtype=np.float32)
    mapping = _plan(values)
    assert mapping.rescaled
    back = mapping.to_values(mapping.to_codes(values))
    assert np.abs(back - values).max() <= mapping.max_rounding_error + 1e-5


def test_constant_float_volume_does_not_divide_by_zero():
    values = np.full((40, 40), 3.7, dtype=np.float64)
    mapping = _plan(values)
    assert np.isfinite(mapping.scale) and mapping.scale > 0
    np.testing.assert_allclose(mapping.to_values(mapping.to_codes(values)), values)


def test_bool_volume_is_exact():
    values = np.array([[True, False], [False, True]])
    mapping = plan_mapping(0.0, 1.0, values.dtype, True)
    assert mapping.exact
    np.testing.assert_array_equal(mapping.to_values(mapping.to_codes(values)), values)


def test_to_dict_reports_exactness_and_error():
    mapping = CodeMapping("<f4", "<u2", offset=-2.0, scale=100.0)
    document = mapping.to_dict()
    assert document["exact"] is False
    assert document["max_rounding_error"] == pytest.approx(0.005)
    assert CodeMapping(**{k: document[k] for k in
                          ("original_dtype", "code_dtype", "offset", "scale")}) == mapping
