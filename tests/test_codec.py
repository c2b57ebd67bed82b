"""The JPEG 2000 slice codec: COM stripping, lossless exactness, size limits, knobs."""

from __future__ import annotations

import numpy as np
import pytest
from openjpeg.utils import encode_array

from medlossy.codecs import Setting, codec_names, get_codec
from medlossy.codecs.jpeg2k import MIN_SIDE, strip_comment
from medlossy.metrics import psnr

COM = b"\xff\x64"
SOT = b"\xff\x90"


@pytest.fixture(scope="module")
def codec():
    return get_codec("jpeg2k")


@pytest.fixture(scope="module")
def ct_slice(ct_b_crop_array) -> np.ndarray:
    return np.ascontiguousarray(ct_b_crop_array[:, :, 12])


def _main_header(stream: bytes) -> bytes:
    return stream[: stream.index(SOT)]


def test_openjpeg_writes_a_comment_that_strip_comment_removes(ct_slice):
    raw = encode_array(ct_slice, bits_stored=16)
    header = _main_header(raw)
    assert COM in header and b"Created by OpenJPEG" in header
    at = header.index(COM)
    segment = 2 + int.from_bytes(header[at + 2 : at + 4], "big")
    stripped = strip_comment(raw)
    assert COM not in _main_header(stripped)
    assert b"OpenJPEG" not in stripped
    assert len(raw) - len(stripped) == segment
    assert stripped[:2] == b"\xff\x4f"  # still starts with SOC


@pytest.mark.parametrize("ratio", [None, 12.0])
def test_stripped_stream_decodes_to_the_same_pixels(codec, ct_slice, ratio):
    options = {} if ratio is None else {"compression_ratios": [ratio]}
    raw = encode_array(ct_slice, bits_stored=16, **options)
    stripped = strip_comment(raw)
    np.testing.assert_array_equal(codec.decode(stripped), codec.decode(raw))
    if ratio is None:
        np.testing.assert_array_equal(codec.decode(stripped), ct_slice)


def test_strip_comment_is_idempotent(ct_slice):
    once = strip_comment(encode_array(ct_slice, bits_stored=16))
    assert strip_comment(once) == once


def test_codec_output_carries_no_comment(codec, ct_slice):
    for setting in (Setting("lossless"), Setting("ratio", 20.0), Setting("quality", 70.0)):
        assert COM not in _main_header(codec.encode(ct_slice, setting))


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_lossless_round_trip_is_bit_exact_over_the_full_range(codec, dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    image = rng.integers(info.min, info.max, size=(48, 70), endpoint=True, dtype=dtype)
    image[0, 0], image[0, 1] = info.min, info.max
    decoded = codec.decode(codec.encode(image, Setting("lossless")))
    assert decoded.dtype == dtype and decoded.shape == image.shape
    np.testing.assert_array_equal(decoded, image)


def test_lossless_round_trip_of_a_real_ct_slice(codec, ct_slice):
    stream = codec.encode(ct_slice, Setting("lossless"))
    assert len(stream) < ct_slice.nbytes  # real anatomy compresses
    decoded = codec.decode(stream)
    assert decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded, ct_slice)


def test_smallest_allowed_slice_round_trips(codec):
    image = np.arange(MIN_SIDE * 33, dtype=np.uint16).reshape(MIN_SIDE, 33)
    np.testing.assert_array_equal(codec.decode(codec.encode(image, Setting("lossless"))), image)


@pytest.mark.parametrize("shape", [(31, 64), (64, 31), (8, 8)])
def test_slices_smaller_than_32_pixels_raise_a_clear_error(codec, shape):
    with pytest.raises(ValueError, match=r"at least 32x32"):
        codec.encode(np.zeros(shape, dtype=np.int16), Setting("lossless"))


def test_non_2d_input_is_refused(codec):
    with pytest.raises(ValueError, match="2D"):
        codec.encode(np.zeros((40, 40, 2), dtype=np.int16), Setting("lossless"))


def test_larger_ratio_gives_smaller_streams(codec, ct_slice):
    sizes = [len(codec.encode(ct_slice, Setting("ratio", r))) for r in (4.0, 16.0, 64.0)]
    assert sizes[0] > sizes[1] > sizes[2]
    # OpenJPEG's ratio counts against the declared 16 bits, as medlossy's does
    assert ct_slice.nbytes / sizes[1] == pytest.approx(16.0, rel=0.25)


def test_higher_quality_gives_bigger_streams_and_less_error(codec, ct_slice):
    results = []
    for quality in (60.0, 75.0, 90.0):
        stream = codec.encode(ct_slice, Setting("quality", quality))
        results.append((len(stream), psnr(ct_slice, codec.decode(stream), 4096)))
    assert results[0][0] < results[1][0] < results[2][0]
    assert results[0][1] < results[1][1] < results[2][1]


def test_quality_for_psnr_aims_near_the_requested_psnr(codec, ct_slice):
    for wanted in (40.0, 50.0):
        knob = codec.quality_for_psnr(wanted, 4096.0)
        decoded = codec.decode(codec.encode(ct_slice, Setting("quality", knob)))
        assert psnr(ct_slice, decoded, 4096.0) == pytest.approx(wanted, abs=2.0)


def test_describe_names_the_wavelet(codec):
    assert codec.describe(Setting("lossless"))["wavelet"] == "5/3 reversible"
    lossy = codec.describe(Setting("quality", 50))
    assert lossy["wavelet"] == "9/7 irreversible" and lossy["bits_stored"] == 16


def test_registry():
    assert "jpeg2k" in codec_names()
    with pytest.raises(ValueError, match="unknown codec"):
        get_codec("jpeg-xl-nope")
