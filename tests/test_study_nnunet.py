"""A study with ``backend = "nnunet"`` on a small phantom: two ratios, two epochs of two
iterations, nnU-Net 3d_fullres on CPU with the x1 plans control. Its results table has Dice
per ratio and its nnU-Net checkpoints ran exactly the configured epochs."""

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
plans = "x1"
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


def test_the_ratio_is_preprocessed_with_the_plans_of_the_uncompressed_data(
        study: tuple[Path, float]) -> None:
    """plans = "x1" (the control of per-ratio planning): nnU-Net plans x1 and preprocesses
    x5 with those plans (same configurations, the x5 dataset's name)."""
    import json

    out, _ = study
    prepared = sorted(p.parent for p in (out / "cache").glob("*/*/prepared.json"))
    assert len(prepared) == 2 and all(p.name.endswith("_3d_fullres_x1") for p in prepared)
    plans = {}
    for folder in prepared:
        name = folder.name.removesuffix("_3d_fullres_x1")
        plans[name] = json.loads((folder / "preprocessed" / name / "nnUNetPlans.json")
                                 .read_text())
        assert plans[name]["dataset_name"] == name
        assert any((folder / "preprocessed" / name).glob("nnUNetPlans_3d_fullres/*"))
    x1, x5 = (next(v for k, v in plans.items() if k.endswith(suffix))
              for suffix in ("_r1", "_r5"))
    assert x5["configurations"] == x1["configurations"]


def test_report_names_the_backend(study: tuple[Path, float]) -> None:
    out, _ = study
    assert "Backend nnunet" in (out / "report.md").read_text()


def test_a_trained_model_serves_as_a_pretrained_model_over_the_sweep(
        study: tuple[Path, float], tmp_path: Path) -> None:
    """`medlossy evaluate-pretrained MODEL SWEEP` with a model the nnU-Net backend trained:
    its agreement with its own x1 prediction and with the labels, at every ratio."""
    from medlossy.cli.main import main
    from medlossy.datasets.sweep import ratio_tag

    out, _ = study
    model = next(p.parent for p in sorted((out / "models").glob("*/*/medlossy-model.json"))
                 if p.parent.name.startswith(f"{ratio_tag(1.0)}_"))
    sweep = next((out / "sweeps").iterdir())
    agreement_file = tmp_path / "agreement.csv"
    assert main(["evaluate-pretrained", str(model), str(sweep), "--out", str(agreement_file),
                 "--device", "cpu", "--quiet"]) == 0
    agreement = pd.read_csv(agreement_file)
    assert set(agreement["ratio"]) == {1.0, 5.0} and agreement["case"].nunique() == 4
    assert set(agreement["reference"]) == {"x1", "labels"}
    assert (agreement.loc[(agreement["ratio"] == 1) & (agreement["reference"] == "x1")
                          & (agreement["class"] == "liver"), "dice"].fillna(1) == 1).all()
