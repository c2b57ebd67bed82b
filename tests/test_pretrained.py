"""Pretrained Swin UNETR: checkpoint formats, the BTCV pipeline's geometry, label maps, and
``medlossy evaluate-pretrained`` on a tiny sweep."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from test_evaluate import write_raw_dataset

from medlossy.cli.main import main
from medlossy.errors import MedlossyError
from medlossy.evaluate import COLUMNS
from medlossy.pretrained.labelmap import lookup_table, read_label_map
from medlossy.pretrained.swin_unetr import (
    BTCV,
    SwinUNETRSetup,
    build_swin_unetr,
    load_swin_unetr,
    predict_image,
)

TINY = SwinUNETRSetup(feature_size=12, out_channels=3, roi=(64, 64, 64))
TINY_ARGS = ["--feature-size", "12", "--out-channels", "3", "--roi", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny_swin_unetr.pt"
    torch.save(build_swin_unetr(TINY).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    from medlossy.datasets.nnunet_raw import open_raw_dataset
    from medlossy.datasets.sweep import plan_sweep, run_sweep

    root = tmp_path_factory.mktemp("sweep")
    # 1.5 x 1.5 x 2 mm, the BTCV spacing, so one 64^3 window covers a whole image.
    affine = np.diag([-1.5, -1.5, 2.0, 1.0])
    source = write_raw_dataset(root / "Dataset905_Tiny", cases=2, shape=(48, 48, 24),
                               affine=affine)
    run_sweep(plan_sweep(open_raw_dataset(source), root / "out", [1, 10], base_id=905),
              workers=1)
    return root / "out"


def test_btcv_defaults() -> None:
    assert (BTCV.feature_size, BTCV.out_channels, BTCV.roi) == (48, 14, (96, 96, 96))
    assert BTCV.spacing == (1.5, 1.5, 2.0) and (BTCV.a_min, BTCV.a_max) == (-175, 250)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model"])
def test_checkpoint_formats_and_module_prefix(checkpoint: Path, tmp_path: Path,
                                              wrap: str) -> None:
    state = torch.load(checkpoint, weights_only=True)
    if wrap != "plain":
        state = {wrap: {f"module.{key}": value for key, value in state.items()}, "epoch": 3}
    torch.save(state, tmp_path / "c.pt")
    model = load_swin_unetr(tmp_path / "c.pt", TINY)
    reference = torch.load(checkpoint, weights_only=True)
    assert torch.equal(model.state_dict()["out.conv.conv.weight"],
                       reference["out.conv.conv.weight"])
    assert not model.training


def test_wrong_number_of_classes_names_the_file(checkpoint: Path) -> None:
    with pytest.raises(MedlossyError, match=r"tiny_swin_unetr\.pt: checkpoint has 3 output "
                                            r"classes, expected 14"):
        load_swin_unetr(checkpoint, SwinUNETRSetup(feature_size=12, roi=(64, 64, 64)))


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MedlossyError, match=r"x\.pt: not a loadable"):
        load_swin_unetr(tmp_path / "x.pt", TINY)


class _Threshold(torch.nn.Module):
    """Class 1 where the scaled intensity exceeds 0.5: lets the test see where voxels go."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def test_prediction_lands_on_the_image_grid(tmp_path: Path) -> None:
    # LPS-ish, anisotropic, oblique enough to need real resampling both ways.
    affine = np.array([[-0.8, 0.0, 0.0, 40.0], [0.0, 0.0, 2.5, -30.0],
                       [0.0, 1.1, 0.0, 12.0], [0.0, 0.0, 0.0, 1.0]])
    image = np.full((40, 30, 20), -500, np.int16)
    image[4:24, 3:17, 2:12] = 400  # off centre: a flipped axis would move it away
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    labels, grid = predict_image(_Threshold(), tmp_path / "ct.nii.gz", TINY)
    assert labels.shape == image.shape and np.allclose(grid, affine)
    truth = (image > 0).astype(np.uint8)
    overlap = 2 * (labels & truth).sum() / (labels.sum() + truth.sum())
    # Only the box's faces move, by less than one 1.5 / 2 mm voxel of the network's grid.
    assert overlap > 0.85
    for axis in range(3):
        flipped = np.flip(truth, axis)
        assert 2 * (labels & flipped).sum() / (labels.sum() + flipped.sum()) < 0.6


def test_label_map(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"1": "2", "2": 1}))
    table = lookup_table(read_label_map(path), 4, source=path, allowed={0, 1, 2})
    assert table.tolist() == [0, 2, 1, 0]  # class 3 unmapped -> background
    with pytest.raises(MedlossyError, match="model class 5 does not exist"):
        lookup_table({5: 1}, 4, source=path)
    with pytest.raises(MedlossyError, match=r"label values \[9\]"):
        lookup_table({1: 9}, 4, source=path, allowed={0, 1, 2})
    path.write_text(json.dumps({"spleen": 1}))
    with pytest.raises(MedlossyError, match="not an integer class id"):
        read_label_map(path)


def test_evaluate_pretrained_on_every_ratio(checkpoint: Path, sweep: Path, tmp_path: Path,
                                            capsys) -> None:
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"1": 1, "2": 2}))
    out = tmp_path / "results.csv"
    code = main(["evaluate-pretrained", str(checkpoint), str(sweep), "--arch", "swin_unetr",
                 "--label-map", str(label_map), "--out", str(out), "--quiet",
                 "--predictions", str(tmp_path / "preds"), *TINY_ARGS])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out)
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == 2 * 2 * 3  # ratios x cases x (liver, spleen, mean)
    assert table["ratio_train"].isna().all() and table["fold"].isna().all()
    assert sorted(set(table["ratio_test"])) == [1.0, 10.0]
    assert set(table["class"]) == {"liver", "spleen", "mean"}
    assert table["value"].between(0, 1).all()
    for ratio in ("r1", "r10"):
        prediction = nib.load(tmp_path / "preds" / ratio / "case_000.nii.gz")
        reference = nib.load(sweep.glob("nnunet/*_r1/labelsTr/case_000.nii.gz").__next__())
        assert prediction.shape == reference.shape
        assert np.allclose(prediction.affine, reference.affine, atol=1e-4)
    assert "mean Dice per class" in capsys.readouterr().out


def test_wrong_class_count_exits_2_before_predicting(checkpoint: Path, sweep: Path,
                                                     tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.csv"
    code = main(["evaluate-pretrained", str(checkpoint), str(sweep), "--arch", "swin_unetr",
                 "--out", str(out), "--feature-size", "12", "--roi", "64", "--quiet"])
    assert code == 2 and not out.exists()
    error = capsys.readouterr().err.strip()
    assert "checkpoint has 3 output classes, expected 14" in error and "\n" not in error
