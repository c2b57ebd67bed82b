"""The store read by other software: stock zarr, Pillow and OpenJPEG's opj_decompress."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import imagecodecs
import numpy as np
import pytest
from conftest import open_with_stock_zarr
from PIL import Image

from medlossy.codecs import get_codec
from medlossy.compression import Target, compress_volume
from medlossy.decompression import read_store
from medlossy.store import SliceStore
from medlossy.volume import Volume

_open = open_with_stock_zarr


@pytest.fixture(scope="module")
def ct_store(ct_b_crop_image, ct_b_crop_array, tmp_path_factory):
    """The 96 x 80 x 24 CT crop at x10: int16 codes, no filter."""
    path = tmp_path_factory.mktemp("interop") / "ct.zarr"
    volume = Volume(ct_b_crop_array, ct_b_crop_image.affine, modality="CT")
    compress_volume(volume, path, Target("ratio", 10.0), workers=1)
    return path


@pytest.fixture(scope="module")
def float_mr(mr_array) -> np.ndarray:
    rng = np.random.default_rng(11)
    return (mr_array * np.float32(0.613) + rng.random(mr_array.shape, dtype=np.float32)
            ).astype(np.float32)


@pytest.fixture(scope="module")
def float_mr_store(float_mr, mr_path, tmp_path_factory):
    import nibabel as nib

    path = tmp_path_factory.mktemp("interop") / "mr_float.zarr"
    volume = Volume(float_mr, nib.load(mr_path).affine, modality="MR")
    attributes = compress_volume(volume, path, Target("ratio", 6.0), workers=1)
    return path, attributes


@pytest.fixture(scope="module")
def uint16_lossless_store(ct_b_crop_array, ct_b_crop_image, tmp_path_factory):
    """Unsigned data beyond the int16 range, stored losslessly as unsigned codes."""
    values = ((ct_b_crop_array.astype(np.int32) + 1024) * 12).astype(np.uint16)
    assert values.max() > 32767
    path = tmp_path_factory.mktemp("interop") / "u16.zarr"
    volume = Volume(values, ct_b_crop_image.affine)
    attributes = compress_volume(volume, path, Target("lossless"), workers=1)
    assert attributes["intensity"]["code_dtype"] == "<u2"
    return path, values


def test_stock_zarr_reads_the_same_slices_as_medlossy(ct_store, ct_b_crop_array):
    array = _open(ct_store)
    assert array.shape == (24, 96, 80)  # (slices, rows, columns)
    assert array.chunks == (1, 96, 80)
    assert array.dtype == np.int16
    ours = np.moveaxis(read_store(ct_store, workers=1).array, 2, 0)
    np.testing.assert_array_equal(array[:], ours)
    store, codec = SliceStore(ct_store), get_codec("jpeg2k")
    for index in (0, 5, 23):
        np.testing.assert_array_equal(array[index], store.decode_codes(index, codec))
    # and they are the CT, not just self-consistent: x10 keeps the anatomy close
    assert np.abs(array[5].astype(np.int32) - ct_b_crop_array[:, :, 5]).mean() < 40


def test_stock_zarr_reads_a_lossless_store_exactly(uint16_lossless_store):
    path, values = uint16_lossless_store
    array = _open(path)
    assert array.dtype == np.uint16
    np.testing.assert_array_equal(array[:], np.moveaxis(values, 2, 0))


def test_stock_zarr_returns_floats_for_a_rescaled_mr(float_mr_store, float_mr):
    path, attributes = float_mr_store
    array = _open(path)
    assert array.dtype == np.float32 and array.shape == (20, 117, 91)
    zarray = json.loads((path / "0" / ".zarray").read_bytes())
    (scale_offset,) = zarray["filters"]
    assert scale_offset["id"] == "fixedscaleoffset"
    assert scale_offset["scale"] == attributes["intensity"]["scale"]
    assert scale_offset["offset"] == attributes["intensity"]["offset"]
    values = array[:]
    original = np.moveaxis(float_mr, 2, 0)
    error = np.abs(values.astype(np.float64) - original).max()
    assert error == pytest.approx(attributes["achieved"]["max_abs_error"], rel=1e-4)
    assert np.abs(values - original).mean() < 0.02 * (float_mr.max() - float_mr.min())
    ours = np.moveaxis(read_store(path, workers=1).array, 2, 0)
    np.testing.assert_allclose(values, ours, rtol=1e-6, atol=1e-4)


def test_pillow_decodes_a_chunk_file_to_the_original_pixels(uint16_lossless_store):
    path, values = uint16_lossless_store
    image = Image.open(io.BytesIO((path / "0" / "5.0.0").read_bytes()))
    pixels = np.array(image)
    assert pixels.shape == (96, 80)
    np.testing.assert_array_equal(pixels, values[:, :, 5])


def test_pillow_agrees_with_medlossy_on_a_lossy_chunk(float_mr_store):
    path, _ = float_mr_store
    data = (path / "0" / "7.0.0").read_bytes()
    pixels = np.array(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(pixels, imagecodecs.jpeg2k_decode(data))
    store = SliceStore(path)
    np.testing.assert_array_equal(pixels, store.decode_codes(7, get_codec("jpeg2k")))


@pytest.mark.skipif(shutil.which("opj_decompress") is None,
                    reason="opj_decompress (Debian libopenjp2-tools) is not installed")
def test_opj_decompress_reads_a_signed_chunk(ct_store, tmp_path):
    chunk = tmp_path / "slice5.j2k"
    chunk.write_bytes((ct_store / "0" / "5.0.0").read_bytes())
    output = tmp_path / "slice5.rawl"  # raw little-endian samples
    subprocess.run(["opj_decompress", "-i", str(chunk), "-o", str(output)], check=True,
                   capture_output=True)
    pixels = np.fromfile(output, dtype="<i2")
    assert pixels.size == 96 * 80
    np.testing.assert_array_equal(pixels.reshape(96, 80), _open(ct_store)[5])


def test_the_store_is_an_ome_zarr_image_with_the_volume_geometry(ct_store, ct_b_crop_image):
    """ome-zarr-py finds the image node, level 0 and millimetre axes with spacing and origin."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    location = parse_url(str(ct_store))
    assert location is not None and location.version == "0.4"
    (node,) = [n for n in Reader(location)() if n.specs and isinstance(n.specs[0], Multiscales)]
    level0 = np.asarray(node.data[0])
    np.testing.assert_array_equal(level0, _open(ct_store)[:])
    (entry,) = node.metadata["coordinateTransformations"]
    scale, translation = entry
    # the CT crop is 1.5 mm isotropic; axial axis (source k) first
    np.testing.assert_allclose(scale["scale"], np.abs(np.diag(ct_b_crop_image.affine))[[2, 0, 1]],
                               rtol=1e-6)
    origin, columns = ct_b_crop_image.affine[:3, 3], ct_b_crop_image.affine[:3, :3]
    expected = [origin @ (columns[:, k] / np.linalg.norm(columns[:, k])) for k in (2, 0, 1)]
    np.testing.assert_allclose(translation["translation"], expected, atol=1e-5)
    assert [axis["unit"] for axis in node.metadata["axes"]] == ["millimeter"] * 3
    assert [axis["name"] for axis in node.metadata["axes"]] == ["z", "y", "x"]


