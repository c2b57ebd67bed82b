"""Dice conventions, the tidy table, and the errors of ``medlossy evaluate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medlossy.errors import MedlossyError
from medlossy.evaluate import COLUMNS, dice_per_class, evaluate_predictions, mean_dice, summary
from medlossy.evaluate.dice import hd95_per_class

AFFINE = np.array([[-1.5, 0, 0, 30.0], [0, -1.5, 0, 20.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])


def write_raw_dataset(root: Path, cases: int = 2, shape: tuple[int, int, int] = (24, 20, 12),
                      affine: np.ndarray = AFFINE, seed: int = 0,
                      labels: dict[str, int] | None = None) -> Path:
    """A tiny nnU-Net raw dataset: CT-like int16 images, labels 0..2 (two boxes)."""
    rng = np.random.default_rng(seed)
    labels = labels or {"background": 0, "liver": 1, "spleen": 2}
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for index in range(cases):
        label = np.zeros(shape, np.uint8)
        x, y, z = (s // 2 for s in shape)
        shift = int(rng.integers(0, 3))
        label[2 + shift:x + shift, 2:y, 2:z + 2] = 1
        label[x + 1:-2, y:-2, z - 2:-2] = 2
        image = rng.normal(-80, 20, shape) + np.choose(label, [0, 140, 180])
        name = f"case_{index:03d}"
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine),
                 root / "imagesTr" / f"{name}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels, "numTraining": cases,
        "file_ending": ".nii.gz"}))
    return root


def _labels(root: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(root / "labelsTr" / f"{case}.nii.gz")
    return np.asarray(image.dataobj), image.affine


def _save(folder: Path, case: str, array: np.ndarray, affine: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), folder / f"{case}.nii.gz")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_raw_dataset(tmp_path / "Dataset901_Tiny")


def test_dice_of_a_known_overlap() -> None:
    reference = np.zeros((10, 10), int)
    prediction = np.zeros((10, 10), int)
    reference[0:4, 0:5] = 1  # 20 voxels
    prediction[2:6, 0:5] = 1  # 20 voxels, 10 shared
    assert dice_per_class(prediction, reference, [1])[1] == pytest.approx(0.5)


def test_both_empty_is_nan_and_left_out_of_the_mean() -> None:
    reference = np.array([0, 1, 1, 0])
    dice = dice_per_class(reference, reference, [1, 2])
    assert dice[1] == 1.0 and math.isnan(dice[2])
    assert mean_dice(dice) == 1.0
    assert math.isnan(mean_dice({1: math.nan, 2: math.nan}))


def test_false_positive_and_missed_class_score_zero() -> None:
    reference = np.array([0, 1, 1, 0])
    prediction = np.array([2, 0, 0, 0])
    dice = dice_per_class(prediction, reference, [1, 2])
    assert dice == {1: 0.0, 2: 0.0}


def test_hd95_in_mm_uses_the_spacing() -> None:
    reference = np.zeros((12, 12, 12), int)
    reference[3:8, 3:8, 3:8] = 1
    prediction = np.roll(reference, 1, axis=0)
    result = hd95_per_class(prediction, reference, [1, 2], spacing=(2.5, 1.0, 1.0))
    assert result[1] == pytest.approx(2.5)
    assert math.isnan(result[2])


def test_tidy_table_of_a_folder(dataset: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "preds"
    truth0, affine = _labels(dataset, "case_000")
    truth1, _ = _labels(dataset, "case_001")
    _save(predictions, "case_000", truth0, affine)  # perfect
    wrong = truth1.copy()
    wrong[wrong == 2] = 0  # spleen missed
    _save(predictions, "case_001", wrong, affine)
    table = evaluate_predictions(predictions, dataset, ratio_train=20, ratio_test=1, fold=0)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 2 * 3  # 2 cases x (liver, spleen, mean)
    dice = table.set_index(["case", "class"])["value"]
    assert dice["case_000", "liver"] == 1.0 and dice["case_000", "mean"] == 1.0
    assert dice["case_001", "spleen"] == 0.0
    assert dice["case_001", "mean"] == pytest.approx(0.5)
    assert set(table["metric"]) == {"dice"}
    assert (table["ratio_train"] == 20).all() and (table["fold"] == 0).all()
    means = summary(table).set_index("class")["mean"]
    assert list(means.index) == ["liver", "spleen", "mean"]
    assert means["spleen"] == pytest.approx(0.5)


def test_unknown_ratios_and_fold_are_nan(dataset: Path, tmp_path: Path) -> None:
    for case in ("case_000", "case_001"):
        _save(tmp_path / "preds", case, *_labels(dataset, case))
    table = evaluate_predictions(tmp_path / "preds", dataset, hd95=True)
    assert table[["ratio_train", "ratio_test", "fold"]].isna().all().all()
    assert set(table["metric"]) == {"dice", "hd95"}
    assert (table.loc[table["metric"] == "hd95", "value"] == 0).all()


def test_missing_prediction_names_the_case(dataset: Path, tmp_path: Path) -> None:
    _save(tmp_path / "preds", "case_000", *_labels(dataset, "case_000"))
    with pytest.raises(MedlossyError, match="no prediction for case case_001"):
        evaluate_predictions(tmp_path / "preds", dataset)
    table = evaluate_predictions(tmp_path / "preds", dataset, only_predicted=True)
    assert set(table["case"]) == {"case_000"}


def test_geometry_mismatch_names_the_file(dataset: Path, tmp_path: Path) -> None:
    truth, affine = _labels(dataset, "case_000")
    _save(tmp_path / "shape", "case_000", truth[:, :, :-1], affine)
    with pytest.raises(MedlossyError, match=r"case_000\.nii\.gz: shape"):
        evaluate_predictions(tmp_path / "shape", dataset, cases=["case_000"])
    moved = affine.copy()
    moved[0, 3] += 0.01
    _save(tmp_path / "affine", "case_000", truth, moved)
    with pytest.raises(MedlossyError, match=r"case_000\.nii\.gz: affine differs"):
        evaluate_predictions(tmp_path / "affine", dataset, cases=["case_000"])


def test_label_values_outside_dataset_json(dataset: Path, tmp_path: Path) -> None:
    truth, affine = _labels(dataset, "case_000")
    truth[0, 0, 0] = 7
    _save(tmp_path / "preds", "case_000", truth, affine)
    with pytest.raises(MedlossyError, match=r"label values \[7\] are not in dataset.json"):
        evaluate_predictions(tmp_path / "preds", dataset, cases=["case_000"])


def test_cli_writes_csv_and_prints_means(dataset: Path, tmp_path: Path, capsys) -> None:
    from medlossy.cli.main import main

    for case in ("case_000", "case_001"):
        _save(tmp_path / "preds", case, *_labels(dataset, case))
    out = tmp_path / "dice.csv"
    code = main(["evaluate", str(tmp_path / "preds"), str(dataset), "--out", str(out),
                 "--ratio-test", "20", "--fold", "1"])
    assert code == 0
    table = pd.read_csv(out)
    assert list(table.columns) == list(COLUMNS) and len(table) == 6
    assert (table["ratio_test"] == 20).all() and table["ratio_train"].isna().all()
    printed = capsys.readouterr().out
    assert "liver" in printed and "1.0000" in printed


def test_cli_bad_input_is_one_line_and_exit_2(dataset: Path, tmp_path: Path, capsys) -> None:
    from medlossy.cli.main import main

    (tmp_path / "preds").mkdir()
    out = tmp_path / "dice.csv"
    code = main(["evaluate", str(tmp_path / "preds"), str(dataset), "--out", str(out)])
    assert code == 2 and not out.exists()
    error = capsys.readouterr().err.strip()
    assert "no prediction for case case_000" in error and "\n" not in error


def test_cli_takes_a_sweep_ratio_like_train_and_predict(dataset: Path, tmp_path: Path,
                                                        capsys) -> None:
    """SWEEP/r20 names a sweep's dataset (their nnU-Net ids are derived, not known ahead)."""
    import shutil

    from medlossy.cli.main import main

    sweep = tmp_path / "sweep"
    shutil.copytree(dataset, sweep / "nnunet" / "Dataset877_Tiny_r20")
    (sweep / "sweep.json").write_text(json.dumps({"datasets": {"r20": "Dataset877_Tiny_r20"}}))
    for case in ("case_000", "case_001"):
        _save(tmp_path / "preds", case, *_labels(dataset, case))
    out = tmp_path / "dice.csv"
    code = main(["evaluate", str(tmp_path / "preds"), str(sweep / "r20"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert len(pd.read_csv(out)) == 6
