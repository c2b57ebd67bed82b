"""What `medlossy dataset compress` accepts: bad cases skipped, multi-channel MR, plain
folders, and the crop to a label's box the study used for LiTS.

Tasks run serially in-process (``run_sweeps_serially``) except in the truncated-image test,
which needs the real process pool: the error raised in a worker must come back intact.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_dataset_validation import (
    BREAKAGES,
    EXIT_BAD_INPUT,
    run_sweeps_serially,
    save_nifti,
    synthetic_case,
    write_crop_dataset,
    write_synthetic_dataset,
    write_two_channel_dataset_with_bad_cases,
)

from medlossy.cli.main import main as cli_main


@pytest.fixture
def serial(monkeypatch: pytest.MonkeyPatch) -> None:
    run_sweeps_serially(monkeypatch)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def compress(source: Path, out: Path, ratios: str, *extra: str) -> int:
    return cli_main(["dataset", "compress", str(source), "--ratios", ratios, "--out", str(out),
                     "--quiet", *extra])


def dataset_folder(out: Path, ratio: float) -> Path:
    sweep = json.loads((out / "sweep.json").read_text())
    return out / "nnunet" / sweep["datasets"][f"r{ratio:g}"]


def voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


# ---------------------------------------------------------------------------------------------
# --skip-bad
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skipped_sweep(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("skip_bad")
    root = write_two_channel_dataset_with_bad_cases(tmp_path / "Dataset610_Bad",
                                                    sorted(BREAKAGES))
    out = tmp_path / "sweep"
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_sweeps_serially(monkeypatch)
        assert compress(root, out, "1,5", "--skip-bad") == 0
    return out


def test_skip_bad_lists_every_bad_case_in_sweep_json(skipped_sweep: Path) -> None:
    bad = json.loads((skipped_sweep / "sweep.json").read_text())["bad_cases"]
    assert sorted(bad) == sorted(f"bad_{name}" for name in BREAKAGES)
    for name, (_, fragment) in BREAKAGES.items():
        assert bad[f"bad_{name}"].startswith(f"case bad_{name}: ")
        assert fragment in bad[f"bad_{name}"]
        assert "\n" not in bad[f"bad_{name}"]


def test_skip_bad_lists_every_bad_case_in_the_report(skipped_sweep: Path) -> None:
    report = (skipped_sweep / "report.md").read_text()
    assert "## Bad cases (skipped)" in report
    listed = [line for line in report.splitlines() if line.startswith("- case ")]
    assert sorted(line.split(":")[0] for line in listed) == \
        sorted(f"- case bad_{name}" for name in BREAKAGES)


def test_skip_bad_completes_the_good_cases_only(skipped_sweep: Path, cli) -> None:
    manifest = pd.read_csv(skipped_sweep / "manifest.csv")
    assert sorted(set(manifest["case"])) == ["good_01", "good_02"]
    assert len(manifest) == 2 * 2 * 2  # cases x channels x ratios
    for ratio in (1, 5):
        folder = dataset_folder(skipped_sweep, ratio)
        assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
        assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == \
            ["good_01.nii.gz", "good_02.nii.gz"]
    written = [str(p) for p in skipped_sweep.rglob("*bad_*")]
    assert written == []
    code, _, stderr = cli("dataset", "verify", skipped_sweep)
    assert code == 0, stderr


def _truncate_voxels(root: Path, case: str) -> None:
    """A valid header and half the gzip stream: only reading the voxels fails."""
    path = root / "imagesTr" / f"{case}_0000.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_voxels_fail_in_the_worker_naming_the_case(tmp_path: Path, cli) -> None:
    root = write_synthetic_dataset(tmp_path / "Dataset620_Trunc", {"t_a": 1, "t_b": 2, "t_c": 3},
                                   shape=(64, 64, 16))
    _truncate_voxels(root, "t_b")
    code, _, stderr = cli("dataset", "compress", root, "--ratios", "1,5", "--out",
                          tmp_path / "strict", "--quiet", "--workers", "2")
    assert code == EXIT_BAD_INPUT
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "t_b_0000.nii.gz" in stderr and "truncated or corrupt" in stderr
    out = tmp_path / "skipping"
    code, _, stderr = cli("dataset", "compress", root, "--ratios", "1,5", "--out", out,
                          "--quiet", "--workers", "2", "--skip-bad")
    assert code == 0, stderr
    bad = json.loads((out / "sweep.json").read_text())["bad_cases"]
    assert list(bad) == ["t_b"]
    assert "truncated or corrupt" in bad["t_b"]
    assert "- " + bad["t_b"] in (out / "report.md").read_text()
    manifest = pd.read_csv(out / "manifest.csv")
    assert sorted(set(manifest["case"])) == ["t_a", "t_c"] and len(manifest) == 4


def test_case_failing_while_running_leaves_no_trace_in_the_nnunet_datasets(
        tmp_path: Path, serial) -> None:
    root = write_synthetic_dataset(tmp_path / "Dataset621_Trunc", {"t_a": 1, "t_b": 2})
    _truncate_voxels(root, "t_b")
    out = tmp_path / "sweep"
    assert compress(root, out, "1", "--skip-bad") == 0
    folder = dataset_folder(out, 1)
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1
    assert [p.name for p in (folder / "labelsTr").iterdir()] == ["t_a.nii.gz"]


def test_skipping_a_case_keeps_the_case_whose_name_extends_it(tmp_path: Path, serial) -> None:
    root = write_synthetic_dataset(tmp_path / "Dataset622_Prefix", {"p1": 1, "p1_b": 2},
                                   shape=(32, 32, 8))
    _truncate_voxels(root, "p1")
    out = tmp_path / "sweep"
    assert compress(root, out, "1", "--skip-bad") == 0
    folder = dataset_folder(out, 1)
    assert [p.name for p in (folder / "imagesTr").iterdir()] == ["p1_b_0000.nii.gz"]
    assert [p.name for p in (folder / "labelsTr").iterdir()] == ["p1_b.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1


# ---------------------------------------------------------------------------------------------
# Two-channel MR (like BraTS)
# ---------------------------------------------------------------------------------------------

MR_CROPS = {
    ("Tr", "mr_a"): (slice(0, 64), slice(0, 56), slice(None)),
    ("Tr", "mr_b"): (slice(53, 117), slice(35, 91), slice(None)),
}


def _second_channel(channel: int, first: np.ndarray) -> np.ndarray:
    """Another contrast: a different range, and not a copy of channel 0."""
    return np.round(1200 - 0.8 * first.astype(np.float64)).astype(np.int16)


@pytest.fixture(scope="module")
def mr_sweep(reference_files: Path, tmp_path_factory) -> tuple[Path, Path]:
    tmp_path = tmp_path_factory.mktemp("mr")
    source = write_crop_dataset(tmp_path / "Dataset630_MR",
                                reference_files / "example_mr_sm.nii.gz",
                                reference_files / "example_seg_mr.nii.gz", MR_CROPS,
                                {"0": "T1", "1": "T2"}, _second_channel)
    out = tmp_path / "sweep"
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_sweeps_serially(monkeypatch)
        assert compress(source, out, "1,5") == 0
    return source, out


def _dataset_range(source: Path, channel: int) -> float:
    arrays = [voxels(p) for p in sorted((source / "imagesTr").glob(f"*_{channel:04d}.nii.gz"))]
    ranges = [float(a.max()) - float(a.min()) for a in arrays]
    dataset = max(float(a.max()) for a in arrays) - min(float(a.min()) for a in arrays)
    assert dataset > max(ranges)  # else this test could not tell a per-case range apart
    return dataset


def test_mr_psnr_range_is_per_channel_over_the_dataset(mr_sweep) -> None:
    source, out = mr_sweep
    expected = {channel: _dataset_range(source, channel) for channel in (0, 1)}
    assert expected[0] != expected[1]
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["psnr_ranges"] == {"0": expected[0], "1": expected[1]}
    manifest = pd.read_csv(out / "manifest.csv")
    assert set(manifest["modality"]) == {"MR"}
    for channel in (0, 1):
        rows = manifest[manifest["channel"] == channel]
        assert len(rows) == 2 * 2
        assert (rows["data_range"] == expected[channel]).all()


def test_mr_channels_are_compressed_on_their_own(mr_sweep) -> None:
    source, out = mr_sweep
    manifest = pd.read_csv(out / "manifest.csv")
    ranges = json.loads((out / "sweep.json").read_text())["psnr_ranges"]
    for row in manifest.itertuples():
        stem = f"{row.case}_{row.channel:04d}"
        assert row.store == f"stores/r{row.ratio_target:g}/{stem}.zarr"  # in the sweep folder
        assert Path(row.decoded).name == f"{stem}.nii.gz"
        original = voxels(source / "imagesTr" / f"{stem}.nii.gz").astype(np.float64)
        decoded = voxels(out / row.decoded).astype(np.float64)
        if row.ratio_target == 1:
            assert np.array_equal(decoded, original)
        else:
            peak = ranges[str(row.channel)]
            psnr = 10 * math.log10(peak**2 / np.mean((decoded - original) ** 2))
            assert row.psnr_db == pytest.approx(psnr, abs=0.01)
            assert row.ratio_achieved == pytest.approx(5, rel=0.01)
    assert manifest["store_crc32"].is_unique


# ---------------------------------------------------------------------------------------------
# Plain folder: images/ + labels/
# ---------------------------------------------------------------------------------------------


def test_plain_folder_works_like_an_nnunet_dataset(tmp_path: Path, serial, cli) -> None:
    root = tmp_path / "scans"
    affine = np.diag([1.2, 1.2, 2.5, 1.0])
    for name, seed in (("p_one", 1), ("p_two", 2)):
        image, labels = synthetic_case(seed)
        save_nifti(root / "images" / f"{name}.nii.gz", image, affine)
        save_nifti(root / "labels" / f"{name}.nii.gz", labels, affine)
    out = tmp_path / "sweep"
    assert compress(root, out, "1,5") == 0
    names = sorted(p.name for p in (out / "nnunet").iterdir())
    assert [name.split("_", 1)[1] for name in names] == ["scans_r1", "scans_r5"]
    assert len({name.split("_")[0] for name in names}) == 2
    for ratio in (1, 5):
        folder = dataset_folder(out, ratio)
        document = json.loads((folder / "dataset.json").read_text())
        assert document["channel_names"] == {"0": "CT"}
        # nnU-Net and `medlossy train` need the label values named (the files hold 0, 1, 2)
        assert document["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
        assert document["numTraining"] == 2 and document["file_ending"] == ".nii.gz"
        assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == \
            ["p_one_0000.nii.gz", "p_two_0000.nii.gz"]
        for name in ("p_one", "p_two"):
            assert sha256(folder / "labelsTr" / f"{name}.nii.gz") == \
                sha256(root / "labels" / f"{name}.nii.gz")
            decoded = nib.load(folder / "imagesTr" / f"{name}_0000.nii.gz")
            assert decoded.shape == (48, 48, 8)
            np.testing.assert_allclose(decoded.affine, affine, atol=1e-5)
            if ratio == 1:
                assert np.array_equal(np.asarray(decoded.dataobj),
                                      voxels(root / "images" / f"{name}.nii.gz"))
    manifest = pd.read_csv(out / "manifest.csv")
    assert sorted(zip(manifest["case"], manifest["ratio_target"], strict=True)) == \
        [("p_one", 1.0), ("p_one", 5.0), ("p_two", 1.0), ("p_two", 5.0)]
    assert set(manifest["channel"]) == {0} and set(manifest["modality"]) == {"CT"}
    code, _, stderr = cli("dataset", "verify", out)
    assert code == 0, stderr


def test_plain_folder_image_without_label_goes_to_imagests(tmp_path: Path, serial, cli
                                                          ) -> None:
    # Found by a new user: 3 labelled images and 1 without a label all went to imagesTr
    # (4 images, 3 labels, numTraining 3), which nnU-Net's integrity check rejects.
    root = tmp_path / "scans"
    affine = np.diag([1.2, 1.2, 2.5, 1.0])
    for name, seed in (("a", 1), ("b", 2), ("c", 3), ("unlabelled", 4)):
        image, labels = synthetic_case(seed)
        save_nifti(root / "images" / f"{name}.nii.gz", image, affine)
        if name != "unlabelled":
            save_nifti(root / "labels" / f"{name}.nii.gz", labels, affine)
    out = tmp_path / "sweep"
    assert compress(root, out, "1") == 0
    folder = dataset_folder(out, 1)
    document = json.loads((folder / "dataset.json").read_text())
    assert document["numTraining"] == 3
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == \
        ["a_0000.nii.gz", "b_0000.nii.gz", "c_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == \
        ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert [p.name for p in (folder / "imagesTs").iterdir()] == ["unlabelled_0000.nii.gz"]
    assert np.array_equal(voxels(folder / "imagesTs" / "unlabelled_0000.nii.gz"),
                          voxels(root / "images" / "unlabelled.nii.gz"))
    code, _, stderr = cli("dataset", "verify", out)
    assert code == 0, stderr


def _mr_like(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like case: the CT-like case moved to 0 and up (no air at -1000 HU)."""
    image, labels = synthetic_case(seed)
    return np.clip(image.astype(np.int32) + 1000, 0, None).astype(np.int16), labels


