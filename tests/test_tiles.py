"""Tiled stores (``compress --tile``): each slice stored as tiles, one codestream per tile."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import open_with_stock_zarr, reseal

from medlossy.compression import Target, compress_volume
from medlossy.decompression import read_store
from medlossy.errors import MedlossyError
from medlossy.loading.volume import StoreVolume
from medlossy.store import SliceStore, stored_bytes
from medlossy.volume import Volume

TILE = 128
#: Three axial slices of CT B, 233 x 167: with 128 tiles both axes end in a partial tile.
SLICES = slice(80, 83)


@pytest.fixture(scope="module")
def ct_slab(ct_b_image) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(ct_b_image.dataobj[:, :, SLICES]), ct_b_image.affine


def _compress(slab, path, target: Target, **options) -> dict:
    array, affine = slab
    return compress_volume(Volume(array, affine.copy(), modality="CT"), path, target,
                           workers=1, **options)


@pytest.fixture(scope="module")
def x10_stores(ct_slab, tmp_path_factory) -> dict[str, tuple]:
    folder = tmp_path_factory.mktemp("tiles")
    return {codec: (folder / f"{codec}.zarr",
                    _compress(ct_slab, folder / f"{codec}.zarr", Target("ratio", 10.0),
                              codec_name=codec, tile=TILE))
            for codec in ("jpeg2k", "htj2k")}


@pytest.mark.parametrize("codec", ["jpeg2k", "htj2k"])
def test_a_lossless_tiled_store_decodes_to_what_the_untiled_one_does(ct_slab, tmp_path, codec):
    _compress(ct_slab, tmp_path / "tiled.zarr", Target("lossless"), codec_name=codec,
              tile=TILE)
    _compress(ct_slab, tmp_path / "whole.zarr", Target("lossless"), codec_name=codec)
    tiled = read_store(tmp_path / "tiled.zarr", workers=1).array
    np.testing.assert_array_equal(tiled, read_store(tmp_path / "whole.zarr", workers=1).array)
    np.testing.assert_array_equal(tiled, ct_slab[0])


@pytest.mark.parametrize("codec", ["jpeg2k", "htj2k"])
def test_a_tiled_store_holds_one_codestream_per_tile_and_meets_the_ratio(x10_stores, ct_slab,
                                                                          codec):
    path, attributes = x10_stores[codec]
    raw = int(np.prod((233, 167, 3))) * 2
    assert raw / stored_bytes(path) == pytest.approx(10.0, rel=0.01)
    assert attributes["achieved"]["target_reached"]
    assert attributes["tile"] == [TILE, TILE]
    keys = sorted(p.name for p in (path / "0").iterdir() if not p.name.startswith("."))
    assert keys == sorted(f"{z}.{y}.{x}" for z in range(3) for y in range(2) for x in range(2))
    assert len(attributes["chunk_crc32"]) == 12
    zarray = json.loads((path / "0" / ".zarray").read_text())
    assert zarray["chunks"] == [1, TILE, TILE]
    # lossy, but still the CT, edge tiles included
    decoded = read_store(path, workers=1).array.astype(np.float64)
    assert attributes["achieved"]["psnr_db"] > 35
    assert np.abs(decoded - ct_slab[0])[200:, 130:].mean() < 40


def _codec(name: str):
    from medlossy.codecs import get_codec

    return get_codec(name)


@pytest.mark.parametrize("codec", ["jpeg2k", "htj2k"])
def test_stock_zarr_and_ome_zarr_read_a_tiled_store_as_medlossy_does(x10_stores, codec):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    path, _ = x10_stores[codec]
    array = open_with_stock_zarr(path)
    assert array.chunks == (1, TILE, TILE)
    ours = np.moveaxis(read_store(path, workers=1).array, 2, 0)
    np.testing.assert_array_equal(array[:], ours)
    store = SliceStore(path)
    np.testing.assert_array_equal(array[2], store.decode_codes(2, _codec(codec)))
    (node,) = [n for n in Reader(parse_url(str(path)))()
               if n.specs and isinstance(n.specs[0], Multiscales)]
    np.testing.assert_array_equal(np.asarray(node.data[0]), ours)


def test_the_loader_decodes_only_the_tiles_a_box_touches(x10_stores, monkeypatch):
    path, _ = x10_stores["htj2k"]
    volume = StoreVolume(path)
    read: list[int] = []
    codestream = volume.store.codestream
    monkeypatch.setattr(volume.store, "codestream",
                        lambda index: read.append(index) or codestream(index))
    box = volume.read((1, 100, 20), (2, 60, 100))  # rows 100-159, columns 20-119
    decoded = np.moveaxis(read_store(path, workers=1).array, 2, 0)
    np.testing.assert_array_equal(box, decoded[1:3, 100:160, 20:120].astype(np.float32))
    # rows 100-159 touch tile rows 0 and 1, columns 20-119 tile column 0: 2 of 4 tiles
    assert sorted(read) == [4, 6, 8, 10]
    read.clear()
    corner = volume.read((0, 200, 150), (1, 33, 17))  # inside the bottom-right edge tile
    np.testing.assert_array_equal(corner, decoded[0:1, 200:233, 150:167].astype(np.float32))
    assert read == [3]


def test_the_loader_reads_a_tiled_store_at_a_reduced_level(x10_stores):
    path, _ = x10_stores["htj2k"]
    volume = StoreVolume(path, level=1)
    assert volume.shape == (3, 117, 84)
    whole = volume.read((0, 0, 0), volume.shape)
    decoded = np.moveaxis(read_store(path, workers=1).array, 2, 0).astype(np.float32)
    coarse = decoded[:, ::2, ::2]
    assert np.abs(whole - coarse).mean() < 0.1 * np.abs(coarse - coarse.mean()).mean()
    with pytest.raises(MedlossyError, match="resolution level 8 needs tiles divisible by 256"):
        StoreVolume(path, level=8)


def test_verify_names_a_corrupt_tile_and_damaged_tile_metadata_is_refused(x10_stores, tmp_path,
                                                                           cli):
    import shutil

    source, _ = x10_stores["jpeg2k"]
    path = tmp_path / "copy.zarr"
    shutil.copytree(source, path)
    code, out, _ = cli("verify", path)
    assert code == 0 and "3 slices in 12 tiles" in out
    chunk = path / "0" / "1.1.0"
    chunk.write_bytes(chunk.read_bytes()[:-5] + b"\0" * 5)
    code, _, err = cli("verify", path)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "1 corrupt or missing tile(s): slice 1 tile 1.0" in err
    zattrs = json.loads((path / ".zattrs").read_text())
    zattrs["medlossy"]["tile"] = [TILE, 64]
    (path / ".zattrs").write_text(json.dumps(zattrs))
    with pytest.raises(MedlossyError, match=r"tile changed since compress"):
        SliceStore(path)
    reseal(zattrs, path)  # as a tool meaning the edit would: then the tiles do not fit
    (path / ".zattrs").write_text(json.dumps(zattrs))
    with pytest.raises(MedlossyError, match=r"array chunks \[1, 128, 128\] are not tiles"):
        SliceStore(path)


@pytest.mark.parametrize(("options", "fragment"), [
    (["--codec", "jpegls", "--tile", "128"], "codec 'jpegls' cannot store tiles"),
    (["--tile", "16"], "--tile must be at least 32"),
    (["--format", "dicom", "--tile", "128"], "--tile applies only to stores"),
])
def test_compress_refuses_tiles_it_cannot_write(ct_slab, tmp_path, cli, options, fragment):
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct_slab[0], ct_slab[1]), source)
    output = tmp_path / "out.zarr"
    code, _, err = cli("compress", source, output, "--ratio", "10", *options)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert fragment in line
    assert not output.exists()


def test_a_tiled_store_decompresses_to_dicom_and_info_reports_its_tiles(x10_stores, tmp_path,
                                                                       cli):
    from medlossy.io import read_volume

    path, _ = x10_stores["jpeg2k"]
    code, out, _ = cli("info", path)
    assert code == 0 and "128 x 128 per codestream" in out
    code, _, err = cli("decompress", path, tmp_path / "series", "--format", "dicom")
    assert code == 0, err
    series = read_volume(tmp_path / "series")
    decoded = read_store(path, workers=1)
    assert sorted(series.array.shape) == sorted(decoded.array.shape)
    assert np.array_equal(np.sort(np.asarray(series.array), axis=None),
                          np.sort(decoded.array, axis=None))


def _plain_dataset(root, cases: int = 2, shape=(80, 72, 6)) -> None:
    from test_dataset_validation import save_nifti, synthetic_case

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    for seed in range(cases):
        image, labels = synthetic_case(seed, shape)
        save_nifti(root / "images" / f"c{seed}.nii.gz", image, affine)
        save_nifti(root / "labels" / f"c{seed}.nii.gz", labels, affine)


def test_a_dataset_sweep_writes_tiled_stores_and_redoes_them_untiled(tmp_path, cli,
                                                                     monkeypatch):
    # Was refused ("not available for dataset sweeps"): training from a sweep's stores could
    # not have tiles, which the loader needs for its speed (BENCHMARKS.md).
    from test_dataset_validation import run_sweeps_serially

    run_sweeps_serially(monkeypatch)
    source, out = tmp_path / "scans", tmp_path / "sweep"
    _plain_dataset(source)
    code, _, err = cli("dataset", "compress", source, "--out", out, "--ratios", "1,5",
                       "--tile", "32", "--quiet")
    assert code == 0, err
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 4 and set(manifest["tile"]) == {32}
    assert json.loads((out / "sweep.json").read_text())["tile"] == 32
    for row in manifest.itertuples():  # paths relative to the sweep folder
        store = SliceStore(out / row.store)
        assert store.attributes["tile"] == [32, 32]
        chunks = {p.name for p in (out / row.store / "0").iterdir()} - {".zarray"}
        # 6 slices of 80 x 72 (the phantom's x, y) in 3 x 3 tiles of 32
        assert chunks == {f"{z}.{y}.{x}" for z in range(6) for y in range(3) for x in range(3)}
        decoded = np.asarray(nib.load(out / row.decoded).dataobj)
        np.testing.assert_array_equal(decoded, read_store(out / row.store, workers=1).array)
        if row.ratio_target == 5:
            assert row.ratio_achieved == pytest.approx(5, rel=0.01)
        else:
            np.testing.assert_array_equal(decoded, np.asarray(nib.load(
                source / "images" / f"{row.case}.nii.gz").dataobj))
    # Found by a new user: verify read every tiled task as "does not match its checksums"
    # (it checked the parts against whole-slice stores).
    code, _, err = cli("dataset", "verify", out)
    assert code == 0, err
    # a rerun without --tile redoes every store whole-slice
    code, _, err = cli("dataset", "compress", source, "--out", out, "--ratios", "1,5",
                       "--quiet")
    assert code == 0, err
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["tile"].isna().all()
    assert all("tile" not in SliceStore(out / store).attributes for store in manifest["store"])


def test_a_dataset_sweep_refuses_tiles_a_codec_cannot_store_in_one_line(tmp_path, cli):
    source, out = tmp_path / "scans", tmp_path / "sweep"
    _plain_dataset(source, cases=1)
    code, _, err = cli("dataset", "compress", source, "--out", out, "--ratios", "5",
                       "--codec", "jpegls", "--tile", "32")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "codec 'jpegls' cannot store tiles" in line
    assert not (out / "stores").exists()


@pytest.mark.parametrize("tile", ["128", [128], [0, 128], [True, 128], [128, 300], [128.0, 128]])
def test_a_damaged_tile_attribute_is_one_metadata_error(x10_stores, tmp_path, tile):
    import shutil

    source, _ = x10_stores["htj2k"]
    path = tmp_path / "copy.zarr"
    shutil.copytree(source, path)
    zattrs = json.loads((path / ".zattrs").read_text())
    zattrs["medlossy"]["tile"] = tile
    reseal(zattrs, path)  # past the seal, to the check of the value itself
    (path / ".zattrs").write_text(json.dumps(zattrs))
    with pytest.raises(MedlossyError, match=r"corrupt store metadata \(tile is "):
        SliceStore(path)


def test_a_tiled_level_without_a_reduced_decoder_is_the_block_mean_of_the_slice(
        x10_stores, monkeypatch):
    from medlossy.loading import decoders

    monkeypatch.setattr(decoders, "REDUCED_DECODERS", {})  # every codec falls back
    path, _ = x10_stores["jpeg2k"]
    volume = StoreVolume(path, level=1)
    box = volume.read((0, 0, 0), volume.shape)
    decoded = np.moveaxis(read_store(path, workers=1).array, 2, 0)
    for index, plane in enumerate(decoded):  # CT B has no rescaling: codes are the values
        # 233 x 167: the last row and column average one voxel with the edge tile's padding
        # (decoded, so not quite the repeated edge that block_mean assumes)
        expected = decoders.block_mean(plane, 1)
        np.testing.assert_array_equal(box[index, :-1, :-1], expected[:-1, :-1])
        assert np.abs(box[index] - expected).max() < 64


@pytest.mark.parametrize("target", [Target("psnr", 50.0), Target("ratio", 10.0, "optimal")])
def test_psnr_targets_and_per_tile_allocations_count_only_the_slice_not_the_padding(
        ct_slab, tmp_path, target):
    attributes = _compress(ct_slab, tmp_path / "s.zarr", target, codec_name="jpeg2k",
                           tile=TILE)
    achieved = attributes["achieved"]
    assert achieved["target_reached"]
    decoded = read_store(tmp_path / "s.zarr", workers=1).array.astype(np.float64)
    mse = np.mean((decoded - ct_slab[0]) ** 2)
    assert 10 * np.log10(4096.0**2 / mse) == pytest.approx(achieved["psnr_db"], abs=0.01)
    if target.mode == "psnr":
        assert 50.0 - 0.1 <= achieved["psnr_db"] < 51.0


def test_a_tile_as_large_as_the_slice_writes_an_untiled_store_and_says_so(ct_slab, tmp_path,
                                                                          cli):
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct_slab[0], ct_slab[1]), source)
    code, _, err = cli("compress", source, tmp_path / "s.zarr", "--lossless", "--tile", "256",
                       "--workers", "1")
    assert code == 0, err
    assert "--tile 256 covers whole slices here: stored untiled" in err
    store = SliceStore(tmp_path / "s.zarr")
    assert "tile" not in store.attributes and not store.grid.tiled
    assert (tmp_path / "s.zarr" / "0" / "2.0.0").exists()


def test_lossless_tiles_of_data_only_blosc_holds_are_stored_whole_and_said_so(ct_slab, tmp_path,
                                                                             cli):
    # Fractional floats go to Blosc for --lossless; its slices decode whole and fast, so
    # --tile stores them untiled with a note (an explicit --codec blosc --tile is refused).
    values = ct_slab[0].astype(np.float32) * np.float32(0.37)
    source = tmp_path / "float.nii.gz"
    nib.save(nib.Nifti1Image(values, ct_slab[1]), source)
    code, _, err = cli("compress", source, tmp_path / "s.zarr", "--lossless", "--tile", "64",
                       "--workers", "1", "--quiet")
    assert code == 0, err
    store = SliceStore(tmp_path / "s.zarr")
    assert store.attributes["codec"]["name"] == "blosc" and "tile" not in store.attributes
    np.testing.assert_array_equal(read_store(tmp_path / "s.zarr", workers=1).array, values)
    code, _, err = cli("compress", source, tmp_path / "t.zarr", "--lossless", "--tile", "64",
                       "--workers", "1")
    assert "note: --tile 64 does not apply to blosc" in err
