"""Every bad input ends as one line on stderr naming the file, exit code 2, and no output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import leftovers, reseal

from medlossy.compression import Target, compress_volume
from medlossy.volume import Volume

EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 1, 2


def _assert_one_line_error(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    line = lines[0]
    assert line.startswith("medlossy: error: ")
    for fragment in fragments:
        assert fragment in line
    return line


def _assert_no_output(output: Path) -> None:
    assert not output.exists()
    assert leftovers(output.parent) == []
    assert os.listdir(output.parent) == []


def _missing(directory: Path, reference: Path) -> Path:
    return directory / "does_not_exist.nii.gz"


def _random_bytes(directory: Path, reference: Path) -> Path:
    path = directory / "corrupt.nii.gz"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    return path


def _truncated(directory: Path, reference: Path) -> Path:
    data = reference.read_bytes()
    path = directory / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _save(directory: Path, name: str, array: np.ndarray) -> Path:
    path = directory / name
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def _complex(directory: Path, reference: Path) -> Path:
    return _save(directory, "complex.nii.gz", np.ones((40, 40, 4), dtype=np.complex64))


def _with_nan(directory: Path, reference: Path) -> Path:
    array = np.random.default_rng(1).random((40, 40, 4)).astype(np.float32)
    array[20, 20, 2] = np.nan
    return _save(directory, "nan.nii.gz", array)


def _with_inf(directory: Path, reference: Path) -> Path:
    array = np.random.default_rng(1).random((40, 40, 4)).astype(np.float32)
    array[3, 3, 3] = -np.inf
    return _save(directory, "inf.nii.gz", array)


def _two_d(directory: Path, reference: Path) -> Path:
    return _save(directory, "flat.nii.gz", np.zeros((64, 64), dtype=np.int16))


def _four_d(directory: Path, reference: Path) -> Path:
    return _save(directory, "series.nii.gz", np.zeros((40, 40, 8, 3), dtype=np.int16))


def _unknown_suffix(directory: Path, reference: Path) -> Path:
    path = directory / "volume.mha"
    path.write_bytes(b"ObjectType = Image\n")
    return path


BAD_INPUTS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "missing": (_missing, "no such file"),
    "random bytes": (_random_bytes, "not a readable NIfTI"),
    "truncated": (_truncated, "truncated or corrupt"),
    "complex64": (_complex, "unsupported voxel type complex64"),
    "nan": (_with_nan, "NaN or infinite"),
    "inf": (_with_inf, "NaN or infinite"),
    "2d": (_two_d, "expected a 3D volume"),
    "4d": (_four_d, "expected a 3D volume"),
    "unknown format": (_unknown_suffix, "unknown image format"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file(cli, tmp_path, ct_a_path, case):
    make, problem = BAD_INPUTS[case]
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    source = make(inputs, ct_a_path)
    output = outputs / "store.zarr"
    code, out, err = cli("compress", source, output, "--ratio", "10", "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _assert_one_line_error(err, str(source), problem)
    assert out == ""
    _assert_no_output(output)


@pytest.mark.parametrize("ratio", ["1", "0.5"])
def test_ratio_not_above_one_is_refused(cli, tmp_path, mr_path, ratio):
    (tmp_path / "out").mkdir()
    output = tmp_path / "out" / "store.zarr"
    code, _, err = cli("compress", mr_path, output, "--ratio", ratio, "--workers", "1")
    assert code == EXIT_BAD_INPUT
    # an argument error, not a file error: the line names the option and the value
    _assert_one_line_error(err, "--ratio must be greater than 1", f"got {ratio}")
    _assert_no_output(output)


@pytest.mark.parametrize("ratio", ["0", "-3", "ten"])
def test_non_positive_ratio_is_an_argparse_error(capsys, tmp_path, mr_path, ratio):
    from medlossy.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["compress", str(mr_path), str(tmp_path / "s.zarr"), "--ratio", ratio])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "--ratio" in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()


@pytest.fixture(scope="module")
def good_store(ct_b_crop_image, ct_b_crop_array, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "ct.zarr"
    compress_volume(Volume(ct_b_crop_array, ct_b_crop_image.affine, modality="CT"), path,
                    Target("ratio", 12.0), workers=1)
    return path


@pytest.fixture
def damaged_store(good_store, tmp_path) -> Path:
    path = tmp_path / "damaged.zarr"
    shutil.copytree(good_store, path)
    return path


def _flip_a_byte(chunk: Path) -> None:
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))


def test_decompress_names_a_corrupt_slice(cli, damaged_store, tmp_path):
    _flip_a_byte(damaged_store / "0" / "5.0.0")
    (tmp_path / "out").mkdir()
    output = tmp_path / "out" / "ct.nii.gz"
    code, _, err = cli("decompress", damaged_store, output, "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _assert_one_line_error(err, str(damaged_store / "0" / "5.0.0"), "slice 5", "corrupt")
    _assert_no_output(output)


def test_verify_names_a_corrupt_slice(cli, damaged_store):
    _flip_a_byte(damaged_store / "0" / "5.0.0")
    code, out, err = cli("verify", damaged_store)
    assert code == EXIT_CHECK_FAILED
    line = _assert_one_line_error(err, str(damaged_store), "1 corrupt or missing")
    # verify lists the bad slice indices ("slice(s): 5"), not "slice 5"
    assert line.endswith("slice(s): 5")
    assert out == ""


def test_verify_lists_every_bad_slice(cli, damaged_store):
    _flip_a_byte(damaged_store / "0" / "3.0.0")
    (damaged_store / "0" / "17.0.0").unlink()
    code, _, err = cli("verify", damaged_store)
    assert code == EXIT_CHECK_FAILED
    assert _assert_one_line_error(err, "2 corrupt or missing").endswith("slice(s): 3, 17")


def test_decompress_names_a_missing_slice(cli, damaged_store, tmp_path):
    (damaged_store / "0" / "17.0.0").unlink()
    (tmp_path / "out").mkdir()
    output = tmp_path / "out" / "ct.nii.gz"
    code, _, err = cli("decompress", damaged_store, output, "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _assert_one_line_error(err, str(damaged_store / "0" / "17.0.0"), "slice 17 is missing")
    _assert_no_output(output)


def test_undecodable_slice_with_a_matching_checksum_is_named(cli, damaged_store, tmp_path):
    import zlib

    garbage = np.random.default_rng(2).bytes(500)
    (damaged_store / "0" / "3.0.0").write_bytes(garbage)
    attributes_file = damaged_store / ".zattrs"
    attributes = json.loads(attributes_file.read_bytes())
    attributes["medlossy"]["chunk_crc32"][3] = zlib.crc32(garbage) & 0xFFFFFFFF
    reseal(attributes, damaged_store)
    attributes_file.write_text(json.dumps(attributes))
    (tmp_path / "out").mkdir()
    output = tmp_path / "out" / "ct.nii.gz"
    code, _, err = cli("decompress", damaged_store, output, "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _assert_one_line_error(err, str(damaged_store / "0" / "3.0.0"), "slice 3 cannot be decoded")
    _assert_no_output(output)


def test_decompress_of_a_folder_that_is_not_a_store(cli, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (tmp_path / "out").mkdir()
    code, _, err = cli("decompress", folder, tmp_path / "out" / "x.nii.gz")
    assert code == EXIT_BAD_INPUT
    _assert_one_line_error(err, str(folder), "not a medlossy store")
    _assert_no_output(tmp_path / "out" / "x.nii.gz")


def test_decompress_to_an_unwritable_format_leaves_nothing(cli, good_store, tmp_path):
    (tmp_path / "out").mkdir()
    output = tmp_path / "out" / "ct.mhd"
    code, _, err = cli("decompress", good_store, output, "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _assert_one_line_error(err, str(output), "cannot write this format")
    _assert_no_output(output)


def test_existing_store_is_not_replaced_without_force(cli, tmp_path, ct_b_crop_file):
    output = tmp_path / "ct.zarr"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    code, _, err = cli("compress", ct_b_crop_file, output, "--ratio", "10", "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _assert_one_line_error(err, str(output), "already exists")
    assert (output / "keep.txt").read_text() == "mine"
    # --force replaces only a store medlossy wrote, never a folder holding other files
    code, _, err = cli("compress", ct_b_crop_file, output, "--ratio", "10", "--workers", "1",
                       "--force", "--quiet")
    assert code == EXIT_BAD_INPUT
    _assert_one_line_error(err, str(output), "medlossy did not write")
    assert os.listdir(output) == ["keep.txt"]
    (output / "keep.txt").unlink()
    output.rmdir()
    for _ in range(2):
        code, _, _ = cli("compress", ct_b_crop_file, output, "--ratio", "10", "--workers",
                         "1", "--force", "--quiet")
        assert code == 0
        assert (output / ".zattrs").exists()
    assert leftovers(tmp_path) == []


def test_existing_file_is_not_replaced_by_decompress_without_force(cli, good_store, tmp_path):
    output = tmp_path / "ct.nii.gz"
    output.write_bytes(b"precious")
    code, _, err = cli("decompress", good_store, output, "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _assert_one_line_error(err, str(output), "already exists")
    assert output.read_bytes() == b"precious"
    code, _, err = cli("decompress", good_store, output, "--workers", "1", "--force")
    assert code == EXIT_BAD_INPUT  # not a volume file: --force does not replace it
    assert output.read_bytes() == b"precious"
    output.unlink()
    for _ in range(2):  # a volume file (here: the one decompress wrote) is replaced
        code, _, _ = cli("decompress", good_store, output, "--workers", "1", "--force")
        assert code == 0
    assert nib.load(output).shape == (96, 80, 24)
    assert leftovers(tmp_path) == []


def test_info_on_a_dicom_series_folder_says_what_it_is(cli, tmp_path, ct_c_dicom):
    # Found by a new user: "not a medlossy store: 0/.zarray is missing" for a DICOM output.
    code, _, err = cli("info", ct_c_dicom)
    assert code == 2
    _assert_one_line_error(err, str(ct_c_dicom), "is a DICOM series folder, not a medlossy store")


@pytest.mark.skipif(shutil.which("bash") is None, reason="ulimit -f through bash")
@pytest.mark.parametrize(("output", "options", "named"), [
    ("dicom", ["--format", "dicom"], "dicom/IM00001.dcm"),
    ("dicom", ["--format", "dicom", "--multiframe"], "dicom/MF00001.dcm"),
    ("ct.nii.gz", [], "ct.nii.gz"),
    ("ct.nrrd", [], "ct.nrrd"),
])
def test_output_on_a_full_disk_is_one_line_naming_the_file(cli, tmp_path, output, options,
                                                            named):
    # A file size limit (ulimit -f) fails the write as a full disk does, without root.
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(40, 300, (256, 256, 3)).astype(np.int16),
                             np.diag([0.8, 0.8, 2.5, 1])), tmp_path / "ct.nii.gz")
    code, _, err = cli("compress", tmp_path / "ct.nii.gz", tmp_path / "s.zarr", "--lossless",
                       "--modality", "CT", "--quiet")
    assert code == 0, err
    out = tmp_path / "out"
    out.mkdir()
    source = Path(__file__).resolve().parents[1] / "src"
    command = " ".join([sys.executable, "-m", "medlossy.cli.main", "decompress",
                        str(tmp_path / "s.zarr"), str(out / output), "--quiet", *options])
    done = subprocess.run(["bash", "-c", f"ulimit -f 64; exec {command}"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(source)}, timeout=120)
    assert done.returncode == EXIT_BAD_INPUT
    _assert_one_line_error(done.stderr, f"{out / named}: File too large")
    _assert_no_output(out / output)