def _plain_folder(root: Path, cases: dict[str, np.ndarray], labels: np.ndarray) -> Path:
    affine = np.diag([1.2, 1.2, 2.5, 1.0])
    for name, image in cases.items():
        save_nifti(root / "images" / f"{name}.nii.gz", image, affine)
        save_nifti(root / "labels" / f"{name}.nii.gz", labels, affine)
    return root


def test_plain_folder_of_mr_is_named_mr(tmp_path: Path, serial, cli, monkeypatch) -> None:
    # Found by a new user: a plain folder of MR became channel_names {"0": "CT"} with
    # r = 4096, without a word, and nnU-Net then planned CT normalisation.
    from medlossy.datasets import sweep

    def read_again(path: Path) -> None:
        raise AssertionError(f"{path} read again for its range")

    monkeypatch.setattr(sweep, "value_span", read_again)  # detection's spans serve the range
    (one, labels), (two, _) = _mr_like(1), _mr_like(2)
    root = _plain_folder(tmp_path / "mr", {"m_one": one, "m_two": two}, labels)
    out = tmp_path / "sweep"
    code, _, stderr = cli("dataset", "compress", root, "--ratios", "1,5", "--out", out,
                          "--workers", "1")
    assert code == 0, stderr
    for ratio in (1, 5):
        document = json.loads((dataset_folder(out, ratio) / "dataset.json").read_text())
        assert document["channel_names"] == {"0": "MR"}
    span = float(max(one.max(), two.max()) - min(one.min(), two.min()))
    manifest = pd.read_csv(out / "manifest.csv")
    assert set(manifest["modality"]) == {"MR"} and set(manifest["data_range"]) == {span}
    assert ("channel 0: modality MR (auto: values not in HU range, all 2 case(s)), r = max - "
            f"min over the dataset = {span:g}") in stderr


