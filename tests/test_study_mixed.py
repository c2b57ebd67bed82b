"""One model for every ratio: trained on patches from a random ratio, tested at each ratio,
set beside the x1 model and each ratio's own model, and given its cross-ratio matrix row."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.errors import MedlossyError
from medlossy.experiments.config import load_config
from medlossy.experiments.dryrun import dry_run
from medlossy.experiments.statistics import compare_mixed
from medlossy.experiments.study import run_study
from medlossy.train import loop
from medlossy.train.config import TrainConfig

pytestmark = pytest.mark.slow

CONFIG = """\
experiments = ["train", "cross", "pretrained", "mixed"]
ratios = [1, 5, 20, 300]  # x300: out of JPEG 2000's reach on these slices, left out
train_ratios = [1, 20]
folds = 2
train_folds = [0]

[[datasets]]
path = "data/Dataset950_Phantom"
synthetic = true

[training]
preset = "lowres"
target_spacing = [6, 6, 6]
patch_size = [16, 16, 16]
filters = [4, 8, 16]
epochs = 1
iterations_per_epoch = 2
batch_size = 1
device = "cpu"
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    write_phantom_dataset(root / "data", 4, PhantomConfig(shape=(64, 64, 16),
                                                         spacing=(6.0, 6.0, 6.0)))
    (root / "study.toml").write_text(CONFIG)
    run_study(load_config(root / "study.toml"), root / "out", workers=1)
    return root / "out"


@pytest.fixture(scope="module")
def continued(tmp_path_factory) -> Path:
    """A study whose mixed model continues the x1 model, x1 patches drawn 3 times as often."""
    root = tmp_path_factory.mktemp("continued")
    write_phantom_dataset(root / "data", 4, PhantomConfig(shape=(64, 64, 16),
                                                         spacing=(6.0, 6.0, 6.0)))
    (root / "study.toml").write_text('mixed_ratios = [1, 20]\nmixed_weights = [3, 1]\n'
                                     'mixed_start = "x1"\nmixed_epochs = 2\n' +
                                     CONFIG.replace('"cross", ', ''))
    run_study(load_config(root / "study.toml"), root / "out", workers=1)
    return root / "out"


def test_a_mixed_model_can_continue_the_x1_model_with_weights(continued: Path) -> None:
    models = continued / "models" / "Dataset950_Phantom"
    mixed = next(models.glob("mixed_fold0_*/"))
    x1 = next(models.glob("r1_fold0_*/"))
    described = json.loads((mixed / "model.json").read_text())

    assert described["trained_on"]["continued_from"] == str(x1)
    assert described["trained_on"]["mixed_weights"] == [3, 1]
    assert len(described["training"]["history"]) == 2  # mixed_epochs, not [training]'s
    results = pd.read_csv(continued / "results.csv")
    assert sorted(results[results["experiment"] == "mixed"]["ratio_test"].unique()) == \
        [1, 5, 20]
    report = (continued / "report.md").read_text()
    assert "x1 weight 3, x20 weight 1" in report
    assert "continuing the x1 model for 2 more epochs" in report


def test_the_mixed_model_is_trained_on_every_ratio_of_the_sweep(study: Path) -> None:
    folders = sorted((study / "models" / "Dataset950_Phantom").glob("mixed_fold0_*/"))
    assert len(folders) == 1
    trained_on = json.loads((folders[0] / "model.json").read_text())["trained_on"]

    assert trained_on["ratio"] == "mixed"
    assert sorted(source["ratio"] for source in trained_on["mixed"]) == [1, 5, 20]


def test_results_hold_the_mixed_model_at_every_test_ratio(study: Path) -> None:
    results = pd.read_csv(study / "results.csv")
    mixed = results[results["experiment"] == "mixed"]

    assert sorted(mixed["ratio_test"].unique()) == [1, 5, 20]
    assert mixed["ratio_train"].isna().all()
    assert mixed["case"].nunique() == 2  # the 2 held-out cases of fold 0


def test_the_report_sets_it_beside_the_x1_model_and_each_ratios_model(study: Path) -> None:
    report = (study / "report.md").read_text()
    section = report[report.index("## 3b. One model for every ratio"):]
    section = section[:section.index("\n## ", 4)]

    assert "x1, x5, x20" in section
    for column in ("mixed_dice", "x1_model_dice", "minus_x1_model_low", "ratio_model_dice",
                   "minus_ratio_model_high"):
        assert column in section
    assert (study / "mixed_dice.png").exists()


