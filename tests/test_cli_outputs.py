"""Outputs that cannot destroy: --force replaces only what medlossy wrote; no tracebacks.

Every case here was reproduced on the code before the fix: ``compress --force`` onto a folder
deleted a user's notes, onto a regular file it died in a traceback, and so did
``info --json | head -1``, a decompress into an unwritable folder and ``--workers -1``
(after three encoding passes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import leftovers

EXIT_BAD_INPUT = 2
SOURCE = Path(__file__).resolve().parents[1] / "src"


def _one_line(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("medlossy: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _medlossy(*arguments: str | os.PathLike[str], stdout=subprocess.PIPE,
              ) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: its own process, so a traceback would reach stderr."""
    environment = {**os.environ, "PYTHONPATH": f"{SOURCE}{os.pathsep}"
                                               f"{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "medlossy.cli.main",
                           *map(str, arguments)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=environment, timeout=120, check=False)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    """A small CT-like int16 volume (rows != columns); its metadata caps it near x4.6."""
    rng = np.random.default_rng(3)
    _, y, x = np.mgrid[0:6, 0:40, 0:32]
    body = ((y - 20) ** 2 + (x - 16) ** 2) < 14**2
    array = np.where(body, 40, -1000) + rng.normal(0, 20, body.shape)
    path = tmp_path_factory.mktemp("small") / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(array, 0, -1).astype(np.int16), np.diag([
        0.8, 0.8, 3, 1])), path)
    return path


@pytest.fixture(scope="module")
def small_store(small_file, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store") / "small.zarr"
    assert _medlossy("compress", small_file, store, "--ratio", "3", "--workers", "1",
                     "--quiet").returncode == 0
    return store


def test_force_never_empties_an_ordinary_folder(cli, small_file, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    code, out, err = cli("compress", small_file, folder, "--ratio", "3", "--force",
                         "--workers", "1", "--quiet")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(folder), "medlossy did not write", "remove or rename it yourself")
    assert out == ""
    assert os.listdir(folder) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "my notes"
    assert leftovers(tmp_path) == []


def test_force_onto_a_regular_file_is_one_line_and_keeps_it(small_file, tmp_path):
    target = tmp_path / "ct.zarr"
    target.write_text("not a store")
    result = _medlossy("compress", small_file, target, "--ratio", "3", "--force",
                       "--workers", "1", "--quiet")
    assert result.returncode == EXIT_BAD_INPUT
    _one_line(result.stderr, str(target), "is a file that medlossy did not write")
    assert target.read_text() == "not a store"
    assert leftovers(tmp_path) == []


def test_force_replaces_a_store_medlossy_wrote(cli, small_file, tmp_path):
    store = tmp_path / "ct.zarr"
    assert cli("compress", small_file, store, "--ratio", "3", "--workers", "1",
               "--quiet")[0] == 0
    code, _, err = cli("compress", small_file, store, "--ratio", "4", "--force",
                       "--workers", "1", "--quiet")
    assert code == 0, err
    code, out, _ = cli("info", store, "--json")
    assert code == 0 and json.loads(out)["target"] == {"mode": "ratio", "value": 4.0,
                                                      "allocation": "psnr"}
    assert leftovers(tmp_path) == []


def test_force_replaces_a_dicom_folder_medlossy_wrote_but_not_a_foreign_one(
        cli, small_file, tmp_path):
    folder = tmp_path / "series"
    assert cli("compress", small_file, folder, "--ratio", "3", "--format", "dicom",
               "--workers", "1", "--quiet")[0] == 0
    assert len(os.listdir(folder)) == 6
    code, _, err = cli("compress", small_file, folder, "--lossless", "--format", "dicom",
                       "--force", "--workers", "1", "--quiet")
    assert code == 0, err
    # The same names, but one file is not ours: the folder is not replaced.
    (folder / "IM00001.dcm").write_bytes(b"someone else's file")
    code, _, err = cli("compress", small_file, folder, "--ratio", "3", "--format", "dicom",
                       "--force", "--workers", "1", "--quiet")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(folder), "medlossy did not write")
    assert (folder / "IM00001.dcm").read_bytes() == b"someone else's file"


