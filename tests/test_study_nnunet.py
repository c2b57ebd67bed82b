"""A study with ``backend = "nnunet"`` on a small phantom: two ratios, two epochs of two
iterations, nnU-Net 3d_fullres on CPU. Its results table has Dice per ratio and its
nnU-Net checkpoints ran exactly the configured epochs."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.experiments.config import load_config
from medlossy.experiments.study import run_study

pytestmark = pytest.mark.slow

CONFIG = """\
experiments = ["quality", "train", "cross"]
ratios = [1, 5]
train_ratios = [1, 5]
folds = 2
train_folds = [0]

[[datasets]]
path = "data/Dataset950_Phantom"
synthetic = true

[training]
backend = "nnunet"
configuration = "3d_fullres"
epochs = 2
iterations_per_epoch = 2
validation_iterations = 1
test_time_mirroring = false
device = "cpu"
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("nnunet-study")
    write_phantom_dataset(root / "data", 4, PhantomConfig(shape=(32, 32, 24),
                                                         spacing=(6.0, 6.0, 6.0)))
    (root / "study.toml").write_text(CONFIG)
    started = time.perf_counter()
    run_study(load_config(root / "study.toml"), root / "out", workers=1)
    return root / "out", time.perf_counter() - started


def test_results_table_has_dice_per_ratio(study: tuple[Path, float]) -> None:
    out, seconds = study
    results = pd.read_csv(out / "results.csv")
    dice = results[(results["experiment"] == "train") & (results["metric"] == "dice")]
    assert sorted(dice["ratio_train"].unique()) == [1.0, 5.0]
    assert (dice["ratio_train"] == dice["ratio_test"]).all()
    classes = set(dice["class"])
    assert "mean" in classes and {"liver", "spleen"} <= classes
    assert dice["value"].dropna().between(0, 1).all()
    cross = results[(results["experiment"] == "cross") & (results["metric"] == "dice")]
    assert {(a, b) for a, b in zip(cross["ratio_train"], cross["ratio_test"], strict=True)} \
        == {(1.0, 1.0), (1.0, 5.0), (5.0, 1.0), (5.0, 5.0)}
    print(f"\nnnU-Net study (2 ratios x 1 fold, 2 x 2 iterations): {seconds:.0f} s")


def test_dry_run_finds_every_unit_cached(study: tuple[Path, float]) -> None:
    from medlossy.experiments.dryrun import dry_run

    out, _ = study
    units, _, _ = dry_run(load_config(out.parent / "study.toml"), out)
    work = units[units["unit"].isin(["train", "predict+evaluate"])]
    assert len(work) == 2 + 4 and work["cached"].all()


def test_checkpoints_ran_exactly_the_configured_epochs(study: tuple[Path, float]) -> None:
    import torch

    from medlossy.nnunet.run import checkpoint, read_model

    out, _ = study
    models = sorted(p.parent for p in (out / "models").glob("*/*/medlossy-model.json"))
    assert len(models) == 2
    for model in models:
        final = torch.load(checkpoint(model), map_location="cpu", weights_only=False)
        assert final["current_epoch"] == 2
        assert len(final["logging"]["train_losses"]) == 2
        assert read_model(model)["test_cases"]  # the study's fold, not nnU-Net's split


def test_each_ratio_is_planned_on_its_own(study: tuple[Path, float]) -> None:
    out, _ = study
    prepared = sorted(p.parent.name for p in (out / "cache").glob("*/*/prepared.json"))
    assert len(prepared) == 2 and all(name.endswith("_3d_fullres_per-ratio")
                                      for name in prepared)
    assert any("_r5_" in name for name in prepared)


def test_report_names_the_backend(study: tuple[Path, float]) -> None:
    out, _ = study
    assert "Backend nnunet" in (out / "report.md").read_text()
