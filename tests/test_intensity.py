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


def test_small_uint16_uses_unsigned_codes_and_comes_back_unsigned():
    # unsigned codes: a lossy decoder clamps at 0, as the type does (signed ones went below)
    values = np.array([0, 12, 32767], dtype=np.uint16)
    mapping = _plan(values)
    assert mapping.code_dtype == "<u2" and mapping.original_dtype == "<u2"
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


@pytest.mark.parametrize(("dtype", "unsigned", "code_dtype", "offset"), [
    (np.uint8, False, "|u1", 0.0), (np.uint8, True, "|u1", 0.0),
    (np.int8, False, "|i1", 0.0), (np.int8, True, "|u1", -128.0),
    (np.uint16, False, "<u2", 0.0), (np.int16, False, "<i2", 0.0)])
def test_small_integer_types_are_coded_in_a_type_of_their_own_range(dtype, unsigned,
                                                                    code_dtype, offset):
    # A decoder clamps to its codestream's range: codes of the source's range make every
    # reader, stock zarr included, return values the source type holds.
    info = np.iinfo(dtype)
    values = np.array([info.min, 0, info.max], dtype=dtype)
    mapping = plan_mapping(float(info.min), float(info.max), np.dtype(dtype), True,
                           unsigned=unsigned)
    assert (mapping.code_dtype, mapping.offset, mapping.exact) == (code_dtype, offset, True)
    np.testing.assert_array_equal(mapping.to_values(mapping.to_codes(values)), values)
    codes_range = np.iinfo(np.dtype(code_dtype))
    np.testing.assert_array_equal(
        mapping.to_values(np.array([codes_range.min, codes_range.max], dtype=code_dtype)),
        [info.min, info.max])


def test_sixteen_bit_codes_widen_8_bit_types():
    mapping = plan_mapping(0.0, 254.0, np.dtype(np.uint8), True, sixteen_bit=True)
    assert mapping.code_dtype == "<u2" and mapping.exact


@pytest.mark.parametrize(("codes", "dtype", "expected"), [
    (np.array([-7, 0, 254, 300], dtype=np.int16), np.uint8, [0, 0, 254, 255]),
    (np.array([-200, 5, 200], dtype=np.int16), np.int8, [-128, 5, 127]),
    (np.array([-3, 70], dtype=np.int16), np.uint16, [0, 70]),
    (np.array([-32768, 32767], dtype=np.int16), np.int32, [-32768, 32767])])
def test_decoded_codes_beyond_the_type_are_clipped_not_wrapped(codes, dtype, expected):
    # A lossy decoder overshoots the source's extremes (ringing at 0 and at bright fat):
    # uint8 used to turn -7 into 249 and 300 into 44.
    mapping = CodeMapping(np.dtype(dtype).str, codes.dtype.str)
    back = mapping.to_values(codes)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, expected)


def test_rescaled_codes_beyond_the_type_are_clipped_not_wrapped():
    # int32 spanning its whole range: the top code maps one step above the type's maximum
    info = np.iinfo(np.int32)
    mapping = plan_mapping(float(info.min), float(info.max), np.dtype(np.int32), True)
    back = mapping.to_values(np.array([0, 65535], dtype=np.uint16))
    assert back.dtype == np.int32 and back[0] == info.min and back[1] == info.max


def test_wide_integers_near_the_type_maximum_keep_every_code_within_the_type():
    # zarr's FixedScaleOffset casts code / scale + offset to the type without clipping: an
    # offset that maps code 65535 beyond the type would wrap what a lossy decoder returns.
    info = np.iinfo(np.int32)
    low, high = float(info.max - 2_000_000), float(info.max)
    mapping = plan_mapping(low, high, np.dtype(np.int32), True)
    assert mapping.offset <= low
    assert mapping.offset + 65535 / mapping.scale <= info.max
    values = np.array([low, high], dtype=np.int32)
    back = mapping.to_values(mapping.to_codes(values))
    assert np.abs(back.astype(np.int64) - values).max() <= mapping.max_rounding_error