def test_force_never_replaces_the_input(cli, small_file, tmp_path):
    folder = tmp_path / "series"
    assert cli("compress", small_file, folder, "--ratio", "3", "--format", "dicom",
               "--workers", "1", "--quiet")[0] == 0
    before = sorted(os.listdir(folder))
    code, _, err = cli("compress", folder, folder, "--ratio", "10", "--format", "dicom",
                       "--force", "--workers", "1", "--quiet")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(folder), "would replace the input")
    assert sorted(os.listdir(folder)) == before


@pytest.mark.parametrize("inside", ["out.nii.gz", "0/out.nrrd"])
def test_decompress_never_writes_inside_its_store(cli, small_file, tmp_path, inside):
    # Found by a new user: `decompress a.zarr a.zarr/0/out.nii.gz` exited 0, leaving a file
    # in the store that a later `compress --force` then refused as a user's.
    store = tmp_path / "ct.zarr"
    assert cli("compress", small_file, store, "--ratio", "3", "--workers", "1",
               "--quiet")[0] == 0
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    code, _, err = cli("decompress", store, store / inside, "--quiet")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(store / inside), "inside the input")
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_decompress_force_replaces_its_own_output_but_never_a_users_scan(
        cli, small_store, small_file, tmp_path, suffix):
    # Found by a new user: --force overwrote any readable NIfTI, their original scan too.
    precious = tmp_path / "ct.nii.gz"
    precious.write_bytes(b"precious")
    code, _, err = cli("decompress", small_store, precious, "--force", "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(precious), "not a volume file written by medlossy decompress")
    assert precious.read_bytes() == b"precious"
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(small_file.read_bytes())  # a readable NIfTI that medlossy did not write
    code, _, err = cli("decompress", small_store, scan, "--force", "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(scan), "medlossy did not write")
    assert scan.read_bytes() == small_file.read_bytes()
    decoded = tmp_path / f"decoded{suffix}"
    assert cli("decompress", small_store, decoded, "--workers", "1")[0] == 0
    first = decoded.read_bytes()
    code, _, err = cli("decompress", small_store, decoded, "--force", "--workers", "1")
    assert code == 0, err
    assert decoded.read_bytes() == first
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_decompress_force_never_replaces_a_file_saved_with_its_header(cli, small_store,
                                                                       tmp_path, suffix):
    # Found by a new user: a mask saved with the decoded image's header (nibabel copies its
    # extensions, pynrrd its fields) inherited the "written by medlossy decompress" note, and
    # --force overwrote the user's segmentation.
    import nrrd

    decoded = tmp_path / f"decoded{suffix}"
    assert cli("decompress", small_store, decoded, "--workers", "1")[0] == 0
    mask = tmp_path / f"my_seg{suffix}"
    if suffix == ".nrrd":
        values, header = nrrd.read(str(decoded), index_order="F")
        nrrd.write(str(mask), (values > 0).astype(np.uint8), header, index_order="F")
    else:
        image = nib.load(decoded)
        nib.save(nib.Nifti1Image((image.get_fdata() > 0).astype(np.uint8), image.affine,
                                 image.header), mask)
    before = mask.read_bytes()
    code, _, err = cli("decompress", small_store, mask, "--force", "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(mask), "medlossy did not write")
    assert mask.read_bytes() == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_decompress_force_never_replaces_a_file_whose_affine_was_edited(cli, small_store,
                                                                         tmp_path, suffix):
    # Found by a new user: the note's digest covered the voxels only, so a decoded NIfTI
    # whose affine they had corrected (header extension kept) was overwritten by --force.
    import nrrd

    decoded = tmp_path / f"decoded{suffix}"
    assert cli("decompress", small_store, decoded, "--workers", "1")[0] == 0
    assert cli("decompress", small_store, decoded, "--force", "--workers", "1")[0] == 0
    if suffix == ".nrrd":
        values, header = nrrd.read(str(decoded), index_order="F")
        header["space origin"] = header["space origin"] + [0.0, 0.0, 5.0]
        nrrd.write(str(decoded), values, header, index_order="F")
    else:
        image = nib.load(decoded)
        affine = image.affine.copy()
        affine[2, 3] += 5.0  # moved 5 mm up; voxels, scaling and extensions as they were
        edited = nib.Nifti1Image(np.asarray(image.dataobj.get_unscaled()), affine,
                                 image.header)
        nib.save(edited, decoded)
        assert len(nib.load(decoded).header.extensions) == len(image.header.extensions)
    before = decoded.read_bytes()
    code, _, err = cli("decompress", small_store, decoded, "--force", "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(decoded), "medlossy did not write")
    assert decoded.read_bytes() == before


def test_decompress_force_never_replaces_a_file_whose_scaling_was_changed(cli, tmp_path):
    # Found by a new user: the note's digest covered the stored integers only, so a decoded
    # scaled NIfTI whose scl_slope was then edited (every value changed) was overwritten.
    values = np.random.default_rng(0).integers(-1000, 2000, (32, 32, 4)).astype(np.int16)
    image = nib.Nifti1Image(values, np.diag([0.8, 0.8, 2.5, 1]))
    image.header.set_slope_inter(0.5, -1024)
    source = tmp_path / "scaled.nii.gz"
    nib.save(image, source)
    store = tmp_path / "scaled.zarr"
    assert cli("compress", source, store, "--lossless", "--workers", "1", "--quiet")[0] == 0
    decoded = tmp_path / "decoded.nii"
    assert cli("decompress", store, decoded, "--workers", "1")[0] == 0
    assert cli("decompress", store, decoded, "--force", "--workers", "1")[0] == 0
    edited = nib.load(decoded, mmap=False)
    header = edited.header.copy()
    raw = np.array(edited.dataobj.get_unscaled())
    changed = nib.Nifti1Image(raw, edited.affine, header)
    changed.header.set_slope_inter(2.0, 0.0)
    nib.save(changed, decoded)
    assert nib.load(decoded).dataobj.slope == 2.0
    before = decoded.read_bytes()
    code, _, err = cli("decompress", store, decoded, "--force", "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(decoded), "medlossy did not write")
    assert decoded.read_bytes() == before


def test_force_never_deletes_a_users_file_inside_a_store(cli, small_file, tmp_path):
    # Found by a new user: --force replaced a store whole, deleting their notes in it.
    store = tmp_path / "ct.zarr"
    assert cli("compress", small_file, store, "--ratio", "3", "--workers", "1",
               "--quiet")[0] == 0
    (store / "notes.txt").write_text("my notes")
    code, _, err = cli("compress", small_file, store, "--ratio", "4", "--force",
                       "--workers", "1", "--quiet")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(store), "'notes.txt'", "--force would delete it")
    assert (store / "notes.txt").read_text() == "my notes"
    code, out, _ = cli("info", store, "--json")
    assert json.loads(out)["target"]["value"] == 3.0  # the store itself is untouched too
    (store / "notes.txt").unlink()
    (store / "0" / "extra").mkdir()
    code, _, err = cli("compress", small_file, store, "--ratio", "4", "--force",
                       "--workers", "1", "--quiet")
    assert code == EXIT_BAD_INPUT
    _one_line(err, "'0/extra/'")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["1.2.3", "0/20240101.1.1", "0/6.0.0", "0/0.0.01"])
def test_force_never_deletes_a_users_file_named_like_a_chunk(cli, small_file, tmp_path, name):
    # Found by a new user: any "N.N.N" counted as a chunk, so --force deleted their files
    # s.zarr/1.2.3 and s.zarr/0/20240101.1.1. Only keys of the store's own chunk grid (6
    # slices: 0/0.0.0 ... 0/5.0.0) are the store's.
    store = tmp_path / "s.zarr"
    assert cli("compress", small_file, store, "--ratio", "3", "--workers", "1",
               "--quiet")[0] == 0
    (store / name).write_text("a user's file")
    code, _, err = cli("compress", small_file, store, "--ratio", "4", "--force",
                       "--workers", "1", "--quiet")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(store), f"{name!r}", "--force would delete it")
    assert (store / name).read_text() == "a user's file"
    assert (store / "0" / "5.0.0").is_file()


def test_nested_chunk_keys_are_a_stores_own_files(tmp_path):
    from medlossy.outputs import foreign_store_files

    store = tmp_path / "nested.zarr"
    (store / "0" / "1" / "0").mkdir(parents=True)
    (store / ".zattrs").write_text('{"medlossy": {}}')
    (store / "0" / ".zarray").write_text(json.dumps(
        {"shape": [3, 8, 8], "chunks": [1, 8, 8], "dimension_separator": "/"}))
    (store / "0" / "1" / "0" / "0").write_bytes(b"chunk")
    assert foreign_store_files(store) == []
    (store / "0" / "1" / "0" / "1").write_bytes(b"user")
    (store / "0" / "3").mkdir()
    assert foreign_store_files(store) == ["0/1/0/1", "0/3/"]


def test_force_names_a_users_file_inside_a_dicom_output(cli, small_file, tmp_path):
    # Found by a new user: a store names the file --force would delete, but a DICOM series
    # folder medlossy wrote, holding one file of the user's, was refused as "a folder that
    # medlossy did not write", leaving them to guess which file was the problem.
    folder = tmp_path / "series"
    assert cli("compress", small_file, folder, "--ratio", "3", "--format", "dicom",
               "--workers", "1", "--quiet")[0] == 0
    (folder / "notes.txt").write_text("my notes")
    before = sorted(os.listdir(folder))
    code, _, err = cli("compress", small_file, folder, "--ratio", "4", "--format", "dicom",
                       "--force", "--workers", "1", "--quiet")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(folder), "'notes.txt'", "--force would delete it")
    assert sorted(os.listdir(folder)) == before
    (folder / "notes.txt").unlink()
    assert cli("compress", small_file, folder, "--ratio", "4", "--format", "dicom",
               "--force", "--workers", "1", "--quiet")[0] == 0


def test_force_replaces_an_empty_folder_and_a_multiframe_dicom_medlossy_wrote(
        cli, small_file, tmp_path):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    code, _, err = cli("compress", small_file, empty, "--ratio", "3", "--force",
                       "--workers", "1", "--quiet")
    assert code == 0, err
    assert (empty / ".zattrs").is_file()
    series = tmp_path / "enhanced"
    for force in ((), ("--force",)):
        code, _, err = cli("compress", small_file, series, "--ratio", "3", "--format",
                           "dicom", "--multiframe", "--modality", "CT", "--workers", "1",
                           "--quiet", *force)
        assert code == 0, err
    assert os.listdir(series) == ["MF00001.dcm"]


def test_force_replaces_a_version_1_store(cli, small_file, tmp_path):
    import shutil

    store = tmp_path / "old.zarr"
    shutil.copytree(Path(__file__).parent / "data" / "store_v1.zarr", store)
    assert (store / ".zarray").is_file()  # the array at the root, as version 1 kept it
    code, _, err = cli("compress", small_file, store, "--ratio", "3", "--force",
                       "--workers", "1", "--quiet")
    assert code == 0, err
    assert not (store / ".zarray").exists() and (store / "0" / ".zarray").is_file()


def test_a_concurrent_compress_into_one_output_never_replaces_the_first(
        cli, small_file, tmp_path, monkeypatch):
    # Found by a new user: two compress runs into one output both exited 0; the later one
    # replaced the first without --force (the output was checked only at the start).
    from medlossy import compression
    from medlossy.cli.main import main as cli_main

    store = tmp_path / "ct.zarr"
    encode = compression.encode_volume

    def other_run_finishes_first(*arguments, **options):
        monkeypatch.setattr(compression, "encode_volume", encode)
        assert cli_main(["compress", str(small_file), str(store), "--ratio", "4",
                         "--workers", "1", "--quiet"]) == 0
        return encode(*arguments, **options)

    monkeypatch.setattr(compression, "encode_volume", other_run_finishes_first)
    code, _, err = cli("compress", small_file, store, "--ratio", "3", "--workers", "1",
                       "--quiet")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(store), "appeared while this run was writing it")
    code, out, _ = cli("info", store, "--json")
    assert json.loads(out)["target"]["value"] == 4.0  # the first run's store, whole
    assert leftovers(tmp_path) == []