def test_ngff_coordinates_follow_an_oblique_affine_along_the_voxel_axes():
    """NGFF has no rotation: scale/translation are exact along the (rotated) voxel axes."""
    from medlossy.store.ngff import scale_and_translation

    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.8, 2.5])
    affine[:3, 3] = [-100.0, 40.0, 12.0]
    scale, translation = scale_and_translation(affine, axial_axis=2)
    np.testing.assert_allclose(scale, [2.5, 0.7, 0.8])
    index = np.array([3, 5, 7])  # source (i, j, k)
    world = affine[:3, :3] @ index + affine[:3, 3]
    for store_axis, source_axis in enumerate((2, 0, 1)):
        direction = rotation[:, source_axis]
        assert world @ direction == pytest.approx(
            translation[store_axis] + scale[store_axis] * index[source_axis])


def test_a_version_1_store_still_opens_and_decodes(tmp_path):
    """A store written by medlossy before OME-Zarr (array at the root) reads as before."""
    import pathlib

    data = pathlib.Path(__file__).parent / "data"
    store = SliceStore(data / "store_v1.zarr")
    assert store.format_version == 1 and store.array_path == store.path
    assert store.verify() == []
    source = np.load(data / "store_v1_source.npy")
    np.testing.assert_array_equal(read_store(data / "store_v1.zarr", workers=1).array, source)


def test_a_new_store_declares_version_3_and_its_array_at_level_0(ct_store):
    store = SliceStore(ct_store)
    assert store.format_version == 3 and store.array_path == ct_store / "0"
    assert json.loads((ct_store / ".zgroup").read_bytes()) == {"zarr_format": 2}
    assert not (ct_store / ".zarray").exists()


