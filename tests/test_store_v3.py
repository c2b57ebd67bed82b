"""Zarr format 3 stores: sharded, OME-Zarr 0.5, read by medlossy, stock zarr and ome-zarr-py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import walk_bytes

from medlossy.codecs import codec_type
from medlossy.compression import Target, compress_volume
from medlossy.decompression import read_store
from medlossy.errors import MedlossyError
from medlossy.loading.volume import StoreVolume
from medlossy.store import MetadataMismatch, SliceStore
from medlossy.volume import Volume

REPOSITORY = Path(__file__).resolve().parents[1]
#: CT B's axial slices 70-93 (24 slices of 233 x 167): tiles of 64 end in partial tiles.
SLICES = slice(70, 94)


@pytest.fixture(scope="module")
def ct_slab(ct_b_image) -> Volume:
    return Volume(np.asarray(ct_b_image.dataobj[:, :, SLICES]), ct_b_image.affine.copy(),
                  modality="CT")


def _compress(volume: Volume, path: Path, target: Target, **options) -> dict:
    fresh = Volume(volume.array, volume.affine.copy(), modality=volume.modality)
    return compress_volume(fresh, path, target, workers=1, **options)


def _files(store: Path) -> list[str]:
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def stores(ct_slab, tmp_path_factory) -> dict[str, Path]:
    """x10 stores of the slab: v2 tiled, v3 one shard, v3 tiled in shards of 8 slices."""
    folder = tmp_path_factory.mktemp("v3")
    layouts = {"v2_tiled": {"tile": 64},
               "v3": {"zarr_format": 3},
               "v3_tiled": {"zarr_format": 3, "tile": 64, "shard_slices": 8}}
    for name, options in layouts.items():
        _compress(ct_slab, folder / f"{name}.zarr", Target("ratio", 10.0), **options)
    return {name: folder / f"{name}.zarr" for name in layouts}


def test_a_v3_store_is_one_shard_file_with_ome_zarr_05_metadata(stores, ct_slab):
    store = stores["v3"]
    assert _files(store) == ["0/c/0/0/0", "0/zarr.json", "zarr.json"]
    group = json.loads((store / "zarr.json").read_bytes())
    assert (group["zarr_format"], group["node_type"]) == (3, "group")
    ome = group["attributes"]["ome"]
    assert ome["version"] == "0.5"
    (image,) = ome["multiscales"]
    assert [(a["name"], a["unit"]) for a in image["axes"]] == [
        ("z", "millimeter"), ("y", "millimeter"), ("x", "millimeter")]
    scale, translation = image["datasets"][0]["coordinateTransformations"]
    spacing = np.linalg.norm(ct_slab.affine[:3, :3], axis=0)
    np.testing.assert_allclose(scale["scale"], [spacing[2], spacing[0], spacing[1]])
    assert len(translation["translation"]) == 3
    array = json.loads((store / "0" / "zarr.json").read_bytes())
    assert array["shape"] == [24, 233, 167] and array["dimension_names"] == ["z", "y", "x"]
    (sharding,) = array["codecs"]
    assert sharding["name"] == "sharding_indexed"
    assert sharding["configuration"]["chunk_shape"] == [1, 233, 167]
    assert array["chunk_grid"]["configuration"]["chunk_shape"] == [24, 233, 167]


def test_the_ratio_counts_every_byte_of_a_sharded_store_index_included(stores):
    for name in ("v3", "v3_tiled"):
        attributes = SliceStore(stores[name]).attributes
        achieved = attributes["achieved"]
        assert achieved["stored_bytes"] == walk_bytes(stores[name])
        assert achieved["ratio"] == pytest.approx(10.0, rel=0.01)
        assert achieved["target_reached"]


def test_shards_of_n_slices_hold_whole_tiled_slices(stores):
    store = stores["v3_tiled"]
    # 24 slices in shards of 8: three shard files; 4 x 3 tiles of 64 per slice
    assert _files(store) == ["0/c/0/0/0", "0/c/1/0/0", "0/c/2/0/0", "0/zarr.json",
                             "zarr.json"]
    opened = SliceStore(store)
    assert (opened.zarr_format, opened.shard_slices, opened.chunks) == (3, 8, 24 * 12)
    index_bytes = 3 * (8 * 12 * 16 + 4)
    chunk_bytes = sum(len(opened.codestream(i)) for i in range(opened.chunks))
    shards = sum((store / "0" / "c" / str(k) / "0" / "0").stat().st_size for k in range(3))
    assert shards == chunk_bytes + index_bytes


def test_v3_decodes_as_its_codestreams_say_and_the_tiles_match_v2(stores):
    v2, v3 = (read_store(stores[n], workers=1).array for n in ("v2_tiled", "v3_tiled"))
    # the same tiling at the same ratio: the search lands on (nearly) the same setting
    assert np.abs(v2.astype(np.int32) - v3.astype(np.int32)).mean() < 5
    opened = SliceStore(stores["v3_tiled"])
    assert opened.verify() == []


def _every_codec() -> list:
    cases = []
    for name, target in (("jpeg2k", Target("ratio", 8.0)), ("htj2k", Target("ratio", 8.0)),
                         ("jpegxl", Target("ratio", 8.0)), ("jpegls", Target("ratio", 6.0)),
                         ("sperr", Target("ratio", 8.0)), ("sz3", Target("ratio", 8.0)),
                         ("zfp", Target("max_error", 20.0)), ("blosc", Target("lossless"))):
        marks = [] if codec_type(name).available else [pytest.mark.skip(f"{name} missing")]
        cases.append(pytest.param(name, target, id=name, marks=marks))
    return cases


@pytest.mark.parametrize(("codec", "target"), _every_codec())
def test_every_codec_writes_a_v3_store_that_stock_zarr_reads_as_medlossy_does(
        ct_slab, tmp_path, codec, target):
    import zarr

    import medlossy.codecs.zarr3  # noqa: F401  (in-process; the subprocess test uses entry points)

    volume = ct_slab
    if codec == "blosc":  # Blosc holds what 16-bit codecs cannot: fractional floats
        volume = Volume(ct_slab.array.astype(np.float32) * np.float32(0.37), ct_slab.affine)
    path = tmp_path / f"{codec}.zarr"
    attributes = _compress(volume, path, target, codec_name=codec, zarr_format=3,
                           shard_slices=16)
    assert attributes["achieved"]["stored_bytes"] == walk_bytes(path)
    if target.mode == "ratio":
        assert attributes["achieved"]["ratio"] == pytest.approx(target.value, rel=0.01)
    ours = np.moveaxis(read_store(path, workers=1).array, 2, 0)
    stock = zarr.open_group(str(path), mode="r")["0"][:]
    if codec == "htj2k":  # stock HTJ2K decodes are unclipped (docs/store-format.md)
        info = np.iinfo(ours.dtype)
        stock = np.clip(stock, info.min, info.max)
    np.testing.assert_array_equal(stock, ours)
    assert SliceStore(path).verify() == []


def _entry_point_site(folder: Path) -> Path:
    """A dist-info carrying pyproject's entry points, as ``pip install medlossy`` writes it."""
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    info = folder / "medlossy-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medlossy\nVersion: 0.1.0\n")
    lines = []
    for group, entries in project["project"]["entry-points"].items():
        lines += [f"[{group}]"] + [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return folder


#: Stock readers only: no medlossy import (zarr finds the codecs through entry points).
_STOCK_READER = """
import json, sys
import numpy as np
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

store, out = sys.argv[1], sys.argv[2]
np.save(out + "/zarr.npy", zarr.open(store, mode="r")["0"][:])
node = next(iter(Reader(parse_url(store))()))
np.save(out + "/ome.npy", np.asarray(node.data[0].compute()))
print(json.dumps({"transforms": node.metadata["coordinateTransformations"],
                  "axes": node.metadata["axes"],
                  "loaded": sorted(m for m in sys.modules if m.startswith("medlossy"))}))
"""


@pytest.mark.parametrize("name", ["v3", "v3_tiled"])
def test_stock_zarr_and_ome_zarr_read_v3_exactly_with_only_medlossy_installed(
        stores, tmp_path, name):
    site = _entry_point_site(tmp_path / "site")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), str(REPOSITORY / "src")])}
    result = subprocess.run([sys.executable, "-c", _STOCK_READER, str(stores[name]),
                             str(tmp_path)], capture_output=True, text=True, check=True,
                            env=environment, timeout=120)
    document = json.loads(result.stdout.strip().splitlines()[-1])
    ours = np.moveaxis(read_store(stores[name], workers=1).array, 2, 0)
    np.testing.assert_array_equal(np.load(tmp_path / "zarr.npy"), ours)
    np.testing.assert_array_equal(np.load(tmp_path / "ome.npy"), ours)
    assert "version mismatch" not in result.stderr  # OME-Zarr 0.5 in Zarr 3, as it expects
    group = json.loads((stores[name] / "zarr.json").read_bytes())
    written = group["attributes"]["ome"]["multiscales"][0]
    assert document["transforms"] == [written["datasets"][0]["coordinateTransformations"]]
    assert [a["unit"] for a in document["axes"]] == ["millimeter"] * 3
    # zarr loaded the adapter through the entry point, nothing else of medlossy's
    assert "medlossy.codecs.zarr3" in document["loaded"]
    assert not any(m.startswith(("medlossy.store", "medlossy.compression"))
                   for m in document["loaded"])


