"""`medlossy dataset compress|report|verify` on small real-CT and synthetic nnU-Net datasets:
output layout, nnU-Net datasets per ratio, manifest, report, and resuming by checksum.

The shared real-CT sweep runs on the process pool; the resume tests on small synthetic
datasets run their tasks serially in-process (see ``run_sweeps_serially``).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import os
import shutil
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import walk_bytes
from test_dataset_validation import (
    CT_CROPS,
    EXIT_BAD_INPUT,
    run_sweeps_serially,
    write_ct_crops,
    write_synthetic_dataset,
)

from medlossy.cli.main import EXIT_CHECK_FAILED
from medlossy.cli.main import main as cli_main
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.experiments.quality import run_quality
from medlossy.experiments.study import _out_of_reach_notes

RATIOS = (1, 5, 10)  # the smallest crop reaches x15.6 at most (its metadata)
MANIFEST_COLUMNS = [
    "case", "split", "channel", "modality", "ratio_target", "ratio_achieved", "target_reached",
    "raw_bytes", "stored_bytes", "psnr_db", "data_range", "mse", "max_abs_error",
    "encode_seconds", "decode_seconds", "codec", "tile", "store", "decoded", "store_crc32",
    "decoded_sha256",
]
CT_PEAK = 4096.0


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tag(ratio: float) -> str:
    return f"r{ratio:g}"


def compress(source: Path, out: Path, ratios: str, *extra: str) -> int:
    return cli_main(["dataset", "compress", str(source), "--ratios", ratios, "--out", str(out),
                     "--quiet", "--workers", "2", *extra])


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every task output: stores and their chunks, decoded images, parts."""
    paths = [*out.glob("stores/*/*.zarr"), *out.glob("stores/*/*.zarr/*"),
             *out.glob("stores/*/*.zarr/0/*"),
             *out.glob("parts/*/*.json"), *out.glob("nnunet/*/images*/*")]
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def changed(before: dict, after: dict) -> set[str]:
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


def task_outputs(out: Path, ratio: float, stem: str) -> set[str]:
    """Relative paths that belong to one task (store + chunks, part, decoded image)."""
    sweep = json.loads((out / "sweep.json").read_text())
    store = out / "stores" / tag(ratio) / f"{stem}.zarr"
    paths = {store, *store.rglob("*"), out / "parts" / tag(ratio) / f"{stem}.json",
             *(out / "nnunet" / sweep["datasets"][tag(ratio)]).glob(f"images*/{stem}.nii.gz")}
    return {str(p.relative_to(out)) for p in paths}


# ---------------------------------------------------------------------------------------------
# One sweep of a small real-CT dataset at x1, x5, x10, shared by the layout tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_source(reference_files: Path, tmp_path_factory) -> Path:
    return write_ct_crops(reference_files, tmp_path_factory.mktemp("source") / "Dataset500_Small")