def test_plain_folder_modality_can_be_given(tmp_path: Path, serial) -> None:
    (one, labels) = _mr_like(1)
    root = _plain_folder(tmp_path / "mr", {"m_one": one}, labels)
    out = tmp_path / "sweep"
    assert compress(root, out, "1", "--modality", "CT") == 0
    document = json.loads((dataset_folder(out, 1) / "dataset.json").read_text())
    assert document["channel_names"] == {"0": "CT"}
    assert set(pd.read_csv(out / "manifest.csv")["data_range"]) == {4096}


def test_plain_folder_of_ct_and_mr_asks_for_the_modality(tmp_path: Path, cli) -> None:
    (mr, labels), (ct, _) = _mr_like(1), synthetic_case(2)
    root = _plain_folder(tmp_path / "mixed", {"m_one": mr, "c_two": ct}, labels)
    out = tmp_path / "sweep"
    code, _, stderr = cli("dataset", "compress", root, "--ratios", "1", "--out", out,
                          "--quiet")
    assert code == EXIT_BAD_INPUT
    assert stderr.startswith("medlossy: error: ") and stderr.count("\n") == 1, stderr
    assert "disagree" in stderr and "c_two" in stderr and "m_one" in stderr
    assert "--modality CT or MR" in stderr
    assert not out.exists()