#: Stock zarr alone, with every module that medlossy's own tools need but a reader must not
#: (JPEG 2000's encoder, the training stack, medical formats) refused on import.
_MINIMAL_READER = """
import importlib.abc, json, sys
import numpy as np

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"openjpeg", "glymur", "torch", "monai", "nibabel", "pydicom",
                                  "SimpleITK", "skimage"}:
            raise ModuleNotFoundError(f"No module named {name!r} (refused)")

sys.meta_path.insert(0, Refuse())
import zarr

for store in sys.argv[2:]:
    np.save(f"{sys.argv[1]}/{store.rsplit('/', 1)[-1]}.npy", zarr.open(store, mode="r")["0"][:])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("medlossy"))))
"""


def test_stock_zarr_reads_every_codec_kind_with_only_the_documented_packages(
        stores, ct_slab, tmp_path):
    # the adapter imported medlossy.codecs, which imported every codec: "No module named
    # 'openjpeg'" in an environment of zarr, numcodecs and imagecodecs alone
    block = tmp_path / "sperr.zarr"
    _compress(ct_slab, block, Target("ratio", 8.0), codec_name="sperr", zarr_format=3,
              shard_slices=16)
    paths = [stores["v3_tiled"], block]
    site = _entry_point_site(tmp_path / "site")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), str(REPOSITORY / "src")])}
    result = subprocess.run([sys.executable, "-c", _MINIMAL_READER, str(tmp_path),
                             *map(str, paths)], capture_output=True, text=True,
                            env=environment, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for path in paths:
        ours = np.moveaxis(read_store(path, workers=1).array, 2, 0)
        np.testing.assert_array_equal(np.load(tmp_path / f"{path.name}.npy"), ours)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert not any(m.endswith((".jpeg2k", ".htj2k", ".jpegxl", ".jpegls", ".blosc"))
                   for m in loaded), loaded


class _CountingStore(SliceStore):
    """A store that counts the bytes read from its files."""

    read_bytes = 0

    def read_range(self, file: Path, offset: int, length: int) -> bytes:
        data = super().read_range(file, offset, length)
        _CountingStore.read_bytes += len(data)
        return data


def _touched_chunk_bytes(store: SliceStore, start, size) -> tuple[int, set[int]]:
    grid = store.grid
    rows = slice(start[1], start[1] + size[1])
    columns = slice(start[2], start[2] + size[2])
    tiles = grid.touched(rows, columns)
    chunks = {z * grid.per_slice + t for z in range(start[0], start[0] + size[0])
              for t in tiles}
    return sum(len(store.codestream(i)) for i in chunks), chunks


def test_a_patch_reads_only_the_inner_chunks_it_touches(stores, monkeypatch):
    import medlossy.loading.volume as loading_volume

    monkeypatch.setattr(loading_volume, "SliceStore", _CountingStore)
    start, size = (5, 40, 30), (8, 100, 90)  # a patch across two shards, 3 x 2 tiles
    volume = StoreVolume(stores["v3_tiled"])
    _CountingStore.read_bytes = 0
    patch = volume.read(start, size)
    touched, chunks = _touched_chunk_bytes(SliceStore(stores["v3_tiled"]), start, size)
    assert len(chunks) == 8 * 6
    index_bytes = 2 * (8 * 12 * 16 + 4)  # the two shards' indexes, read once
    assert _CountingStore.read_bytes == touched + index_bytes
    assert _CountingStore.read_bytes <= 1.5 * touched
    _CountingStore.read_bytes = 0
    volume.read(start, size)  # the indexes are kept: only the chunks again
    assert _CountingStore.read_bytes == touched
    whole = np.moveaxis(read_store(stores["v3_tiled"], workers=1).array, 2, 0)
    expected = whole[5:13, 40:140, 30:120].astype(np.float32)
    np.testing.assert_array_equal(patch, expected)


def _bytes_read() -> int:
    """Bytes this process has read from files so far (the kernel's count, page cache too)."""
    line = next(line for line in Path("/proc/self/io").read_text().splitlines()
                if line.startswith("rchar:"))
    return int(line.split()[1])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc")
def test_a_local_patch_reads_from_disk_only_the_bytes_of_its_chunks(stores):
    # Each ~500-byte chunk reopened its shard and read a 4 KiB buffer: 8.0x the chunks'
    # bytes (and an open per chunk) on a tiled store; kept open and read by os.pread now
    start, size = (5, 40, 30), (8, 100, 90)
    volume = StoreVolume(stores["v3_tiled"])
    volume.read(start, size)  # the shard indexes, read once
    touched, _ = _touched_chunk_bytes(SliceStore(stores["v3_tiled"]), start, size)
    before = _bytes_read()
    volume.read(start, size)
    assert touched <= _bytes_read() - before <= 1.1 * touched


def test_a_patch_builds_each_shard_path_once_not_one_per_chunk(stores, monkeypatch):
    # A profile of tiled patches put ~15% of the CPU in the chunk lookup: a path object
    # built (and chunks_per_shard recomputed) for every one of a patch's chunks
    from medlossy.store.remote import StoreFiles

    volume = StoreVolume(stores["v3_tiled"])
    built = []
    where = StoreFiles.where
    monkeypatch.setattr(StoreFiles, "where", lambda self, name: built.append(name)
                        or where(self, name))
    start, size = (5, 40, 30), (8, 100, 90)  # 48 chunks from two shards
    first = volume.read(start, size)
    assert built == ["0/c/0/0/0", "0/c/1/0/0"]
    built.clear()
    np.testing.assert_array_equal(volume.read(start, size), first)
    assert built == []


def test_a_shard_file_replaced_in_place_is_read_anew(tmp_path):
    # open shard files are kept; a file rewritten (atomically, a new inode) is reopened
    from medlossy.store.remote import StoreFiles

    shard = tmp_path / "shard"
    shard.write_bytes(b"old bytes")
    files = StoreFiles(tmp_path)
    assert files.read("shard", 4, 5) == b"bytes" and files.read("shard", -3, 3) == b"tes"
    (tmp_path / "new").write_bytes(b"new bytes!")
    os.replace(tmp_path / "new", shard)
    assert files.read("shard", 4, 6) == b"bytes!" and files.read("shard", -3, 3) == b"es!"


#: A process with no threads that reads a range, forks, and reads again in the child.
_FORKED_READ = """
import os, sys, threading
from medlossy.store import remote

files = remote.StoreFiles(sys.argv[1])
assert files.read("shard", 4, 5) == b"bytes" and list(remote._opened)
assert threading.active_count() == 1  # safe to fork
child = os.fork()
if child == 0:
    fresh = not remote._opened  # the parent's open files are not the child's
    os._exit(0 if fresh and files.read("shard", 0, 3) == b"old" and remote._opened else 1)
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_opens_its_own_shard_files(tmp_path):
    (tmp_path / "shard").write_bytes(b"old bytes")
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY / "src")}
    result = subprocess.run([sys.executable, "-c", _FORKED_READ, str(tmp_path)],
                            capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_patch_dataset_takes_one_v3_store(stores):
    # Was refused ("no *.zarr stores in this folder"): a single store was recognised by its
    # .zattrs, which format 3 does not have.
    from medlossy.loading import StorePatchDataset

    dataset = StorePatchDataset(stores["v3_tiled"], (8, 64, 64), samples=2)
    assert dataset.names == ["v3_tiled"]
    assert tuple(dataset[0]["image"].shape) == (1, 8, 64, 64)


def test_stock_zarr_reads_a_patch_by_byte_ranges_of_the_chunks_it_touches(stores):
    import zarr
    from zarr.storage import LocalStore, WrapperStore

    import medlossy.codecs.zarr3  # noqa: F401

    class Counting(WrapperStore):
        read = 0

        async def get(self, key, prototype, byte_range=None):
            value = await self._store.get(key, prototype, byte_range)
            if value is not None and key.startswith("0/c/"):
                Counting.read += len(value)
            return value

    start, size = (5, 40, 30), (8, 100, 90)
    store = Counting(LocalStore(str(stores["v3_tiled"]), read_only=True))
    array = zarr.open_group(store, mode="r")["0"]
    patch = array[5:13, 40:140, 30:120]
    touched, _ = _touched_chunk_bytes(SliceStore(stores["v3_tiled"]), start, size)
    assert touched < Counting.read <= 1.5 * touched
    ours = np.moveaxis(read_store(stores["v3_tiled"], workers=1).array, 2, 0)
    np.testing.assert_array_equal(patch, ours[5:13, 40:140, 30:120])


def _copy(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    return copy


def test_verify_names_a_corrupt_inner_chunk_and_a_damaged_index(stores, tmp_path, cli):
    store = _copy(stores["v3_tiled"], tmp_path)
    opened = SliceStore(store)
    offset, length = (int(n) for n in opened._shard_index(1)[13])
    shard = store / "0" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[offset + length // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert SliceStore(store).verify() == [8 * 12 + 13]
    code, out, err = cli("verify", store)
    assert code == 1 and "slice 9 tile 0.1" in out + err
    data[-10] ^= 0xFF  # inside the index
    shard.write_bytes(bytes(data))
    assert SliceStore(store).verify() == list(range(8 * 12, 16 * 12))
    with pytest.raises(MedlossyError, match="shard 1 is corrupt"):
        SliceStore(store).codestream(8 * 12)


@pytest.mark.parametrize(("edit", "named"), [("array", "zarr.json changed"),
                                             ("ome", "multiscales changed")])
def test_edited_v3_metadata_is_refused(stores, tmp_path, edit, named):
    store = _copy(stores["v3"], tmp_path)
    if edit == "array":
        path = store / "0" / "zarr.json"
        document = json.loads(path.read_bytes())
        document["fill_value"] = 7
    else:
        path = store / "zarr.json"
        document = json.loads(path.read_bytes())
        document["attributes"]["ome"]["multiscales"][0]["datasets"][0][
            "coordinateTransformations"][0]["scale"][0] = 9.0
    path.write_text(json.dumps(document))
    with pytest.raises(MetadataMismatch, match=named):
        SliceStore(store)


def test_cli_writes_v3_and_refuses_shards_without_it(ct_b_crop_file, tmp_path, cli):
    out = tmp_path / "ct.zarr"
    code, _, err = cli("compress", ct_b_crop_file, out, "--ratio", "10", "--zarr-version",
                       "3", "--shard-slices", "10", "--quiet", "--workers", "1")
    assert code == 0, err
    assert _files(out) == ["0/c/0/0/0", "0/c/1/0/0", "0/c/2/0/0", "0/zarr.json", "zarr.json"]
    code, out_text, _ = cli("info", out, "--json")
    document = json.loads(out_text)
    assert (document["zarr_format"], document["shard_slices"]) == (3, 10)
    assert document["bytes_on_disk"] == document["achieved"]["stored_bytes"]
    # psnr takes a v3 store as either volume (it looked for .zattrs: "not a volume file")
    code, out_text, err = cli("psnr", ct_b_crop_file, out)
    assert code == 0, err
    assert f"PSNR {document['achieved']['psnr_db']:.3f} dB" in out_text
    code, _, err = cli("compress", ct_b_crop_file, tmp_path / "x.zarr", "--ratio", "10",
                       "--shard-slices", "10", "--quiet")
    assert code == 2 and "--shard-slices applies only to --zarr-version 3" in err
    assert not (tmp_path / "x.zarr").exists()
    # --force replaces a v3 store (its files are recognised as the store's own)
    code, _, err = cli("compress", ct_b_crop_file, out, "--ratio", "20", "--zarr-version",
                       "3", "--quiet", "--workers", "1", "--force")
    assert code == 0, err
    assert _files(out) == ["0/c/0/0/0", "0/zarr.json", "zarr.json"]


def test_a_dataset_sweep_writes_v3_stores_and_redoes_them_as_v2(tmp_path, cli, monkeypatch):
    from test_dataset_validation import run_sweeps_serially
    from test_tiles import _plain_dataset

    run_sweeps_serially(monkeypatch)
    source, out = tmp_path / "scans", tmp_path / "sweep"
    _plain_dataset(source)
    code, _, err = cli("dataset", "compress", source, "--out", out, "--ratios", "1,5",
                       "--zarr-version", "3", "--quiet")
    assert code == 0, err
    manifest = pd.read_csv(out / "manifest.csv")
    assert json.loads((out / "sweep.json").read_text())["zarr_format"] == 3
    for row in manifest.itertuples():
        assert SliceStore(out / row.store).zarr_format == 3
        assert row.stored_bytes == walk_bytes(out / row.store)
    code, _, err = cli("dataset", "verify", out)
    assert code == 0, err
    code, _, err = cli("dataset", "compress", source, "--out", out, "--ratios", "1,5",
                       "--quiet")
    assert code == 0, err
    manifest = pd.read_csv(out / "manifest.csv")
    assert all(SliceStore(out / store).zarr_format == 2 for store in manifest["store"])


def test_a_missing_shard_is_called_missing_not_corrupt(stores, tmp_path, cli):
    store = _copy(stores["v3_tiled"], tmp_path)
    (store / "0" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(MedlossyError, match=r"0/c/1/0/0: shard 1 is missing from the store$"):
        SliceStore(store).codestream(8 * 12)
    assert SliceStore(store).verify() == list(range(8 * 12, 16 * 12))
