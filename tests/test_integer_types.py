"""Integer sources compressed hard: every reader returns the same values, clipped to the
source type's range (a lossy decoder overshoots 0 background and bright fat), and the
errors that compress reports are those of what the user gets."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import open_with_stock_zarr

from medlossy.codecs import get_codec
from medlossy.compression import Target, compress_volume
from medlossy.decompression import decompress_to_file, read_store
from medlossy.errors import MedlossyError
from medlossy.loading import StoreVolume
from medlossy.volume import Volume

SHAPE = (128, 128, 16)  # rows, columns, axial slices: x50 leaves each about 600 bytes


def _t1_head() -> np.ndarray:
    """A uint8 T1-like head: 0 background, bright scalp fat at 254, skull, CSF, brain."""
    rng = np.random.default_rng(20)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    radius = np.sqrt(i**2 + (j / 0.9) ** 2 + (k / 1.6) ** 2)
    values = np.select([radius < 0.75, radius < 0.80, radius < 0.85, radius < 0.92],
                       [110 + 40 * (np.sin(9 * i) * np.cos(7 * j) > 0), 60, 30, 254], 0)
    values = values + rng.normal(0, 6, SHAPE) * (radius < 0.92)
    return np.clip(np.rint(values), 0, 254).astype(np.uint8)


def _of_type(dtype: type, low: float, high: float) -> np.ndarray:
    """The head spread over [low, high] of ``dtype``: background at ``low``, fat at
    ``high``."""
    head = _t1_head().astype(np.float64) / 254.0
    return np.rint(low + head * (high - low)).astype(dtype)


_INT32 = np.iinfo(np.int32)
#: (dtype, low, high, ratio): each type's extremes, at a high ratio that JPEG 2000 reaches
#: on data spanning it (its coarsest setting stops near x13 on a full 16-bit span); int32's
#: top 2 million values are rescaled (a power-of-two step) onto 16-bit codes.
CASES = [(np.uint8, 0, 254, 50.0), (np.int8, -128, 127, 50.0),
         (np.uint16, 0, 4095, 50.0), (np.uint16, 0, 65535, 10.0),
         (np.int16, -32768, 32767, 10.0), (np.int32, _INT32.max - 2e6, _INT32.max, 10.0)]
#: HTJ2K's decoder wraps past the top of a full 16-bit range (lossy HTJ2K is refused there,
#: tested below), so it is checked where codes have headroom.
HTJ2K_CASES = CASES[:3]


def _params(codec: str, cases: list, clamps: bool) -> list:
    return [pytest.param(*case, codec, clamps,
                         id=f"{codec}-{np.dtype(case[0]).name}-{case[2]:g}") for case in cases]


@pytest.mark.parametrize(("dtype", "low", "high", "ratio", "codec", "clamps"),
                         _params("jpeg2k", CASES, True) + _params("htj2k", HTJ2K_CASES, False))
def test_every_reader_gets_the_same_clipped_values(dtype, low, high, ratio, codec, clamps,
                                                   tmp_path):
    source = _of_type(dtype, low, high)
    store = tmp_path / "s.zarr"
    attributes = compress_volume(Volume(source, np.eye(4), modality="MR"), store,
                                 Target("ratio", ratio), codec_name=codec, workers=1)
    ours = read_store(store, workers=1).array
    assert ours.dtype == dtype
    # stock zarr (imagecodecs' numcodecs) returns what medlossy decodes; from a codec whose
    # decoder does not clamp (HTJ2K), 8-bit sources are 16-bit codes that it returns unclipped
    stock = np.moveaxis(open_with_stock_zarr(store)[:], 0, 2)
    if not clamps:
        stock = np.clip(stock, np.iinfo(dtype).min, np.iinfo(dtype).max)
    np.testing.assert_array_equal(stock, ours)
    # so do the decompressed NIfTI and the patch loader
    decompress_to_file(store, tmp_path / "d.nii.gz", workers=1)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "d.nii.gz").dataobj), ours)
    patches = StoreVolume(store).read((0, 0, 0), (SHAPE[2], *SHAPE[:2]))
    np.testing.assert_array_equal(patches, np.moveaxis(ours, 2, 0).astype(np.float32))
    # the errors reported are those of the values decoded, which nothing wrapped (wrapped
    # background cost uint8 at x50 14 dB: 5 dB instead of 19)
    error = np.abs(ours.astype(np.float64) - source)
    achieved = attributes["achieved"]
    assert achieved["psnr_db"] > 15.0
    assert achieved["max_abs_error"] == pytest.approx(error.max(), rel=1e-6)
    psnr = 10 * np.log10(achieved["data_range"] ** 2 / np.mean(error**2))
    assert achieved["psnr_db"] == pytest.approx(psnr, abs=1e-4)
    assert get_codec(codec).clamps == clamps


def _block(dtype: type, background: int, top: int) -> np.ndarray:
    """A bright block at ``top`` (its type's maximum) on ``background``, a band mid-way."""
    volume = np.full(SHAPE, background, dtype)
    volume[40:90, 40:90] = top
    volume[20:30] = (background + top) // 2
    return volume


@pytest.mark.parametrize("ratio", [10.0, 30.0, 50.0])
@pytest.mark.parametrize(("dtype", "background"), [(np.uint16, 0), (np.int16, -1000)],
                         ids=["uint16", "int16"])
def test_htj2k_never_wraps_the_top_of_16_bits(dtype, background, ratio, tmp_path):
    """OpenJPH wraps what overshoots 65535 (int16: 32767) to the bottom: 96 voxels of a
    uint16 block at 65535 came back 0 at x30 (rc 0), x10 was blamed on a bad codestream.
    Lossy HTJ2K there is refused with jpeg2k suggested, or returns unwrapped values."""
    top = int(np.iinfo(dtype).max)
    source = _block(dtype, background, top)
    store = tmp_path / "s.zarr"
    try:
        attributes = compress_volume(Volume(source, np.eye(4), modality="MR"), store,
                                     Target("ratio", ratio), codec_name="htj2k", workers=1,
                                     source="edge.nii.gz")
    except MedlossyError as error:
        assert str(error).startswith("edge.nii.gz: lossy htj2k cannot code values")
        assert str(error).endswith("use --codec jpeg2k")
        assert not store.exists()
        return
    ours = read_store(store, workers=1).array.astype(np.float64)
    error = np.abs(ours - source)
    assert attributes["achieved"]["max_abs_error"] == pytest.approx(error.max(), rel=1e-6)
    assert error.max() < (top - background) / 4


def test_htj2k_lossless_keeps_the_top_of_16_bits(tmp_path):
    """Lossless cannot overshoot: HTJ2K still stores a block at 65535 bit-exactly."""
    source = _block(np.uint16, 0, 65535)
    compress_volume(Volume(source, np.eye(4), modality="MR"), tmp_path / "s.zarr",
                    Target("lossless"), codec_name="htj2k", workers=1)
    np.testing.assert_array_equal(read_store(tmp_path / "s.zarr", workers=1).array, source)


def test_htj2k_float_codes_keep_headroom(tmp_path):
    """Float MR rescaled onto all of 0..65535 wrapped its brightest voxels under lossy HTJ2K
    (x10: 'bad codestream', error 65535 codes); its codes now stop a quarter below the top."""
    source = _block(np.uint16, 0, 9000).astype(np.float32) + np.float32(0.25)
    store = tmp_path / "s.zarr"
    attributes = compress_volume(Volume(source, np.eye(4), modality="MR"), store,
                                 Target("ratio", 10.0), codec_name="htj2k", workers=1)
    ours = read_store(store, workers=1).array.astype(np.float64)
    error = np.abs(ours - source)
    assert attributes["achieved"]["max_abs_error"] == pytest.approx(error.max(), rel=1e-5)
    assert error.max() < 9000 / 4