@pytest.mark.parametrize(("image", "label", "problem"), [
    # Found by a new user: each of these was silently left out (an image, or every label, so
    # that labelled cases became test cases), the sweep exiting 0.
    ("a.nii", None, "images/a.nii"),                     # .nii among .nii.gz images
    ("a.nii.gz", "a.nii", "labels/a.nii"),               # .nii label of a .nii.gz image
    ("a.nii.gz", "orphan.nii.gz", "labels/orphan.nii.gz"),  # a label without its image
    ("a.nii.gz", "A.nii.gz", "labels/A.nii.gz"),         # names differing in case
])
def test_plain_folder_refuses_files_it_would_leave_out(tmp_path: Path, serial, cli,
                                                       image: str, label: str | None,
                                                       problem: str) -> None:
    root = tmp_path / "scans"
    affine = np.diag([1.2, 1.2, 2.5, 1.0])
    volume, labels = synthetic_case(1)
    save_nifti(root / "images" / "b.nii.gz", volume, affine)
    save_nifti(root / "labels" / "b.nii.gz", labels, affine)
    save_nifti(root / "images" / image, volume, affine)
    if label is not None:
        save_nifti(root / "labels" / label, labels, affine)
    out = tmp_path / "sweep"
    code, _, stderr = cli("dataset", "compress", root, "--ratios", "1", "--out", out,
                          "--quiet")
    assert code == EXIT_BAD_INPUT
    assert stderr.startswith("medlossy: error: ") and stderr.count("\n") == 1, stderr
    assert problem in stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# --crop-to-label
# ---------------------------------------------------------------------------------------------