def test_a_concurrent_decompress_into_one_file_never_replaces_the_first(
        cli, small_store, tmp_path, monkeypatch):
    from medlossy import decompression

    output = tmp_path / "ct.nii.gz"
    read = decompression.read_store

    def other_file_appears_first(*arguments, **options):
        output.write_bytes(b"written meanwhile")
        return read(*arguments, **options)

    monkeypatch.setattr(decompression, "read_store", other_file_appears_first)
    code, _, err = cli("decompress", small_store, output, "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(output), "appeared while this run was writing it")
    assert output.read_bytes() == b"written meanwhile"
    assert leftovers(tmp_path) == []


def test_reader_make_never_replaces_a_users_images_folder(cli, tmp_path):
    out = tmp_path / "study"
    (out / "images").mkdir(parents=True)
    (out / "images" / "holiday.jpg").write_bytes(b"\xff\xd8")
    code, _, err = cli("reader", "make", tmp_path / "no-datasets-needed", "--out", out)
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(out / "images"), "holiday.jpg", "not a reader study's images")
    assert os.listdir(out / "images") == ["holiday.jpg"]


def test_study_refuses_a_folder_with_other_files(cli, tmp_path):
    out = tmp_path / "work"
    out.mkdir()
    (out / "thesis.tex").write_text("chapter 1")
    code, _, err = cli("study", "--demo", "--out", out, "--quiet")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(out), "not a medlossy study folder")
    assert os.listdir(out) == ["thesis.tex"]


