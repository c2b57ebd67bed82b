"""JPEG 2000 windows: a patch decodes only its y/x window of each untiled slice (OpenJPEG's
decode area), with exactly the codes of the whole slice's decode there."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from medlossy.codecs import get_codec
from medlossy.codecs.base import Setting
from medlossy.compression import Target, compress_volume
from medlossy.decompression import read_store
from medlossy.loading import StorePatchDataset, StoreVolume, decoders
from medlossy.volume import Volume

pytestmark = pytest.mark.skipif(not decoders.glymur_available(),
                                reason="glymur / libopenjp2 not installed")

#: (rows, columns) windows of a 233 x 167 slice: corners, edges, odd offsets, one pixel, all.
WINDOWS = [(0, 0, 64, 64), (169, 103, 233, 167), (0, 100, 233, 167), (37, 51, 198, 112),
           (1, 1, 2, 2), (232, 0, 233, 167), (0, 166, 233, 167), (13, 77, 173, 160),
           (0, 0, 233, 167)]


@pytest.fixture(scope="module")
def ct_slice(ct_b_array) -> np.ndarray:
    """One real 233 x 167 CT slice (HU, int16)."""
    plane = np.ascontiguousarray(ct_b_array[:, :, ct_b_array.shape[2] // 2].astype(np.int16))
    assert plane.shape == (233, 167)
    return plane


def _streams(plane: np.ndarray) -> dict[str, bytes]:
    codec = get_codec("jpeg2k")
    unsigned = (plane.astype(np.int32) + 1024).clip(0, 65535).astype(np.uint16)
    return {"x20 uint16": codec.encode(unsigned, Setting("ratio", 20.0)),
            "x10 int16": codec.encode(plane, Setting("ratio", 10.0)),
            "lossless uint16": codec.encode(unsigned, Setting("lossless", 0.0)),
            "lossless int16": codec.encode(plane, Setting("lossless", 0.0)),
            "x5 uint8": codec.encode((unsigned >> 4).astype(np.uint8), Setting("ratio", 5.0))}


def test_a_window_decode_is_the_full_decode_cropped(ct_slice):
    for name, stream in _streams(ct_slice).items():
        full = imagecodecs.jpeg2k_decode(stream)  # what the loader decoded before
        for top, left, bottom, right in WINDOWS:
            window = (slice(top, bottom), slice(left, right))
            codes = decoders._openjpeg_decode(stream, 0, window)
            assert codes.dtype == full.dtype, name
            np.testing.assert_array_equal(codes, full[window], err_msg=f"{name} {window}")


def test_a_window_at_a_reduced_level_is_that_level_cropped(ct_slice):
    for name, stream in _streams(ct_slice).items():
        for level in (1, 2):
            reduced = decoders._openjpeg_decode(stream, level, None)
            assert reduced.shape == (-(-233 // 2**level), -(-167 // 2**level))
            rows, columns = reduced.shape
            for window in [(slice(0, 20), slice(0, 20)), (slice(rows - 7, rows),
                           slice(columns - 11, columns)), (slice(5, 24), slice(3, 30))]:
                np.testing.assert_array_equal(
                    decoders.decode_slice(get_codec("jpeg2k"), stream, level, window=window),
                    reduced[window], err_msg=f"{name} level {level} {window}")


@pytest.fixture(scope="module")
def untiled_store(ct_b_crop_image, ct_b_crop_array, tmp_path_factory):
    """The 96 x 80 x 24 real CT crop at x10, untiled JPEG 2000, and its decoded slices."""
    path = tmp_path_factory.mktemp("window") / "ct_0000.zarr"
    volume = Volume(ct_b_crop_array, ct_b_crop_image.affine, modality="CT")
    compress_volume(volume, path, Target("ratio", 10.0), workers=1)
    return path, np.moveaxis(read_store(path, workers=1).array, 2, 0)


def test_a_patch_decodes_only_its_window_of_each_slice(untiled_store, monkeypatch):
    path, decoded = untiled_store
    asked = []

    def spy(codec, data, level, window):
        asked.append(window)
        return decoders._jpeg2k_window(codec, data, level, window)

    monkeypatch.setitem(decoders.WINDOW_DECODERS, "jpeg2k", spy)
    volume = StoreVolume(path)
    values = volume.read((3, 10, 7), (4, 40, 33))
    assert asked == [(slice(10, 50), slice(7, 40))] * 4  # one window per slice, no full decode
    np.testing.assert_array_equal(values, decoded[3:7, 10:50, 7:40])
    asked.clear()
    whole = volume.read((0, 0, 0), (2, *volume.shape[1:]))  # the whole slice: full decoder
    assert asked == []
    np.testing.assert_array_equal(whole, decoded[:2])


def test_without_libopenjp2_patches_are_the_same_and_a_note_says_so_once(
        untiled_store, monkeypatch, capsys):
    path, decoded = untiled_store
    monkeypatch.setattr(decoders, "WINDOW_DECODERS", {})
    monkeypatch.setattr(decoders, "REDUCED_DECODERS", {"htj2k": decoders._htj2k_reduced})
    decoders.note_whole_slices.cache_clear()
    dataset = StorePatchDataset(path, (4, 32, 24), samples=3, seed=2)
    StoreVolume(path)
    for index in range(3):
        z, y, x = dataset[index]["start"]
        np.testing.assert_array_equal(dataset[index]["image"][0].numpy(),
                                      decoded[z:z + 4, y:y + 32, x:x + 24])
    notes = [line for line in capsys.readouterr().err.splitlines() if "whole slices" in line]
    assert len(notes) == 1 and notes[0].startswith("medlossy: note: ")
    decoders.note_whole_slices.cache_clear()


def test_a_decode_leaves_no_named_file_a_killed_worker_could_leave_behind(
        ct_slice, tmp_path, monkeypatch):
    import glymur.lib.openjp2 as opj2

    monkeypatch.setattr(decoders, "_SHM", tmp_path)  # where the codestream is written
    during = []
    decode = opj2.decode

    def listing_decode(*arguments):
        during.append(sorted(p.name for p in tmp_path.iterdir()))
        return decode(*arguments)

    monkeypatch.setattr(opj2, "decode", listing_decode)
    stream = _streams(ct_slice)["x20 uint16"]
    window = (slice(5, 70), slice(9, 41))
    np.testing.assert_array_equal(decoders._openjpeg_decode(stream, 0, window),
                                  imagecodecs.jpeg2k_decode(stream)[window])
    assert during == [[]]  # the file in use has no name (a SIGKILL now would leave nothing)
    assert list(tmp_path.iterdir()) == []
