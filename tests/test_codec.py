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


# --- every codec through the same interface -------------------------------------------------

ALL_CODECS = ["jpeg2k", "htj2k", "jpegxl", "jpegls", "sperr", "sz3", "zfp"]


def test_every_codec_is_registered():
    assert set(ALL_CODECS) <= set(codec_names())


@pytest.fixture(scope="module")
def ct_codes(ct_b_crop_array) -> dict[str, np.ndarray]:
    """One chunk of real CT codes per codec: a slice, or a 16-slice block, (u)int16."""
    slices = np.ascontiguousarray(np.moveaxis(ct_b_crop_array, 2, 0))
    chunks = {}
    for name in ALL_CODECS:
        codec = get_codec(name)
        codes = slices - slices.min() if codec.unsigned_only else slices
        codes = codes.astype(np.uint16 if codec.unsigned_only else np.int16)
        chunks[name] = codes[:codec.block_depth] if codec.block_depth > 1 else codes[12]
    return chunks


@pytest.mark.parametrize("name", ALL_CODECS)
def test_lossy_round_trip_keeps_shape_dtype_and_the_anatomy(name, ct_codes):
    codec, codes = get_codec(name), ct_codes[name]
    setting = Setting("quality", codec.quality_for_psnr(50.0, 4096.0)) \
        if "psnr" in codec.modes else Setting("max_error", 8.0)
    stream = codec.encode(codes, setting)
    decoded = codec.decode(stream, shape=codes.shape, dtype=codes.dtype)
    assert decoded.shape == codes.shape and decoded.dtype == codes.dtype
    assert codes.nbytes / len(stream) > 2  # it compresses
    assert 35 < psnr(codes, decoded, 4096.0) < 90  # lossy, and still the image
    bound = codec.error_bound(setting)
    if bound is not None:
        assert np.abs(decoded.astype(int) - codes).max() <= bound


@pytest.mark.parametrize("name", [n for n in ALL_CODECS if "lossless" in get_codec(n).modes])
def test_lossless_round_trip_of_every_codec_that_has_one(name, ct_codes):
    codec, codes = get_codec(name), ct_codes[name]
    decoded = codec.decode(codec.encode(codes, Setting("lossless")), shape=codes.shape,
                           dtype=codes.dtype)
    np.testing.assert_array_equal(decoded, codes)


@pytest.mark.parametrize("name", [n for n in ALL_CODECS if "max_error" in get_codec(n).modes])
@pytest.mark.parametrize("bound", [1, 4, 16])
def test_max_error_setting_holds_its_bound_and_uses_it(name, bound, ct_codes):
    codec, codes = get_codec(name), ct_codes[name]
    stream = codec.encode(codes, Setting("max_error", float(bound)))
    decoded = codec.decode(stream, shape=codes.shape, dtype=codes.dtype)
    error = np.abs(decoded.astype(int) - codes)
    assert error.max() <= bound
    # lossy: the bound is used, not lossless in disguise (ZFP rounds its tolerance down to a
    # power of two and stays well inside it: at 1 code it is exact after rounding)
    assert error.max() > 0 or (name == "zfp" and bound == 1)


@pytest.mark.parametrize("name", ["sperr", "sz3", "zfp"])
def test_block_codecs_are_3d_and_refuse_slices(name, ct_codes):
    codec = get_codec(name)
    assert codec.block_depth == 16 and ct_codes[name].shape[0] == 16
    with pytest.raises(ValueError, match="3D blocks"):
        codec.encode(ct_codes[name][0], Setting("max_error", 4.0))


def test_unsigned_codecs_refuse_signed_codes(ct_codes):
    with pytest.raises(ValueError, match="uint16"):
        get_codec("jpegls").encode(ct_codes["jpeg2k"], Setting("max_error", 2.0))


def test_a_missing_library_names_what_installs_it(monkeypatch):
    from medlossy.codecs import CodecError, sperr

    monkeypatch.setattr(sperr.SperrCodec, "available", False)
    with pytest.raises(CodecError, match="not installed: it needs imagecodecs built with SPERR"):
        get_codec("sperr")


def test_htj2k_raises_an_error_openjph_only_printed(monkeypatch, ct_codes):
    """OpenJPH once reported a failure as "Exception ignored" and returned garbage."""
    import sys

    import imagecodecs

    from medlossy.codecs import htj2k

    real = imagecodecs.htj2k_encode

    class Failing:
        def __del__(self):
            raise RuntimeError("codestream error")  # Python prints it: "Exception ignored"

    def printing_encoder(image, **options):
        Failing()
        return real(image, **options)

    monkeypatch.setattr(htj2k.imagecodecs, "htj2k_encode", printing_encoder)
    hook = sys.unraisablehook
    with pytest.raises(RuntimeError, match=r"OpenJPH reported an error.*codestream error"):
        get_codec("htj2k").encode(ct_codes["htj2k"], Setting("quality", 60.0))
    assert sys.unraisablehook is hook  # the process-wide hook is put back


def test_stock_zarr_block_codec_decodes_what_medlossy_wrote(ct_codes):
    from numcodecs import get_codec as numcodecs_codec

    codec, codes = get_codec("sz3"), ct_codes["sz3"]
    stream = codec.encode(codes, Setting("max_error", 3.0))
    config = codec.store_codec(codes.shape, codes.dtype.str).get_config()
    assert config == {"id": "medlossy.block", "codec": "sz3", "shape": [16, 96, 80],
                      "dtype": "<i2"}
    stock = numcodecs_codec(config)
    np.testing.assert_array_equal(stock.decode(stream),
                                  codec.decode(stream, shape=codes.shape, dtype=codes.dtype))
