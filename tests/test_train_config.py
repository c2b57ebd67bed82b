"""TrainConfig validation and the command line's answer to a bad training setup."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlossy.cli.main import main as cli_main
from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.train.config import PRESETS, TrainConfig


def test_presets_build_valid_configs() -> None:
    for name, values in PRESETS.items():
        config = TrainConfig.from_preset(name)

        assert config.preset == name
        assert config.patch_size == values["patch_size"]


def test_overrides_replace_preset_values_and_none_keeps_them() -> None:
    config = TrainConfig.from_preset("lowres", patch_size=(16, 16, 16), filters=(4, 8, 16),
                                     epochs=None)

    assert config.patch_size == (16, 16, 16)
    assert config.filters == (4, 8, 16)
    assert config.epochs == TrainConfig.epochs


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match=r"preset must be one of \['fullres', 'lowres'\], "
                                         r"got 'tiny'"):
        TrainConfig.from_preset("tiny")


def test_unknown_preset_is_refused_by_the_constructor_too() -> None:
    with pytest.raises(ValueError, match="preset must be one of"):
        TrainConfig(preset="tiny")


@pytest.mark.parametrize("fold", [3, 5, -1])
def test_fold_outside_the_folds_is_refused(fold: int) -> None:
    with pytest.raises(ValueError, match=rf"fold must be in 0\.\.2, got {fold}"):
        TrainConfig(fold=fold, folds=3)


def test_fewer_than_two_folds_is_refused() -> None:
    with pytest.raises(ValueError, match="folds must be >= 2, got 1"):
        TrainConfig(fold=0, folds=1)


def test_patch_not_divisible_by_the_downsampling_is_refused() -> None:
    with pytest.raises(ValueError, match=r"patch size \(16, 16, 20\) must be divisible by 8 "
                                         r"for 4 stages"):
        TrainConfig(patch_size=(16, 16, 20), filters=(4, 8, 16, 32))


def test_patch_divisible_for_fewer_stages_is_accepted() -> None:
    assert TrainConfig(patch_size=(24, 24, 16), filters=(4, 8, 16)).patch_size == (24, 24, 16)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_train_fraction_outside_zero_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"train fraction must be in \(0, 1\]"):
        TrainConfig(train_fraction=fraction)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as raised:
        TrainConfig(preset="tiny", fold=4, folds=3, train_fraction=2.0)

    message = str(raised.value)
    assert "preset" in message and "fold must be" in message and "train fraction" in message
    assert "\n" not in message


def test_bad_device_is_refused() -> None:
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda, got 'tpu'"):
        TrainConfig(device="tpu")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_phantom_dataset(tmp_path / "data", 3,
                                 PhantomConfig(shape=(24, 24, 16), spacing=(6.0, 6.0, 6.0)))


def test_cli_train_with_a_bad_fold_exits_2_with_one_line(dataset: Path, tmp_path: Path,
                                                         capsys) -> None:
    code = cli_main(["train", str(dataset), "--out", str(tmp_path / "model"),
                     "--fold", "3", "--folds", "3", "--quiet"])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == "medlossy: error: fold must be in 0..2, got 3\n"
    assert not (tmp_path / "model").exists()


def test_cli_train_with_a_bad_patch_exits_2(dataset: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["train", str(dataset), "--out", str(tmp_path / "model"),
                     "--patch-size", "20,20,20", "--quiet"])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1
    assert "patch size (20, 20, 20) must be divisible by 8" in captured.err
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("axes", [(3,), (0, 0)])
def test_bad_mirror_axes_are_refused(axes: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="mirror axes must be distinct axes among 0, 1, 2"):
        TrainConfig(mirror_axes=axes)