@pytest.fixture(scope="module")
def ct_sweep(ct_source: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    assert compress(ct_source, out, ",".join(map(str, RATIOS))) == 0
    return out


@pytest.fixture(scope="module")
def manifest(ct_sweep: Path) -> pd.DataFrame:
    return pd.read_csv(ct_sweep / "manifest.csv")


def source_images(source: Path) -> dict[tuple[str, str], Path]:
    """(split, file name) -> source image."""
    return {(split, path.name): path for split in ("Tr", "Ts")
            for path in sorted((source / f"images{split}").glob("*.nii.gz"))}


def dataset_folder(out: Path, ratio: float) -> Path:
    sweep = json.loads((out / "sweep.json").read_text())
    return out / "nnunet" / sweep["datasets"][tag(ratio)]


def test_one_store_per_case_channel_and_ratio(ct_sweep: Path) -> None:
    expected = {f"stores/{tag(r)}/{name}_0000.zarr" for r in RATIOS for _, name in CT_CROPS}
    found = {str(p.relative_to(ct_sweep)) for p in ct_sweep.glob("stores/*/*")}
    assert found == expected
    for store in expected:
        assert (ct_sweep / store / ".zattrs").is_file()


def test_every_ratio_gets_its_own_dataset_id(ct_sweep: Path, ct_source: Path) -> None:
    from medlossy.datasets.sweep import default_first_id

    names = sorted(p.name for p in (ct_sweep / "nnunet").iterdir())
    first = default_first_id(ct_source)  # no --base-id: from the source's path
    expected = [f"Dataset{500 + (first - 500 + i) % 500:03d}_Small_{tag(r)}"
                for i, r in enumerate(RATIOS)]
    assert names == sorted(expected)
    ids = [name.split("_")[0] for name in names]
    assert len(set(ids)) == len(RATIOS)
    sweep = json.loads((ct_sweep / "sweep.json").read_text())
    assert sweep["datasets"] == {tag(r): name for r, name in zip(RATIOS, expected,
                                                                 strict=True)}
    assert sweep["ratios"] == [float(r) for r in RATIOS]


@pytest.mark.parametrize("ratio", RATIOS)
def test_decoded_images_keep_the_source_geometry(ct_sweep: Path, ct_source: Path,
                                                 ratio: float) -> None:
    folder = dataset_folder(ct_sweep, ratio)
    sources = source_images(ct_source)
    decoded = {(split, p.name): p for split in ("Tr", "Ts")
               for p in (folder / f"images{split}").glob("*.nii.gz")}
    assert decoded.keys() == sources.keys()
    for key, source_path in sources.items():
        source, image = nib.load(source_path), nib.load(decoded[key])
        assert image.shape == source.shape
        np.testing.assert_allclose(image.affine, source.affine, rtol=0, atol=1e-5)
        assert image.get_data_dtype() == source.get_data_dtype() == np.int32


@pytest.mark.parametrize("ratio", RATIOS)
def test_labels_are_copied_bit_exact(ct_sweep: Path, ct_source: Path, ratio: float) -> None:
    labels = dataset_folder(ct_sweep, ratio) / "labelsTr"
    sources = sorted((ct_source / "labelsTr").iterdir())
    assert sorted(p.name for p in labels.iterdir()) == [p.name for p in sources]
    for source in sources:
        assert sha256(labels / source.name) == sha256(source)


@pytest.mark.parametrize("ratio", RATIOS)
def test_dataset_json_per_ratio(ct_sweep: Path, ct_source: Path, ratio: float) -> None:
    original = json.loads((ct_source / "dataset.json").read_text())
    folder = dataset_folder(ct_sweep, ratio)
    document = json.loads((folder / "dataset.json").read_text())
    assert document["numTraining"] == 2
    assert document["labels"] == original["labels"]
    assert document["channel_names"] == original["channel_names"]
    assert document["file_ending"] == ".nii.gz"
    assert document["name"] == f"Small_{tag(ratio)}"
    assert document["medlossy"]["ratio"] == ratio
    assert document["medlossy"]["lossless"] is (ratio == 1)


def test_manifest_has_one_row_per_case_channel_and_ratio(manifest: pd.DataFrame) -> None:
    assert list(manifest.columns) == MANIFEST_COLUMNS
    keys = list(zip(manifest["case"], manifest["channel"], manifest["ratio_target"],
                    strict=True))
    assert len(keys) == len(set(keys)) == len(CT_CROPS) * len(RATIOS)
    assert set(keys) == {(name, 0, float(r)) for _, name in CT_CROPS for r in RATIOS}
    splits = dict(zip(manifest["case"], manifest["split"], strict=False))
    assert splits == {name: split for split, name in CT_CROPS}


def test_manifest_bytes_are_the_bytes_on_disk(manifest: pd.DataFrame, ct_source: Path,
                                               ct_sweep: Path) -> None:
    shapes = {name: nib.load(path).shape for (_, name), path in source_images(ct_source).items()}
    for row in manifest.itertuples():
        assert row.stored_bytes == walk_bytes(ct_sweep / row.store)
        assert row.raw_bytes == 2 * np.prod(shapes[f"{row.case}_0000.nii.gz"])
        assert row.ratio_achieved == pytest.approx(row.raw_bytes / row.stored_bytes, rel=1e-4)


def test_lossy_ratio_lands_within_one_percent_where_reachable(manifest: pd.DataFrame) -> None:
    lossy = manifest[manifest["ratio_target"] > 1]
    reached = lossy[lossy["target_reached"]]
    assert len(reached) == len(lossy)  # a ratio out of reach fails the sweep up front
    assert (reached["ratio_target"] == 5).sum() == len(CT_CROPS)
    error = (reached["ratio_achieved"] - reached["ratio_target"]).abs() / reached["ratio_target"]
    assert (error <= 0.01).all(), reached[["case", "ratio_target", "ratio_achieved"]]
    # A target not reached is reported as such, never as the target.
    missed = lossy[~lossy["target_reached"]]
    assert (missed["ratio_achieved"] < missed["ratio_target"] * 0.99).all()


def test_lossless_decoded_images_are_bit_exact(ct_sweep: Path, ct_source: Path,
                                               manifest: pd.DataFrame) -> None:
    folder = dataset_folder(ct_sweep, 1)
    for (split, name), source in source_images(ct_source).items():
        decoded = np.asarray(nib.load(folder / f"images{split}" / name).dataobj)
        original = np.asarray(nib.load(source).dataobj)
        assert decoded.dtype == original.dtype
        assert np.array_equal(decoded, original)
    lossless = manifest[manifest["ratio_target"] == 1]
    assert (lossless["max_abs_error"] == 0).all()
    assert lossless["psnr_db"].isna().all()  # infinite PSNR is stored empty


def _psnr(source: Path, decoded: Path) -> float:
    reference = np.asarray(nib.load(source).dataobj, dtype=np.float64)
    test = np.asarray(nib.load(decoded).dataobj, dtype=np.float64)
    return 10 * np.log10(CT_PEAK**2 / np.mean((reference - test) ** 2))


def test_manifest_psnr_matches_the_decoded_images(ct_sweep: Path, ct_source: Path,
                                                  manifest: pd.DataFrame) -> None:
    sources = {name: path for (_, name), path in source_images(ct_source).items()}
    for row in manifest[manifest["ratio_target"] > 1].itertuples():
        expected = _psnr(sources[Path(row.decoded).name], ct_sweep / row.decoded)
        assert row.psnr_db == pytest.approx(expected, abs=0.01)
        assert row.data_range == CT_PEAK


# ---------------------------------------------------------------------------------------------
# dataset report
# ---------------------------------------------------------------------------------------------


def test_report_per_ratio(ct_sweep: Path, ct_source: Path, cli) -> None:
    code, stdout, stderr = cli("dataset", "report", ct_sweep)
    assert code == 0, stderr
    report = pd.read_csv(ct_sweep / "report.csv")
    assert list(report["ratio_target"]) == [float(r) for r in RATIOS]
    manifest = pd.read_csv(ct_sweep / "manifest.csv")
    raw = sum(2 * np.prod(nib.load(p).shape) for p in source_images(ct_source).values())
    markdown = (ct_sweep / "report.md").read_text()
    for row in report.itertuples():
        stored = walk_bytes(ct_sweep / "stores" / tag(row.ratio_target))
        assert row.images == len(CT_CROPS)
        assert row.raw_bytes == raw
        assert row.stored_bytes == stored
        assert row.ratio_achieved == pytest.approx(raw / stored, abs=5e-4)
        psnr = manifest.loc[manifest["ratio_target"] == row.ratio_target, "psnr_db"]
        if row.ratio_target == 1:
            assert np.isinf(row.psnr_mean_db) and np.isinf(row.psnr_min_db)
        else:
            assert row.psnr_mean_db == pytest.approx(psnr.mean(), abs=0.005)
            assert row.psnr_min_db == pytest.approx(psnr.min(), abs=0.005)
        # The same row in the printed table and in report.md.
        line = f"| {row.ratio_target:g} | {row.images} | {raw} | {stored} | " \
               f"{row.ratio_achieved:g} |"
        assert line in stdout
        assert line in markdown
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == len(RATIOS) + 1  # header and one row per ratio


def test_report_of_a_folder_that_is_no_sweep(tmp_path: Path, cli) -> None:
    code, _, stderr = cli("dataset", "report", tmp_path)
    assert code == EXIT_BAD_INPUT
    assert len(stderr.strip().splitlines()) == 1
    assert "sweep.json" in stderr and "not a finished sweep" in stderr


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------


def test_rerun_of_a_finished_sweep_reuses_every_task(ct_sweep: Path, ct_source: Path) -> None:
    before = snapshot(ct_sweep)
    manifest = (ct_sweep / "manifest.csv").read_bytes()
    assert len(before) > 3 * len(RATIOS) * len(CT_CROPS)
    assert compress(ct_source, ct_sweep, ",".join(map(str, RATIOS))) == 0
    assert snapshot(ct_sweep) == before
    assert (ct_sweep / "manifest.csv").read_bytes() == manifest


@pytest.fixture
def serial(monkeypatch: pytest.MonkeyPatch) -> None:
    run_sweeps_serially(monkeypatch)


@pytest.fixture
def small_sweep(tmp_path: Path, serial) -> tuple[Path, Path]:
    source = write_synthetic_dataset(tmp_path / "Dataset510_Syn", {"syn_a": 1, "syn_b": 2})
    out = tmp_path / "sweep"
    assert compress(source, out, "1,5") == 0
    return source, out


def _corrupt_chunk(out: Path) -> None:
    chunk = out / "stores" / "r5" / "syn_a_0000.zarr" / "0" / "3.0.0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def _delete_decoded(out: Path) -> None:
    (dataset_folder(out, 5) / "imagesTr" / "syn_a_0000.nii.gz").unlink()


def _truncate_part(out: Path) -> None:
    part = out / "parts" / "r5" / "syn_a_0000.json"
    part.write_bytes(part.read_bytes()[:50])


@pytest.mark.parametrize("damage", [_corrupt_chunk, _delete_decoded, _truncate_part],
                         ids=["corrupt_chunk", "deleted_decoded", "truncated_part"])
def test_damaged_task_is_detected_and_redone(small_sweep, cli, damage) -> None:
    source, out = small_sweep
    manifest = pd.read_csv(out / "manifest.csv")
    outputs = task_outputs(out, 5, "syn_a_0000")
    damage(out)
    before = snapshot(out)
    code, _, stderr = cli("dataset", "verify", out)
    assert code == EXIT_CHECK_FAILED
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "1 problem(s)" in stderr
    assert str(out / "stores" / "r5" / "syn_a_0000.zarr") in stderr
    assert compress(source, out, "1,5") == 0
    redone = changed(before, snapshot(out))
    assert redone  # the task was done again ...
    assert redone <= outputs | task_outputs(out, 5, "syn_a_0000")  # ... and nothing else
    assert "parts/r5/syn_a_0000.json" in redone
    code, stdout, stderr = cli("dataset", "verify", out)
    assert code == 0, stderr
    assert "every store, decoded image and label matches" in stdout
    again = pd.read_csv(out / "manifest.csv")
    columns = ["case", "channel", "ratio_target", "psnr_db", "store_crc32", "decoded_sha256"]
    pd.testing.assert_frame_equal(again[columns], manifest[columns])
    # Same codestreams; the store's metadata records encode seconds, which may take a few
    # more or fewer characters, so stored bytes and the ratio may move by that much.
    assert (again["stored_bytes"] - manifest["stored_bytes"]).abs().max() <= 8
    pd.testing.assert_series_equal(again["ratio_achieved"], manifest["ratio_achieved"],
                                   rtol=2e-3)


def test_verify_names_a_label_copy_that_changed(small_sweep, cli) -> None:
    _, out = small_sweep
    copy = dataset_folder(out, 1) / "labelsTr" / "syn_b.nii.gz"
    label = nib.load(copy)
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 2
    nib.save(nib.Nifti1Image(values, label.affine), copy)
    code, _, stderr = cli("dataset", "verify", out)
    assert code == EXIT_CHECK_FAILED
    assert f"{copy}: label differs" in stderr


def _add_to_voxels(image: Path, value: int) -> np.ndarray:
    """Rewrite ``image`` with ``value`` added to every voxel; returns the new voxels."""
    nifti = nib.load(image)
    values = np.asarray(nifti.dataobj) + value
    nib.save(nib.Nifti1Image(values, nifti.affine, nifti.header), image)
    return values


def test_a_resumed_sweep_redoes_a_case_whose_source_changed(small_sweep, cli) -> None:
    # Found by a tester: a rerun reused the parts of a rewritten source (exit 0, silent).
    source, out = small_sweep
    before = snapshot(out)
    values = _add_to_voxels(source / "imagesTr" / "syn_b_0000.nii.gz", 500)
    code, _, stderr = cli("dataset", "compress", source, "--ratios", "1,5", "--out", out,
                          "--workers", "2", "--quiet")
    assert code == 0
    assert "note: syn_b: source changed since the last run; recompressing" in stderr
    assert "syn_a" not in stderr
    redone = changed(before, snapshot(out))
    assert redone and all("syn_b" in key for key in redone)
    assert {"parts/r1/syn_b_0000.json", "parts/r5/syn_b_0000.json"} <= redone
    decoded = dataset_folder(out, 1) / "imagesTr" / "syn_b_0000.nii.gz"
    assert np.array_equal(np.asarray(nib.load(decoded).dataobj), values)
    assert cli("dataset", "verify", out)[0] == 0


def test_a_resumed_sweep_fails_on_a_source_truncated_since(small_sweep, cli) -> None:
    source, out = small_sweep
    image = source / "imagesTr" / "syn_a_0000.nii.gz"
    image.write_bytes(image.read_bytes()[:3000])
    code, _, stderr = cli("dataset", "compress", source, "--ratios", "1,5", "--out", out,
                          "--workers", "2", "--quiet")
    assert code != 0 and "syn_a_0000.nii.gz" in stderr
    code, _, _ = cli("dataset", "compress", source, "--ratios", "1,5", "--out", out,
                     "--workers", "2", "--quiet", "--skip-bad")
    assert code == 0
    assert list(json.loads((out / "sweep.json").read_text())["bad_cases"]) == ["syn_a"]
    assert set(pd.read_csv(out / "manifest.csv")["case"]) == {"syn_b"}
    document = json.loads((dataset_folder(out, 1) / "dataset.json").read_text())
    assert document["numTraining"] == 1


def test_parts_without_a_recorded_source_are_still_reused(small_sweep, cli) -> None:
    # Parts written before sources were recorded: unknown, not a reason to redo the sweep.
    source, out = small_sweep
    for part in out.glob("parts/*/*.json"):
        row = json.loads(part.read_text())
        del row["source"]
        part.write_text(json.dumps(row))
    before = snapshot(out)
    _add_to_voxels(source / "imagesTr" / "syn_b_0000.nii.gz", 500)
    assert compress(source, out, "1,5") == 0
    assert snapshot(out) == before
    assert cli("dataset", "verify", out)[0] == 0


def test_verify_names_a_source_changed_since_the_sweep(small_sweep, cli) -> None:
    source, out = small_sweep
    image = source / "imagesTr" / "syn_a_0000.nii.gz"
    _add_to_voxels(image, 500)
    code, _, stderr = cli("dataset", "verify", out)
    assert code == EXIT_CHECK_FAILED
    assert f"{image}: changed since the sweep compressed it (case syn_a" in stderr
    assert "syn_b" not in stderr


def test_adding_a_ratio_runs_only_the_new_ratio(tmp_path: Path, serial) -> None:
    # 64 x 64 slices: at 48 x 48 the sealed metadata's bytes put x10 out of reach (x9.77)
    source = write_synthetic_dataset(tmp_path / "Dataset520_Syn", {"syn_a": 1, "syn_b": 2},
                                     shape=(64, 64, 8))
    out = tmp_path / "sweep"
    assert compress(source, out, "1,10") == 0
    folders = sorted(p.name for p in (out / "nnunet").iterdir())
    before = snapshot(out)
    assert compress(source, out, "1,5,10") == 0
    after = snapshot(out)
    assert {key for key in changed(before, after)} == {key for key in after
                                                        if key not in before}
    new = {key for key in after if key not in before}
    assert new and all("r5" in key for key in new)
    # Earlier ratios keep their nnU-Net datasets; every dataset id is used once.
    now = sorted(p.name for p in (out / "nnunet").iterdir())
    assert set(folders) < set(now) and len(now) == 3
    ids = [name.split("_")[0] for name in now]
    assert len(set(ids)) == len(ids)
    manifest = pd.read_csv(out / "manifest.csv")
    assert sorted(set(manifest["ratio_target"])) == [1.0, 5.0, 10.0]
    assert len(manifest) == 2 * 3


def test_verify_works_from_any_working_directory(tmp_path: Path, monkeypatch, cli,
                                                serial) -> None:
    write_synthetic_dataset(tmp_path / "Dataset530_Syn", {"syn_a": 1})
    monkeypatch.chdir(tmp_path)
    assert cli_main(["dataset", "compress", "Dataset530_Syn", "--ratios", "1", "--out", "sweep",
                     "--quiet", "--workers", "1"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, stderr = cli("dataset", "verify", tmp_path / "sweep")
    assert code == 0, stderr


# ---------------------------------------------------------------------------------------------
# One source per sweep folder; nnU-Net ids that do not collide between sources
# ---------------------------------------------------------------------------------------------


def _sweep_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def test_a_sweep_folder_holds_one_source(tmp_path: Path, serial, cli) -> None:
    first = write_synthetic_dataset(tmp_path / "Dataset540_First", {"f_a": 1})
    second = write_synthetic_dataset(tmp_path / "Dataset541_Second", {"s_a": 2})
    out = tmp_path / "sweep"
    assert compress(first, out, "1,5") == 0
    before = _sweep_files(out)
    code, _, stderr = cli("dataset", "compress", second, "--ratios", "1,5", "--out", out,
                               "--quiet", "--workers", "1")
    assert code == EXIT_BAD_INPUT
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(first) in lines[0] and str(second) in lines[0], stderr
    assert _sweep_files(out) == before  # nothing merged, nothing rewritten
    assert compress(first, out, "1,5") == 0  # the same source resumes as before


def test_an_ordinary_folder_is_not_a_sweep_out(tmp_path: Path, serial, cli) -> None:
    source = write_synthetic_dataset(tmp_path / "Dataset542_Syn", {"o_a": 1})
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, stderr = cli("dataset", "compress", source, "--ratios", "1", "--out", out,
                          "--quiet", "--workers", "1")
    assert code == EXIT_BAD_INPUT
    assert "not a medlossy sweep folder" in stderr and len(stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_verify_catches_a_mixed_sweep_folder(tmp_path: Path, serial, cli) -> None:
    """The folder the old code made when a second source was swept into the same --out."""
    from medlossy.datasets.sweep import write_manifest

    first = write_synthetic_dataset(tmp_path / "Dataset543_First", {"f_a": 1})
    second = write_synthetic_dataset(tmp_path / "Dataset544_Second", {"s_a": 2})
    out, other = tmp_path / "sweep", tmp_path / "other"
    assert compress(first, out, "1", "--base-id", "800") == 0
    assert compress(second, other, "1", "--base-id", "800") == 0
    for folder in ("nnunet", "stores", "parts"):
        shutil.copytree(other / folder, out / folder, dirs_exist_ok=True)
    write_manifest(out)
    code, _, stderr = cli("dataset", "verify", out)
    assert code == EXIT_CHECK_FAILED
    assert "Dataset800_Second_r1: not a dataset of this sweep" in stderr
    assert "2 datasets share one nnU-Net id: Dataset800_First_r1, Dataset800_Second_r1" \
        in stderr
    assert "manifest row of case s_a is not in this sweep's datasets" in stderr


def _ids(out: Path) -> list[int]:
    names = json.loads((out / "sweep.json").read_text())["datasets"].values()
    return sorted(int(name.split("_")[0].removeprefix("Dataset")) for name in names)


def test_default_ids_of_two_sources_sharing_nnunet_raw_do_not_collide(
        tmp_path: Path, serial, monkeypatch) -> None:
    from medlossy.datasets.sweep import default_first_id

    raw = tmp_path / "nnUNet_raw"
    raw.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    # x2 and x5: at 48 x 48 slices the sealed metadata's bytes put x10 out of reach (x9.78)
    first = write_synthetic_dataset(tmp_path / "Dataset545_Syn", {"a_a": 1})
    second = write_synthetic_dataset(tmp_path / "elsewhere" / "Dataset545_Syn", {"b_a": 2})
    # Someone's dataset already holds the id the first source's hash points at.
    taken = default_first_id(first)
    (raw / f"Dataset{taken:03d}_Someone").mkdir()
    assert compress(first, tmp_path / "one", "1,2,5") == 0
    for folder in (tmp_path / "one" / "nnunet").iterdir():  # shared, as users do
        (raw / folder.name).symlink_to(folder, target_is_directory=True)
    assert compress(second, tmp_path / "two", "1,2,5") == 0
    one, two = _ids(tmp_path / "one"), _ids(tmp_path / "two")
    assert taken not in one
    assert not set(one) & set(two)
    assert all(500 <= i <= 999 for i in one + two)
    names = [p.name.split("_")[0] for p in raw.iterdir()]
    assert len(names) == len(set(names)) == 4
    # A rerun keeps its ids, though its own datasets are now in nnUNet_raw.
    assert compress(first, tmp_path / "one", "1,2,5") == 0
    assert _ids(tmp_path / "one") == one


# ---------------------------------------------------------------------------------------------
# nnU-Net's own integrity check
# ---------------------------------------------------------------------------------------------


class _InProcessPool:
    """multiprocessing.Pool's starmap, run here: nnU-Net's spawn pool would import torch again
    in each worker, and its fork pool (listing the images) forked from this threaded process,
    which hung the suite for 19 minutes (tests/conftest.py now fails any such fork)."""

    def __init__(self, processes: int) -> None:
        pass

    def __enter__(self) -> _InProcessPool:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def starmap(self, function, arguments):
        return list(itertools.starmap(function, arguments))


@pytest.mark.parametrize("ratio", [10])
def test_nnunet_accepts_the_decoded_dataset(ct_sweep: Path, ratio: float, monkeypatch,
                                            capsys) -> None:
    module = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    in_process = types.SimpleNamespace(
        get_context=lambda method: types.SimpleNamespace(Pool=_InProcessPool))
    monkeypatch.setattr(module, "multiprocessing", in_process)
    monkeypatch.setattr(importlib.import_module("nnunetv2.utilities.utils"), "Pool",
                        _InProcessPool)
    module.verify_dataset_integrity(str(dataset_folder(ct_sweep, ratio)), num_processes=1)
    printed = capsys.readouterr().out
    assert "verify_dataset_integrity Done" in printed
    # nnU-Net only prints (does not raise) on affine, origin and direction mismatches.
    assert "Error" not in printed and "Warning" not in printed, printed


def test_sweep_leaves_no_temporaries(ct_sweep: Path) -> None:
    partial = [str(p) for p in ct_sweep.rglob("*") if ".partial-" in p.name or ".old-" in p.name]
    assert partial == []
    assert os.listdir(ct_sweep / "parts") and sorted(os.listdir(ct_sweep / "parts")) == \
        sorted(tag(r) for r in RATIOS)


def test_sweep_with_another_codec_and_a_rerun_with_a_third(tmp_path: Path, serial) -> None:
    """--codec: every lossy ratio's stores use it (ratio 1 is stored losslessly as without
    --codec); a rerun with another codec redoes the lossy tasks and keeps the lossless one."""
    source = write_synthetic_dataset(tmp_path / "Dataset540_Syn", {"syn_a": 1})
    out = tmp_path / "sweep"
    assert compress(source, out, "1,5", "--codec", "htj2k") == 0
    manifest = pd.read_csv(out / "manifest.csv").sort_values("ratio_target")
    assert list(manifest.codec) == ["jpeg2k", "htj2k"]
    assert manifest.target_reached.all()
    document = json.loads((dataset_folder(out, 5) / "dataset.json").read_text())
    assert document["medlossy"]["codec"] == "htj2k"
    assert compress(source, out, "1,5", "--codec", "sz3") == 0
    manifest = pd.read_csv(out / "manifest.csv").sort_values("ratio_target")
    assert list(manifest.codec) == ["jpeg2k", "sz3"]
    zarray = json.loads((out / "stores" / "r5" / "syn_a_0000.zarr" / "0" / ".zarray")
                        .read_text())
    assert zarray["chunks"][0] == 16 and zarray["compressor"]["codec"] == "sz3"


def test_sweep_refuses_a_lossless_only_codec_for_lossy_ratios(tmp_path: Path, cli) -> None:
    source = write_synthetic_dataset(tmp_path / "Dataset541_Syn", {"syn_a": 1})
    code, _, err = cli("dataset", "compress", source, "--ratios", "1,5", "--out",
                       tmp_path / "sweep", "--codec", "blosc", "--quiet")
    assert code == EXIT_BAD_INPUT and "codec 'blosc' has no ratio mode" in err


def test_sweep_refuses_a_ratio_out_of_the_codecs_reach_before_writing(tmp_path: Path, cli,
                                                                      serial) -> None:
    # CharLS's NEAR <= 255 caps JPEG-LS near x30 on CT: x100 cannot be met, x5 can.
    source = write_synthetic_dataset(tmp_path / "Dataset542_Syn", {"syn_a": 1, "syn_b": 2})
    out = tmp_path / "sweep"
    code, out_text, err = cli("dataset", "compress", source, "--ratios", "1,5,100", "--out",
                              out, "--codec", "jpegls", "--quiet")
    assert code == EXIT_BAD_INPUT and out_text == ""
    assert err.strip().count("\n") == 0
    assert "syn_a_0000.nii.gz: ratio x100 is out of the reach of codec 'jpegls': its coarsest " \
           "setting gives x" in err
    assert not out.exists()
    assert compress(source, out, "1,5", "--codec", "jpegls") == 0  # reachable: as before


def test_a_study_sweep_leaves_a_ratio_out_of_reach_out_and_says_why(tmp_path: Path,
                                                                     serial) -> None:
    source = write_synthetic_dataset(tmp_path / "Dataset543_Syn", {"syn_a": 1, "syn_b": 2})
    manifest = run_quality(open_raw_dataset(source), tmp_path / "sweep", (1, 5, 100), base_id=600,
                           codec="jpegls")
    assert sorted(set(manifest.ratio_target)) == [1.0, 5.0]
    assert manifest.target_reached.all()
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert list(sweep["out_of_reach"]) == ["r100"]
    assert "ratio x100 is out of the reach of codec 'jpegls': its coarsest setting gives x" in \
        sweep["out_of_reach"]["r100"]
    assert not (tmp_path / "sweep" / "stores" / "r100").exists()
    assert _out_of_reach_notes(tmp_path / "sweep")[0].startswith(
        "x100 on sweep (syn_a_0000.nii.gz: its coarsest setting gives x")


def test_per_ratio_search_is_the_fallback_and_layered_is_as_good(
        ct_source: Path, manifest: pd.DataFrame, tmp_path: Path) -> None:
    """`--per-ratio-search`: every ratio its own rate search (the way before one-encode
    sweeps); the default layered sweep lands as close and keeps the PSNR (within where each
    search happens to land inside its 0.4%)."""
    out = tmp_path / "searched"
    assert compress(ct_source, out, "5,10", "--per-ratio-search") == 0
    searched = pd.read_csv(out / "manifest.csv")
    assert len(searched) == len(manifest[manifest["ratio_target"].isin([5, 10])])
    merged = searched.merge(manifest, on=["case", "channel", "ratio_target"],
                            suffixes=("_search", "_layered"))
    assert len(merged) == len(searched)
    for _, row in merged.iterrows():
        for way in ("search", "layered"):
            if row[f"target_reached_{way}"]:
                assert abs(row[f"ratio_achieved_{way}"] / row["ratio_target"] - 1) <= 0.01
        assert row["target_reached_layered"] == row["target_reached_search"]
        assert row["psnr_db_layered"] >= row["psnr_db_search"] - 0.15, row["case"]
    stores = [json.loads((out / p / ".zattrs").read_text())["medlossy"]["codec"]["setting"]
              for p in searched["store"]]
    assert {s["mode"] for s in stores} == {"quality"}  # one PSNR target each, searched


def test_dataset_json_names_the_codec_the_stores_used(tmp_path: Path, serial) -> None:
    """Data beyond 16 bits is stored at ratio 1 with Blosc (JPEG 2000 cannot hold it): the
    nnU-Net dataset.json said "jpeg2k" and "decoded from lossy jpeg2k stores" there."""
    source = write_synthetic_dataset(tmp_path / "Dataset541_Wide", {"wide_a": 1})
    image_path = source / "imagesTr" / "wide_a_0000.nii.gz"
    image = nib.load(image_path)
    codes = np.asarray(image.dataobj, dtype=np.int32)
    noise = np.random.default_rng(0).integers(0, 100, codes.shape, dtype=np.int32)
    wide = (codes - codes.min()) * 100 + noise  # a span of ~119000 in steps of 1: 17 bits
    nib.save(nib.Nifti1Image(wide, image.affine), image_path)
    out = tmp_path / "sweep"

    assert compress(source, out, "1,5") == 0

    lossless = json.loads((dataset_folder(out, 1) / "dataset.json").read_text())["medlossy"]
    lossy = json.loads((dataset_folder(out, 5) / "dataset.json").read_text())["medlossy"]
    assert lossless["codec"] == "blosc" and "lossless blosc" in lossless["note"]
    assert lossy["codec"] == "jpeg2k" and "lossy jpeg2k" in lossy["note"]


# ---------------------------------------------------------------------------------------------
# A copied or moved sweep folder checks and reuses its own files, never the original's
# ---------------------------------------------------------------------------------------------


def _tiny_sweep(tmp_path: Path) -> Path:
    source = write_synthetic_dataset(tmp_path / "Dataset550_Syn", {"m_a": 1, "m_b": 2},
                                     shape=(32, 32, 8))
    out = tmp_path / "sweep"
    assert compress(source, out, "1,2") == 0
    return out


def test_verify_of_a_copied_sweep_checks_the_copy(tmp_path: Path, serial, cli) -> None:
    """Found by a tester: verify of a copy checked the original's stores (absolute paths in
    the manifest), so a tampered copy passed."""
    out = _tiny_sweep(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    store = copy / "stores" / "r2" / "m_a_0000.zarr"
    attributes = json.loads((store / ".zattrs").read_text())
    attributes["medlossy"]["intensity"]["offset"] += 1
    (store / ".zattrs").write_text(json.dumps(attributes))
    code, _, stderr = cli("dataset", "verify", copy)
    assert code == EXIT_CHECK_FAILED
    assert f"{store}: store or decoded image does not match" in stderr
    code, _, stderr = cli("dataset", "verify", out)
    assert code == 0, stderr


def test_a_moved_sweep_verifies_reports_and_resumes(tmp_path: Path, serial, cli) -> None:
    """Also a moved sweep written by earlier versions (absolute paths in its parts and
    manifest): they are rebased onto the folder, a path outside it is not read."""
    out = _tiny_sweep(tmp_path)
    manifest = pd.read_csv(out / "manifest.csv")
    for part in out.glob("parts/*/*.json"):  # as earlier versions wrote them
        row = json.loads(part.read_text())
        row.update(store=str(out / row["store"]), decoded=str(out / row["decoded"]))
        part.write_text(json.dumps(row))
    manifest.assign(store=[str(out / p) for p in manifest["store"]],
                    decoded=[str(out / p) for p in manifest["decoded"]]).to_csv(
        out / "manifest.csv", index=False)
    moved = tmp_path / "moved"
    out.rename(moved)
    code, _, stderr = cli("dataset", "verify", moved)
    assert code == 0, stderr
    code, stdout, stderr = cli("dataset", "report", moved)
    assert code == 0 and "| 2 " in stdout, stderr
    before = snapshot(moved)
    assert compress(tmp_path / "Dataset550_Syn", moved, "1,2") == 0
    assert snapshot(moved) == before  # every task reused
    again = pd.read_csv(moved / "manifest.csv")
    assert list(again["store"]) == list(manifest["store"])
    assert not any(Path(p).is_absolute() for p in [*again["store"], *again["decoded"]])
    manifest.loc[0, "decoded"] = str(tmp_path / "elsewhere.nii.gz")
    manifest.to_csv(moved / "manifest.csv", index=False)
    code, _, stderr = cli("dataset", "verify", moved)
    assert code == EXIT_CHECK_FAILED
    assert f"{tmp_path / 'elsewhere.nii.gz'}: outside the sweep folder {moved}" in stderr


def test_a_moved_study_reuses_the_sweep_of_its_cropped_copy(tmp_path: Path, serial,
                                                            cli) -> None:
    """A study sweeps a cropped copy in its own prepared/; its sweep recorded the copy as
    the source, so the moved study's sweep was refused as another source's."""
    from medlossy.datasets.preparation import crop_dataset

    source = write_synthetic_dataset(tmp_path / "Dataset551_Syn", {"m_a": 1, "m_b": 2},
                                     shape=(64, 64, 8))

    def sweep(study: Path, **origin: Path) -> pd.DataFrame:
        cropped = crop_dataset(open_raw_dataset(source), [1], 50.0, study / "prepared")
        return run_quality(cropped, study / "sweeps" / "syn", (1, 2), base_id=600, **origin)

    sweep(tmp_path / "study")  # as earlier versions: the copy recorded as the source
    sweep(tmp_path / "study", origin=source)  # resumes in place
    (tmp_path / "study").rename(tmp_path / "moved")
    before = snapshot(tmp_path / "moved" / "sweeps" / "syn")
    assert len(sweep(tmp_path / "moved", origin=source)) == 4
    assert snapshot(tmp_path / "moved" / "sweeps" / "syn") == before  # every task reused
    code, _, stderr = cli("dataset", "verify", tmp_path / "moved" / "sweeps" / "syn")
    assert code == 0, stderr


def test_case_names_of_digits_stay_names(tmp_path: Path, serial, cli) -> None:
    """Cases "000", "001": the manifest read them back as the numbers 0 and 1, so dataset
    verify called every store of a good sweep damaged."""
    source = write_synthetic_dataset(tmp_path / "Dataset511_Digits", {"000": 1, "001": 2})
    out = tmp_path / "sweep"
    assert compress(source, out, "1,5") == 0

    code, _, stderr = cli("dataset", "verify", out)
    assert code == 0, stderr
