"""The command line on a real CT crop: compress, info, decompress, psnr, verify."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import leftovers, walk_bytes
from skimage.metrics import peak_signal_noise_ratio

from medlossy import __version__
from medlossy.cli.main import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def store(workdir, ct_b_crop_file) -> Path:
    path = workdir / "ct_r10.zarr"
    code = main(["compress", str(ct_b_crop_file), str(path), "--ratio", "10", "--workers", "1",
                 "--quiet"])
    assert code == 0
    return path


def _info(cli, store: Path) -> dict:
    code, out, err = cli("info", store, "--json")
    assert code == 0 and err == ""
    return json.loads(out)


def test_compress_quiet_prints_only_its_result(cli, ct_b_crop_file, tmp_path):
    # --quiet silences progress and notes, never the result (which goes to stdout)
    code, out, err = cli("compress", ct_b_crop_file, tmp_path / "q.zarr", "--ratio", "10",
                         "--workers", "1", "--quiet")
    assert code == 0
    assert err == ""
    assert out.startswith(f"{tmp_path / 'q.zarr'}: x") and out.count("\n") == 1
    assert (tmp_path / "q.zarr" / "0" / ".zarray").exists()
    assert leftovers(tmp_path) == []


def test_compress_reports_the_ratio_and_psnr(cli, ct_b_crop_file, tmp_path):
    output = tmp_path / "loud.zarr"
    code, out, _ = cli("compress", ct_b_crop_file, output, "--psnr", "50", "--workers", "1")
    assert code == 0
    summary = [line for line in out.splitlines() if line.startswith(str(output))]
    assert len(summary) == 1
    found = re.search(r": x([0-9.]+), ([0-9]+) bytes, PSNR ([0-9.]+) dB", summary[0])
    assert found, summary[0]
    assert int(found[2]) == walk_bytes(output)
    assert float(found[1]) == pytest.approx(2 * 96 * 80 * 24 / walk_bytes(output), abs=1e-3)
    assert float(found[3]) >= 49.9


def test_info_json_fields(cli, store, ct_b_crop_image):
    document = _info(cli, store)
    assert document["shape"] == [96, 80, 24]
    assert document["spacing"] == pytest.approx(list(ct_b_crop_image.header.get_zooms()))
    assert document["dtype"] == "<i2"
    assert document["modality"] == "CT"
    assert document["codec"]["name"] == "jpeg2k"
    assert document["codec"]["wavelet"] == "9/7 irreversible"
    assert document["target"] == {"mode": "ratio", "value": 10.0, "allocation": "psnr"}
    achieved = document["achieved"]
    assert achieved["ratio"] == pytest.approx(10.0, rel=0.01)
    assert achieved["stored_bytes"] == walk_bytes(store) == document["bytes_on_disk"]
    assert achieved["raw_bytes"] == 2 * 96 * 80 * 24
    assert achieved["psnr_db"] > 30
    assert document["source"] == "ct_b_crop.nii.gz"


def test_info_text(cli, store):
    code, out, _ = cli("info", store)
    assert code == 0
    assert "96 x 80 x 24" in out
    assert "(met)" in out
    assert "jpeg2k 9/7 irreversible" in out


def test_decompress_then_psnr_matches_info(cli, store, ct_b_crop_file, tmp_path):
    output = tmp_path / "back.nii.gz"
    code, out, _ = cli("decompress", store, output, "--workers", "1")
    assert code == 0 and "(96, 80, 24) int16" in out
    image = nib.load(output)
    decoded = np.asarray(image.dataobj)
    original = np.asarray(nib.load(ct_b_crop_file).dataobj)
    assert decoded.shape == original.shape and decoded.dtype == np.int16
    np.testing.assert_array_equal(image.affine, nib.load(ct_b_crop_file).affine)

    code, out, _ = cli("psnr", ct_b_crop_file, output, "--json")
    assert code == 0
    measured = json.loads(out)
    expected = peak_signal_noise_ratio(original, decoded, data_range=4096)
    assert measured["psnr_db"] == pytest.approx(expected, rel=1e-9)
    assert measured["data_range"] == 4096
    assert measured["psnr_db"] == pytest.approx(_info(cli, store)["achieved"]["psnr_db"],
                                                rel=1e-5)
    assert measured["max_abs_error"] == np.abs(original.astype(np.int32) - decoded).max()


def test_psnr_accepts_a_store_as_the_test_volume(cli, store, ct_b_crop_file):
    code, out, _ = cli("psnr", ct_b_crop_file, store, "--json")
    assert code == 0
    assert json.loads(out)["psnr_db"] == pytest.approx(
        _info(cli, store)["achieved"]["psnr_db"], rel=1e-5)


def test_psnr_of_identical_volumes_is_null_in_json(cli, ct_b_crop_file):
    code, out, _ = cli("psnr", ct_b_crop_file, ct_b_crop_file, "--json")
    assert code == 0
    document = json.loads(out)
    assert document["psnr_db"] is None and document["max_abs_error"] == 0


def test_psnr_for_mr_uses_the_given_range(cli, mr_path, tmp_path):
    store = tmp_path / "mr.zarr"
    assert cli("compress", mr_path, store, "--ratio", "5", "--modality", "MR", "--range",
               "900", "--workers", "1", "--quiet")[0] == 0
    code, out, _ = cli("psnr", mr_path, store, "--modality", "MR", "--range", "900", "--json")
    assert code == 0
    assert json.loads(out)["data_range"] == 900
    assert json.loads(out)["psnr_db"] == pytest.approx(
        _info(cli, store)["achieved"]["psnr_db"], rel=1e-5)


def test_psnr_refuses_volumes_of_different_shapes(cli, ct_b_crop_file, mr_path):
    code, _, err = cli("psnr", ct_b_crop_file, mr_path)
    assert code == 2
    assert str(mr_path) in err and "differs" in err


def test_verify_a_good_store(cli, store):
    code, out, err = cli("verify", store)
    assert code == 0 and err == ""
    assert out.strip() == f"{store}: all 24 slices and the metadata match their checksums"


def test_lossless_via_cli_is_exact_and_keeps_dtype(cli, ct_a_path, tmp_path):
    assert cli("compress", ct_a_path, tmp_path / "a.zarr", "--lossless", "--workers", "1",
               "--quiet")[0] == 0
    assert cli("decompress", tmp_path / "a.zarr", tmp_path / "a.nii.gz", "--quiet")[0] == 0
    original, back = nib.load(ct_a_path), nib.load(tmp_path / "a.nii.gz")
    assert back.get_data_dtype() == np.int32
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(original.dataobj))
    assert _info(cli, tmp_path / "a.zarr")["achieved"]["psnr_db"] is None


def test_dicom_folder_compresses_from_the_cli(cli, ct_c_dicom, tmp_path):
    store = tmp_path / "dicom.zarr"
    code, _, err = cli("compress", ct_c_dicom, store, "--ratio", "20", "--workers", "2",
                       "--quiet")
    assert code == 0, err
    document = _info(cli, store)
    assert document["shape"] == [512, 512, 20]
    assert document["modality"] == "CT"
    assert document["achieved"]["ratio"] == pytest.approx(20, rel=0.01)
    assert 2 * 512 * 512 * 20 / walk_bytes(store) == pytest.approx(20, rel=0.01)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"medlossy {__version__}"


def test_unreachable_ratio_exits_2_writing_nothing(cli, ct_b_image, tmp_path):
    small = ct_b_image.slicer[60:124, 40:104, 90:98]  # 64 x 64 x 8: metadata dominates
    source = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(small.dataobj), small.affine, small.header), source)
    code, out, err = cli("compress", source, tmp_path / "s.zarr", "--ratio", "300",
                         "--workers", "1", "--quiet")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert f"{source}: codec 'jpeg2k' cannot reach x300: its coarsest setting gives x" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.nii.gz"]


def test_lossless_that_beats_the_ratio_is_stored_not_met(cli, ct_b_crop_file, tmp_path):
    # x1.5 is below what lossless already gives: stored losslessly, flagged, not an error.
    code, _, err = cli("compress", ct_b_crop_file, tmp_path / "s.zarr", "--ratio", "1.5",
                       "--workers", "1")
    assert code == 0 and "not reached" in err
    document = _info(cli, tmp_path / "s.zarr")
    assert document["achieved"]["target_reached"] is False
    assert document["codec"]["setting"]["mode"] == "lossless"
    assert document["achieved"]["ratio"] > 1.5 * 1.01
    code, out, _ = cli("info", tmp_path / "s.zarr")
    assert "(NOT met)" in out


def test_codecs_lists_every_codec_with_its_modes(cli):
    code, out, _ = cli("codecs", "--json")
    assert code == 0
    entries = {entry["name"]: entry for entry in json.loads(out)}
    assert set(entries) >= {"jpeg2k", "htj2k", "jpegxl", "jpegls", "sperr", "sz3", "zfp"}
    assert entries["jpegls"]["modes"] == ["--ratio", "--max-error", "--lossless"]
    assert entries["sz3"]["chunk"] == "3D block of 16 slices"
    assert all(entry["installed"] for entry in entries.values())
    code, out, _ = cli("codecs")
    assert code == 0 and "htj2k" in out and "openjph" in out


def bench_codecs(cli, volume, ratios: str, codecs: str, out):
    """``medlossy bench codecs`` on ``volume``: (exit code, stdout, its codecs.csv rows)."""
    code, stdout, _ = cli("bench", "codecs", volume, "--ratios", ratios, "--codecs", codecs,
                          "--out", out, "--quiet")
    return code, stdout, pd.read_csv(out / "codecs.csv") if code == 0 else None


def test_bench_codecs_writes_the_table_and_figure(cli, ct_b_crop_file, tmp_path):
    out = tmp_path / "bench"
    code, stdout, rows = bench_codecs(cli, ct_b_crop_file, "8,20", "htj2k,sz3", out)
    assert code == 0
    assert list(rows.codec) == ["htj2k", "htj2k", "sz3", "sz3"]
    assert list(rows.ratio_target) == [8, 20, 8, 20]
    reached = rows[rows.reached]
    assert ((reached.ratio / reached.ratio_target - 1).abs() <= 0.01).all()
    assert (rows.psnr_db.diff()[[1, 3]] < 0).all()  # x20 loses more than x8, per codec
    assert (rows.encode_pass_mvox_s > 0).all() and (rows.decode_mvox_s > 0).all()
    assert (out / "codecs.png").stat().st_size > 10_000
    assert "| htj2k |" in (out / "codecs.md").read_text() and "PSNR (dB)" in stdout


def test_bench_codecs_marks_a_ratio_out_of_reach(cli, ct_b_crop_file, tmp_path):
    out = tmp_path / "bench"
    code, _, rows = bench_codecs(cli, ct_b_crop_file, "5,100", "jpegls", out)
    assert code == 0
    assert list(rows.reached) == [True, False] and rows.ratio.isna().tolist() == [False, True]
    assert "cannot reach x100" in rows.refused[1]
    assert "out of reach" in (out / "codecs.md").read_text()


@pytest.mark.parametrize(("arguments", "problem"), [
    (["--ratios", "1,10"], "--ratios must be greater than 1 here (lossy)"),
    (["--ratios", "ten"], "--ratios must be numbers separated by commas"),
    (["--codecs", "webp"], "unknown codec 'webp'"),
    (["--codecs", "blosc"], "codec 'blosc' has no ratio mode to benchmark"),
])
def test_bench_codecs_refuses_bad_arguments_in_one_line(cli, ct_b_crop_file, tmp_path,
                                                        arguments, problem):
    code, _, err = cli("bench", "codecs", ct_b_crop_file, "--out", tmp_path / "b", *arguments)
    assert code == 2 and problem in err and err.strip().count("\n") == 0


def test_dataset_compress_still_takes_ratio_1_as_lossless():
    """Regression: bench codecs' ratio parser once replaced the sweep's, refusing ratio 1."""
    from medlossy.cli.commands import _ratios

    assert _ratios("1,2,5") == [1.0, 2.0, 5.0]