@pytest.fixture(scope="module")
def wide_int_store(ct_b_crop_array, ct_b_crop_image, tmp_path_factory):
    """int32 values spanning 0..100000 at x8: rescaled onto 16-bit codes."""
    values = np.clip((ct_b_crop_array.astype(np.int64) + 1024) * 20, 0, 100000).astype(np.int32)
    values.flat[-1] = 100000
    path = tmp_path_factory.mktemp("interop") / "wide.zarr"
    attributes = compress_volume(Volume(values, ct_b_crop_image.affine), path,
                                 Target("ratio", 8.0), workers=1)
    assert attributes["intensity"]["exact"] is False
    return path


@pytest.mark.parametrize("name", ["wide_int_store", "float_mr_store"])
def test_stock_zarr_reads_exactly_what_medlossy_decompresses(request, name, tmp_path):
    """Regression (issue 12): zarr's FixedScaleOffset truncated to the integer dtype where
    medlossy rounds, one off on about half the voxels of a rescaled integer store."""
    import nibabel as nib

    from medlossy.decompression import decompress_to_file

    store = request.getfixturevalue(name)
    store = store[0] if isinstance(store, tuple) else store
    decompress_to_file(store, tmp_path / "back.nii.gz", workers=1)
    decompressed = np.asarray(nib.load(tmp_path / "back.nii.gz").dataobj)
    stock = _open(store)[:]
    assert stock.dtype == decompressed.dtype
    np.testing.assert_array_equal(stock, np.moveaxis(decompressed, 2, 0))


@pytest.fixture(scope="module")
def codec_store(ct_b_crop_image, ct_b_crop_array, tmp_path_factory):
    """The CT crop at x8 with a given codec (slice or 3D block codec)."""
    made = {}

    def make(name: str):
        if name not in made:
            path = tmp_path_factory.mktemp("interop") / f"{name}.zarr"
            volume = Volume(ct_b_crop_array, ct_b_crop_image.affine, modality="CT")
            compress_volume(volume, path, Target("ratio", 8.0), codec_name=name, workers=1)
            made[name] = path
        return made[name]

    return make


@pytest.mark.parametrize("name", ["htj2k", "jpegxl", "jpegls", "sperr", "sz3", "zfp"])
def test_stock_zarr_reads_every_codec_as_medlossy_does(codec_store, name):
    """Stock zarr with imagecodecs' codecs (slices) or medlossy's ``medlossy.block`` (3D)."""
    import medlossy.codecs  # noqa: F401  (registers medlossy.block with numcodecs)

    path = codec_store(name)
    array = _open(path)
    assert array.shape == (24, 96, 80) and array.dtype == np.int16
    assert array.chunks[0] == (16 if name in ("sperr", "sz3", "zfp") else 1)
    ours = np.moveaxis(read_store(path, workers=1).array, 2, 0)
    np.testing.assert_array_equal(array[:], ours)
    np.testing.assert_array_equal(array[17:20, 5:9], ours[17:20, 5:9])  # inside the last block


def test_a_block_store_names_a_corrupt_block(codec_store, tmp_path, cli):
    path = tmp_path / "sz3.zarr"
    shutil.copytree(codec_store("sz3"), path)
    chunk = path / "0" / "1.0.0"
    chunk.write_bytes(chunk.read_bytes()[:-7] + b"garbage")
    code, _, err = cli("verify", path)
    assert code == 1 and "block 1 (slices 16-23)" in err
    with pytest.raises(Exception, match=r"block 1 \(slices 16-23\) is corrupt"):
        read_store(path, workers=1)


def test_stock_zarr_reads_a_rescaled_float_block_store_as_medlossy(float_mr, mr_path, tmp_path):
    """3D blocks behind zarr's FixedScaleOffset filter (float MR mapped to uint16 codes)."""
    import nibabel as nib

    path = tmp_path / "mr_sz3.zarr"
    attributes = compress_volume(Volume(float_mr, nib.load(mr_path).affine, modality="MR"),
                                 path, Target("ratio", 6.0), codec_name="sz3", workers=1)
    assert attributes["intensity"]["code_dtype"] == "<u2" and not attributes["intensity"][
        "exact"]
    array = _open(path)
    assert array.dtype == np.float32 and array.chunks[0] == 16
    ours = np.moveaxis(read_store(path, workers=1).array,
                       attributes["geometry"]["axial_axis"], 0)
    np.testing.assert_array_equal(array[:], ours)