def test_a_dry_run_after_the_study_finds_every_unit_cached(study: Path) -> None:
    """x300 was out of reach: the sweep still counts as compressed (it used to be planned
    anew, every unit "not cached")."""
    units, _, _ = dry_run(load_config(study.parent / "study.toml"), study)

    trained = units[units["unit"].isin(["train", "predict+evaluate"])]
    assert len(trained) and trained["cached"].all()
    assert 300 not in set(trained["ratio"])


def test_the_cross_ratio_matrix_gets_the_mixed_row(study: Path) -> None:
    report = (study / "report.md").read_text()
    section = report[report.index("## 3. Cross-ratio matrix"):]
    rows = [line for line in section.splitlines() if line.startswith("| train")]

    assert [row.split("|")[1].strip() for row in rows] == ["train x1", "train x20",
                                                            "train mixed"]
    assert all(row.count("[") == 2 for row in rows)  # an interval in each test column


def _results(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame([{"experiment": e, "dataset": "D", "case": c, "class": "mean",
                          "ratio_train": rt, "ratio_test": r, "fold": 0, "train_seed": 0,
                          "metric": "dice", "value": v} for e, rt, r, c, v in rows])


def test_compare_mixed_pairs_each_case_with_the_same_cases_of_the_others() -> None:
    rng = np.random.default_rng(0)
    x1 = rng.uniform(0.7, 0.9, 6)
    rows = []
    for case, base in enumerate(x1):
        rows += [("mixed", math.nan, 50, f"c{case}", base + 0.05),
                 ("pretrained", 1.0, 50, f"c{case}", base),
                 ("train", 50.0, 50, f"c{case}", base + 0.02),
                 ("train", 20.0, 20, f"c{case}", base)]  # another ratio: never paired
    table = compare_mixed(_results(rows), assumed_model_sd=0.0).set_index("ratio_test")

    assert table.loc[50, "minus_x1_model"] == pytest.approx(0.05)
    assert table.loc[50, "minus_ratio_model"] == pytest.approx(0.03)
    assert table.loc[50, "minus_x1_model_low"] == pytest.approx(0.05)  # no spread
    assert table.loc[50, "cases"] == 6


def test_compare_mixed_leaves_a_model_that_was_not_run_empty() -> None:
    rows = [("mixed", math.nan, 5, f"c{i}", 0.8 + i / 100) for i in range(3)]
    rows += [("pretrained", math.nan, 5, f"c{i}", 0.7) for i in range(3)]  # a checkpoint

    table = compare_mixed(_results(rows))

    assert np.isnan(table.loc[0, "x1_model_dice"])
    assert np.isnan(table.loc[0, "minus_ratio_model"])
    assert table.loc[0, "mixed_dice"] == pytest.approx(0.81)


@pytest.mark.parametrize(("line", "problem"), [
    ("mixed_ratios = [5, 20]", "must include 1"),
    ("mixed_ratios = [1, 50]", "not among ratios"),
    ("mixed_ratios = \"some\"", "must be \"all\" or a list"),
    ("mixed_weights = [1, 2]", "one number >= 0 per ratio"),
    ("mixed_ratios = [1, 5]\nmixed_weights = [0, 0]", "not all 0"),
    ("mixed_start = \"x20\"", "mixed_start must be one of scratch, x1"),
    ("mixed_epochs = 0", "mixed_epochs must be a whole number"),
])
def test_bad_mixed_ratios_are_refused_in_one_line(tmp_path: Path, line: str,
                                                  problem: str) -> None:
    write_phantom_dataset(tmp_path / "data", 4, PhantomConfig(shape=(32, 32, 16)))
    (tmp_path / "study.toml").write_text(line + "\n" + CONFIG)

    with pytest.raises(MedlossyError, match=problem):
        load_config(tmp_path / "study.toml")


def test_nnunet_cannot_train_a_mixed_model(tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path / "data", 4, PhantomConfig(shape=(32, 32, 16)))
    text = CONFIG.replace('preset = "lowres"', 'backend = "nnunet"').split("target_spacing")[0]
    (tmp_path / "study.toml").write_text(text + "epochs = 1\n")

    with pytest.raises(MedlossyError, match="built-in backend only"):
        load_config(tmp_path / "study.toml")


def _at_ratio(folder: Path, ratio: float) -> Path:
    """A phantom dataset recorded as a sweep's dataset of ``ratio``."""
    document = json.loads((folder / "dataset.json").read_text())
    document["medlossy"] = {"ratio": ratio}
    (folder / "dataset.json").write_text(json.dumps(document))
    return folder


def _two_ratios(tmp_path: Path, seed: int = 0) -> tuple[Path, Path]:
    return (_at_ratio(write_phantom_dataset(tmp_path / "a", 4, PhantomConfig(
                shape=(32, 32, 16), seed=0)), 1),
            _at_ratio(write_phantom_dataset(tmp_path / "b", 4, PhantomConfig(
                shape=(32, 32, 16), seed=seed)), 5))


MIXED_CONFIG = TrainConfig.from_preset("lowres", target_spacing=(6.0, 6.0, 6.0),
                                       patch_size=(16, 16, 16), filters=(4, 8, 16), epochs=1,
                                       iterations_per_epoch=1, batch_size=1, folds=2,
                                       device="cpu")


def _samplers_made(monkeypatch) -> list:
    """Every patch sampler the training loop makes, recorded as it makes them."""
    made = []
    original = loop.PatchSampler

    def recording(cases, config, weights=None):
        made.append(original(cases, config, weights))
        return made[-1]

    monkeypatch.setattr(loop, "PatchSampler", recording)
    return made


def test_the_sampler_draws_from_every_case_at_every_ratio(tmp_path: Path,
                                                          monkeypatch) -> None:
    first, second = _two_ratios(tmp_path)
    made = _samplers_made(monkeypatch)
    loop.train_model(first, tmp_path / "model", MIXED_CONFIG, mixed=[second])

    assert len(made[0].cases) == 2 * 2  # 2 training cases of fold 0, at 2 ratios


def test_a_ratio_missing_a_training_case_is_named(tmp_path: Path) -> None:
    first, second = _two_ratios(tmp_path)
    for path in (second / "imagesTr").glob("phantom_000*"):
        path.unlink()
    (second / "labelsTr" / "phantom_000.nii.gz").unlink()
    config = replace(TrainConfig.from_preset("lowres", patch_size=(16, 16, 16),
                                             filters=(4, 8, 16), folds=2), epochs=1)

    with pytest.raises(MedlossyError, match="has no case phantom_00"):
        loop.train_model(first, tmp_path / "model", config, mixed=[second])


def test_another_cohort_is_not_another_ratio(tmp_path: Path) -> None:
    """Same case names and channels, other anatomy: refused, naming the dataset."""
    first, second = _two_ratios(tmp_path, seed=9)

    with pytest.raises(MedlossyError, match="labels differ from the x1"):
        loop.train_model(first, tmp_path / "model", MIXED_CONFIG, mixed=[second])


@pytest.mark.parametrize("which", ["itself", "not x1", "no ratio"])
def test_mixed_datasets_must_be_other_ratios_of_a_sweep(tmp_path: Path, which: str) -> None:
    first, second = _two_ratios(tmp_path)
    if which == "itself":
        dataset, mixed = first, [first]
    elif which == "not x1":
        dataset, mixed = second, [first]
    else:
        document = json.loads((second / "dataset.json").read_text())
        del document["medlossy"]
        (second / "dataset.json").write_text(json.dumps(document))
        dataset, mixed = first, [second]

    with pytest.raises(MedlossyError, match=r"not x1|not another ratio"):
        loop.train_model(dataset, tmp_path / "model", MIXED_CONFIG, mixed=mixed)


def test_a_scalar_mixed_ratios_is_refused_in_one_line(tmp_path: Path) -> None:
    write_phantom_dataset(tmp_path / "data", 4, PhantomConfig(shape=(32, 32, 16)))
    (tmp_path / "study.toml").write_text("mixed_ratios = 5\n" + CONFIG)

    with pytest.raises(MedlossyError, match="must be \"all\" or a list"):
        load_config(tmp_path / "study.toml")


def test_mixed_weights_set_how_often_each_ratio_is_drawn(tmp_path: Path,
                                                         monkeypatch) -> None:
    """Weights [3, 1]: three patches in four from the x1 cases, each case equally often."""
    first, second = _two_ratios(tmp_path)
    made = _samplers_made(monkeypatch)
    loop.train_model(first, tmp_path / "model", MIXED_CONFIG, mixed=[second],
                     mixed_weights=[3, 1])
    sampler = made[0]
    draws = np.bincount([sampler._draw() for _ in range(4000)], minlength=4)

    assert sampler.weights.tolist() == pytest.approx([3 / 8, 3 / 8, 1 / 8, 1 / 8])
    assert draws[:2].sum() / 4000 == pytest.approx(0.75, abs=0.03)


def test_mixed_weights_need_one_number_per_ratio(tmp_path: Path) -> None:
    first, second = _two_ratios(tmp_path)

    with pytest.raises(ValueError, match="one per ratio"):
        loop.train_model(first, tmp_path / "model", MIXED_CONFIG, mixed=[second],
                         mixed_weights=[1])


def _distance(a: dict, b: dict) -> float:
    return sum(float((a[k].float() - b[k].float()).abs().sum()) for k in a)


def test_a_continued_model_starts_from_the_x1_model(tmp_path: Path) -> None:
    """Continuing the x1 model: its weights and optimizer state, at its last learning rate;
    a fresh network (another seed than the x1 model's) ends far from it."""
    import torch

    first, second = _two_ratios(tmp_path)
    x1 = loop.train_model(first, tmp_path / "x1", replace(MIXED_CONFIG, epochs=2, seed=5))
    continued = loop.train_model(first, tmp_path / "mixed", MIXED_CONFIG, mixed=[second],
                                 start_from=x1)
    fresh = loop.train_model(first, tmp_path / "fresh", MIXED_CONFIG, mixed=[second])

    def weights(folder: Path) -> dict:
        return torch.load(folder / loop.MODEL_FILE, weights_only=False)["network"]

    described = json.loads((continued / loop.DESCRIPTION_FILE).read_text())
    x1_history = json.loads((x1 / loop.DESCRIPTION_FILE).read_text())["training"]["history"]
    assert described["training"]["history"][0]["lr"] == pytest.approx(x1_history[-1]["lr"])
    assert described["trained_on"]["continued_from"] == str(x1)
    assert _distance(weights(continued), weights(x1)) < \
        _distance(weights(fresh), weights(x1)) / 10


def test_a_model_of_another_split_cannot_be_continued(tmp_path: Path) -> None:
    first, second = _two_ratios(tmp_path)
    other = loop.train_model(first, tmp_path / "x1", replace(MIXED_CONFIG, fold=1))

    with pytest.raises(MedlossyError, match="another network, split"):
        loop.train_model(first, tmp_path / "mixed", MIXED_CONFIG, mixed=[second],
                         start_from=other)


def test_the_train_command_takes_weights_and_a_model_to_continue(tmp_path: Path,
                                                                  cli) -> None:
    first, second = _two_ratios(tmp_path)
    common = ["--preset", "lowres", "--patch-size", "16", "--batch-size", "1", "--epochs", "1",
              "--iterations", "1", "--folds", "2", "--device", "cpu"]
    code, _, err = cli("train", first, "--out", tmp_path / "x1", *common)
    assert code == 0, err

    code, _, err = cli("train", first, "--out", tmp_path / "mixed", "--mixed", second,
                       "--mixed-weights", "3,1", "--start-from", tmp_path / "x1", *common)

    assert code == 0, err
    trained_on = json.loads((tmp_path / "mixed" / "model.json").read_text())["trained_on"]
    assert trained_on["mixed_weights"] == [3.0, 1.0]
    assert trained_on["continued_from"] == str(tmp_path / "x1")
    code, _, err = cli("train", first, "--out", tmp_path / "bad", "--mixed", second,
                       "--mixed-weights", "1,2,3", *common)
    assert code == 2 and err.count("\n") == 1 and "--mixed-weights needs 1 or 2" in err


def test_a_lossless_copy_as_the_other_ratio_gives_the_x1_entries_again(tmp_path: Path,
                                                                       monkeypatch) -> None:
    """The mixed path against the single-ratio one: with another ratio whose voxels are the
    x1 ones, each of its entries is its x1 entry again (same grid, normalisation, labels),
    so the mixed model sees the x1 model's data (measured: Dice 0.846 against 0.836)."""
    import shutil

    first, _ = _two_ratios(tmp_path)
    copy = _at_ratio(Path(shutil.copytree(first, tmp_path / "copy")), 2)
    seen = []
    original = loop.PatchSampler

    def recording(cases, config, weights=None):
        seen.extend(cases)
        return original(cases, config, weights)

    monkeypatch.setattr(loop, "PatchSampler", recording)
    loop.train_model(first, tmp_path / "model", MIXED_CONFIG, mixed=[copy])

    half = len(seen) // 2
    for x1, other in zip(seen[:half], seen[half:], strict=True):
        assert x1.name == other.name
        np.testing.assert_array_equal(x1.image, other.image)
        np.testing.assert_array_equal(x1.labels, other.labels)


@pytest.mark.parametrize("weights", [[math.inf, 1], [1, 1e309]])
def test_infinite_mixed_weights_are_refused(tmp_path: Path, weights: list) -> None:
    """inf passed '>= 0' and failed later as 'Probabilities contain NaN' (no name)."""
    first, second = _two_ratios(tmp_path)

    with pytest.raises(ValueError, match="finite numbers >= 0, one per ratio"):
        loop.train_model(first, tmp_path / "model", MIXED_CONFIG, mixed=[second],
                         mixed_weights=weights)


@pytest.mark.parametrize("weight", ["inf", "nan"])
def test_a_mixed_weight_that_is_no_finite_number_is_refused(tmp_path: Path,
                                                            weight: str) -> None:
    """TOML's nan and inf passed the study's check (nan < 0 is false)."""
    write_phantom_dataset(tmp_path / "data", 4, PhantomConfig(shape=(32, 32, 16)))
    (tmp_path / "study.toml").write_text(f"mixed_ratios = [1, 5]\nmixed_weights = [{weight}, 1]"
                                         "\n" + CONFIG)

    with pytest.raises(MedlossyError, match="finite and not all 0"):
        load_config(tmp_path / "study.toml")


@pytest.mark.parametrize("damage", ["cut_checkpoint", "cut_model", "garbage_model",
                                    "empty_json", "list_json", "no_history"])
def test_a_damaged_model_to_continue_is_one_error_naming_it(tmp_path: Path,
                                                            damage: str) -> None:
    """Each of these was a traceback (RuntimeError, KeyError, TypeError, IndexError) or a
    line naming no file ('invalid literal for int()')."""
    import shutil

    first, second = _two_ratios(tmp_path)
    x1 = loop.train_model(first, tmp_path / "x1", MIXED_CONFIG)
    start = Path(shutil.copytree(x1, tmp_path / "start"))
    described = json.loads((start / loop.DESCRIPTION_FILE).read_text())
    if damage != "cut_checkpoint":
        (start / loop.CHECKPOINT_FILE).unlink()
    if damage == "cut_checkpoint":
        (start / loop.CHECKPOINT_FILE).write_bytes((x1 / loop.CHECKPOINT_FILE).read_bytes()[:999])
    elif damage == "cut_model":
        (start / loop.MODEL_FILE).write_bytes((x1 / loop.MODEL_FILE).read_bytes()[:999])
    elif damage == "garbage_model":
        (start / loop.MODEL_FILE).write_text("garbage\n")
    elif damage == "no_history":
        described["training"]["history"] = []
        (start / loop.DESCRIPTION_FILE).write_text(json.dumps(described))
    else:
        (start / loop.DESCRIPTION_FILE).write_text("{}" if damage == "empty_json" else "[1]")

    with pytest.raises(MedlossyError, match=str(start)) as raised:
        loop.train_model(first, tmp_path / "mixed", MIXED_CONFIG, mixed=[second],
                         start_from=start)
    assert "\n" not in str(raised.value)


def test_mixed_weights_without_mixed_datasets_are_refused(tmp_path: Path, cli) -> None:
    """They were taken and recorded in model.json of a plain x1 model."""
    first, _ = _two_ratios(tmp_path)

    code, _, err = cli("train", first, "--out", tmp_path / "m", "--mixed-weights", "3",
                       "--epochs", "1", "--iterations", "1", "--device", "cpu")

    assert code == 2 and err.count("\n") == 1 and "--mixed-weights needs --mixed" in err
    assert not (tmp_path / "m").exists()


def test_a_model_is_not_continued_into_its_own_folder(tmp_path: Path) -> None:
    """--start-from X --out X replaced the x1 model X by the mixed one, continued_from X."""
    first, second = _two_ratios(tmp_path)
    x1 = loop.train_model(first, tmp_path / "x1", MIXED_CONFIG)
    before = (x1 / loop.MODEL_FILE).read_bytes()

    with pytest.raises(MedlossyError, match="is the model to continue"):
        loop.train_model(first, x1, MIXED_CONFIG, mixed=[second], start_from=x1)
    assert (x1 / loop.MODEL_FILE).read_bytes() == before


def test_train_into_a_finished_model_of_another_recipe_exits_2_and_keeps_it(
        tmp_path: Path, cli) -> None:
    """README: an existing output is never replaced; train --out MODEL retrained over it."""
    first, _ = _two_ratios(tmp_path)
    options = ("--epochs", "1", "--iterations", "1", "--device", "cpu", "--folds", "2",
               "--patch-size", "16,16,16")
    code, _, err = cli("train", first, "--out", tmp_path / "m", *options)
    assert code == 0, err
    before = (tmp_path / "m" / loop.MODEL_FILE).read_bytes()

    code, _, err = cli("train", first, "--out", tmp_path / "m", *options, "--seed", "7")

    assert code == 2 and err.count("\n") == 1 and "choose a new --out" in err
    assert (tmp_path / "m" / loop.MODEL_FILE).read_bytes() == before