def test_info_json_into_a_closed_pipe_is_quiet(small_store):
    command = [sys.executable, "-m", "medlossy.cli.main", "info", "--json", str(small_store)]
    environment = {**os.environ, "PYTHONPATH": str(SOURCE)}
    # `medlossy info --json X | head -1`: the reader leaves after one line.
    shell = subprocess.run(f"{' '.join(command)} | head -1; exit ${{PIPESTATUS[0]}}",
                           shell=True, executable="/bin/bash", capture_output=True,
                           text=True, env=environment, timeout=120, check=False)
    assert shell.stdout == "{\n"
    assert shell.stderr == ""  # no BrokenPipeError traceback
    assert shell.returncode in (0, 141)  # done, or stopped like a SIGPIPE'd process


@pytest.mark.skipif(not Path("/proc/1").is_dir(), reason="needs Linux /proc")
def test_decompress_into_an_unwritable_folder_is_one_line(small_store):
    # /proc/1 exists and no one, root included, can create a file in it.
    target = Path("/proc/1/ct.nii.gz")
    result = _medlossy("decompress", small_store, target, "--workers", "1")
    assert result.returncode == EXIT_BAD_INPUT
    _one_line(result.stderr, f"{target}: ")  # the output named, not its temporary


def test_decompress_below_a_regular_file_is_one_line(small_store, tmp_path):
    (tmp_path / "afile").write_text("x")
    result = _medlossy("decompress", small_store, tmp_path / "afile" / "ct.nii.gz",
                       "--workers", "1")
    assert result.returncode == EXIT_BAD_INPUT
    _one_line(result.stderr, str(tmp_path / "afile"))


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_workers_must_be_positive_and_the_error_names_the_option(small_file, tmp_path,
                                                                 value):
    result = _medlossy("compress", small_file, tmp_path / "s.zarr", "--ratio", "3",
                       "--workers", value)
    assert result.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in result.stderr
    assert "argument --workers:" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "s.zarr").exists()