SPACING = (1.4, 2.5, 4.0)  # margin 6 mm -> ceil(6 / s) = 5, 3, 2 voxels
CROP_SHAPE = (96, 80, 16)
#: Where label 1 lies per case (voxel boxes); label 2 lies elsewhere and is not cropped to.
LABEL_ONE = {
    "c_low": (slice(2, 40), slice(10, 45), slice(5, 9)),      # clipped at x = 0
    "c_high": (slice(60, 96), slice(40, 79), slice(12, 16)),  # clipped at the far ends
}
EXPECTED_BOX = {
    "c_low": (slice(0, 45), slice(7, 48), slice(3, 11)),
    "c_high": (slice(55, 96), slice(37, 80), slice(10, 16)),
}


def _rotated_affine() -> np.ndarray:
    angle = math.radians(20)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0],
                         [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(SPACING)
    affine[:3, 3] = (12.0, -30.0, 55.0)
    return affine


@pytest.fixture(scope="module")
def crop_sweep(tmp_path_factory) -> tuple[Path, Path]:
    tmp_path = tmp_path_factory.mktemp("crop")
    root = tmp_path / "Dataset640_Crop"
    affine = _rotated_affine()
    write_synthetic_dataset(root, {}, test_cases={"c_test": 9}, shape=CROP_SHAPE, affine=affine)
    for seed, (name, box) in enumerate(LABEL_ONE.items()):
        image, _ = synthetic_case(seed, CROP_SHAPE)
        labels = np.zeros(CROP_SHAPE, np.uint8)
        labels[box] = 1
        labels[45:55, 0:5, 0:3] = 2
        save_nifti(root / "imagesTr" / f"{name}_0000.nii.gz", image, affine)
        save_nifti(root / "labelsTr" / f"{name}.nii.gz", labels, affine)
    document = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**document, "numTraining": 2}))
    out = tmp_path / "sweep"
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_sweeps_serially(monkeypatch)
        assert compress(root, out, "1,5", "--crop-to-label", "1", "--margin", "6") == 0
    return root, out


def test_margin_voxels_are_ceil_of_margin_over_spacing() -> None:
    margins = [math.ceil(6 / s) for s in SPACING]
    assert margins == [5, 3, 2]
    for name, box in LABEL_ONE.items():
        grown = tuple(slice(max(0, b.start - m), min(n, b.stop + m))
                      for b, m, n in zip(box, margins, CROP_SHAPE, strict=True))
        assert grown == EXPECTED_BOX[name]


def test_crop_keeps_the_box_of_the_label_grown_by_the_margin(crop_sweep) -> None:
    source, out = crop_sweep
    prepared = out / "prepared" / source.name
    assert json.loads((out / "sweep.json").read_text())["source"] == str(prepared)
    for name, box in EXPECTED_BOX.items():
        image = nib.load(prepared / "imagesTr" / f"{name}_0000.nii.gz")
        label = nib.load(prepared / "labelsTr" / f"{name}.nii.gz")
        assert image.shape == label.shape == tuple(b.stop - b.start for b in box)
        assert np.array_equal(np.asarray(image.dataobj),
                              voxels(source / "imagesTr" / f"{name}_0000.nii.gz")[box])
        assert np.array_equal(np.asarray(label.dataobj),
                              voxels(source / "labelsTr" / f"{name}.nii.gz")[box])


def test_crop_moves_the_origin_to_the_box_start(crop_sweep) -> None:
    source, out = crop_sweep
    prepared = out / "prepared" / source.name
    original = _rotated_affine()
    for name, box in EXPECTED_BOX.items():
        start = np.array([b.start for b in box] + [1.0])
        for path in (prepared / "imagesTr" / f"{name}_0000.nii.gz",
                     prepared / "labelsTr" / f"{name}.nii.gz",
                     dataset_folder(out, 5) / "imagesTr" / f"{name}_0000.nii.gz"):
            affine = nib.load(path).affine
            np.testing.assert_allclose(affine @ [0, 0, 0, 1], original @ start, atol=1e-4)
            np.testing.assert_allclose(affine[:3, :3], original[:3, :3], atol=1e-5)


def test_crop_copies_unlabelled_test_cases_unchanged(crop_sweep) -> None:
    source, out = crop_sweep
    original = source / "imagesTs" / "c_test_0000.nii.gz"
    prepared = out / "prepared" / source.name / "imagesTs" / "c_test_0000.nii.gz"
    assert sha256(prepared) == sha256(original)
    decoded = nib.load(dataset_folder(out, 1) / "imagesTs" / "c_test_0000.nii.gz")
    assert np.array_equal(np.asarray(decoded.dataobj), voxels(original))
    np.testing.assert_allclose(decoded.affine, nib.load(original).affine, atol=1e-5)
