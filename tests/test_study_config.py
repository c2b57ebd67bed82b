"""The study's TOML config: paths relative to the file, every mistake caught before work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.errors import MedlossyError
from medlossy.experiments.config import load_config

GOOD = """\
experiments = ["quality", "train", "cross", "pretrained", "budget"]
ratios = [1, 20]
train_ratios = [1, 20]
folds = 2
train_folds = [0]
budget_fractions = [0.5, 1.0]

[[datasets]]
path = "../data/Dataset950_Phantom"

[training]
preset = "lowres"
target_spacing = [6, 6, 6]
patch_size = [16, 16, 16]
filters = [4, 8, 16]
epochs = 2
iterations_per_epoch = 2
batch_size = 1
device = "cpu"
"""

#: (what to change in GOOD, what the one-line error says)
BAD = {
    "unknown top-level key": (("folds = 2", "folds = 2\ncolour = \"red\""),
                              r"unknown key\(s\) \['colour'\]"),
    "unknown training key": (("epochs = 2", "epochs = 2\nepoch = 3"),
                             r"\[training\]: unknown option\(s\) \['epoch'\] for backend "
                             "'builtin'"),
    "unknown experiment": (('"budget"]', '"budget", "segment"]'),
                           r"unknown experiment\(s\) \['segment'\]"),
    "more folds than cases": (("folds = 2", "folds = 7"),
                              "7 folds but .*Dataset950_Phantom has 6 labelled cases"),
    "budget leaves no case": (("[0.5, 1.0]", "[0.1, 1.0]"),
                              "budget fraction 0.1 leaves no training case of"),
    "missing checkpoint": (("[training]", '[pretrained]\ncheckpoint = "swin.pt"\n\n[training]'),
                           r"pretrained checkpoint .*swin\.pt does not exist"),
    "train ratios without 1": (("train_ratios = [1, 20]", "train_ratios = [5, 20]"),
                               "train_ratios must include 1"),
    "train fold outside folds": (("train_folds = [0]", "train_folds = [2]"),
                                 r"train_folds must be in 0\.\.1"),
    "bad training value": (("patch_size = [16, 16, 16]", "patch_size = [18, 18, 18]"),
                           r"\[training\]: patch size \(18, 18, 18\) must be divisible by 4"),
    "not TOML": (("folds = 2", "folds = = 2"), "not valid TOML"),
    "unknown safe-ratio rule": (("folds = 2", 'folds = 2\nsafe_ratio_over = "worst"'),
                                "safe_ratio_over must be 'classes' or 'mean', got 'worst'"),
    "tail limit of 1": (("folds = 2", "folds = 2\ntail_limit = 1.0"),
                        r"tail_limit must be in \(0, 1\)"),
    "negative model sd": (("folds = 2", "folds = 2\nassumed_model_sd = -0.01"),
                          r"assumed_model_sd must be in \[0, 1\)"),
    "too few minimum cases": (("folds = 2", "folds = 2\nmin_test_cases = 1"),
                              "min_test_cases must be at least 2"),
    "tile a codec cannot store": (("folds = 2", 'folds = 2\ncodec = "jpegls"\ntile = 64'),
                                  "codec 'jpegls' cannot store tiles; tile works with"),
    "tile too small": (("folds = 2", "folds = 2\ntile = 16"), "tile must be at least 32"),
    "tile not a number": (("folds = 2", 'folds = 2\ntile = "256"'),
                          "tile must be a whole number of pixels, got '256'"),
    # quoted numbers crashed with TypeError: '<' not supported between 'int' and 'str'
    "quoted tail limit": (("folds = 2", 'folds = 2\ntail_limit = "0.1"'),
                          "tail_limit must be a number, got '0.1'"),
    "quoted margin": (("folds = 2", 'folds = 2\nmargin = "0.01"'),
                      "margin must be a number, got '0.01'"),
    "fractional minimum cases": (("folds = 2", "folds = 2\nmin_test_cases = 2.5"),
                                 "min_test_cases must be a whole number, got 2.5"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    write_phantom_dataset(root / "data", 6, PhantomConfig(shape=(24, 24, 16),
                                                         spacing=(6.0, 6.0, 6.0)))
    return root


def _write(data: Path, text: str, name: str = "study.toml") -> Path:
    folder = data / "configs"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def _bad(data: Path, case: str) -> tuple[Path, str]:
    (old, new), message = BAD[case]
    assert old in GOOD
    return _write(data, GOOD.replace(old, new, 1), f"{case.replace(' ', '_')}.toml"), message


def test_dataset_paths_are_relative_to_the_config_file(data: Path, monkeypatch) -> None:
    monkeypatch.chdir(data / "data")  # not the config's folder

    config = load_config(_write(data, GOOD))

    assert config.datasets[0].path == (data / "data" / "Dataset950_Phantom").resolve()
    assert config.datasets[0].train and not config.datasets[0].synthetic


def test_values_reach_the_study_and_training_configs(data: Path) -> None:
    config = load_config(_write(data, GOOD))

    training = config.backend.config(config.train_request(fold=1, fraction=0.5))
    assert (config.ratios, config.train_ratios, config.folds) == ((1, 20), (1, 20), 2)
    assert config.budget_ratios == (2.0, 1.0)
    assert training.patch_size == (16, 16, 16) and training.filters == (4, 8, 16)
    assert (training.fold, training.folds, training.train_fraction) == (1, 2, 0.5)
    assert (training.epochs, training.device) == (2, "cpu")


def test_tile_reaches_the_study(data: Path) -> None:
    assert load_config(_write(data, GOOD)).tile is None
    assert load_config(_write(data, GOOD.replace("folds = 2", "folds = 2\ntile = 64"))).tile \
        == 64


def test_config_hash_follows_the_settings(data: Path) -> None:
    first = load_config(_write(data, GOOD)).digest()

    assert load_config(_write(data, GOOD)).digest() == first
    assert load_config(_write(data, GOOD.replace("epochs = 2", "epochs = 3"))).digest() != first


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_one_error_naming_the_file(data: Path, case: str) -> None:
    path, message = _bad(data, case)

    with pytest.raises(MedlossyError, match=message) as raised:
        load_config(path)

    assert str(raised.value).startswith(str(path))
    assert "\n" not in str(raised.value)


def test_missing_dataset_is_an_error_naming_the_dataset(data: Path) -> None:
    path = _write(data, GOOD.replace("Dataset950_Phantom", "Dataset999_Missing"), "gone.toml")

    with pytest.raises(MedlossyError, match="Dataset999_Missing: not a dataset"):
        load_config(path)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MedlossyError, match="no such study config"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("case", ["unknown top-level key", "more folds than cases",
                                  "missing checkpoint", "train ratios without 1"])
def test_cli_refuses_a_bad_config_before_any_work(data: Path, case: str, tmp_path: Path,
                                                  cli) -> None:
    path, message = _bad(data, case)
    out = tmp_path / "out"

    code, stdout, stderr = cli("study", path, "--out", out, "--quiet")

    assert code == 2
    assert stderr.startswith(f"medlossy: error: {path}: bad study config: ")
    assert stderr.count("\n") == 1
    assert re.search(message, stderr)
    assert stdout == ""
    assert not out.exists()


def test_repeats_plan_one_training_unit_per_ratio_fold_and_seed(data: Path,
                                                                tmp_path: Path) -> None:
    from medlossy.experiments.segmentation import SweepFolders, plan_segmentation

    text = GOOD.replace('"cross", "pretrained", "budget"', '"cross"').replace(
        "train_folds = [0]", "train_folds = [0, 1]\nseeds = [0, 1, 2]")
    config = load_config(_write(data, text, "repeats.toml"))
    folder = data / "data" / "Dataset950_Phantom"
    sweep = SweepFolders("P", {1.0: folder, 20.0: folder})

    plan = plan_segmentation(config, [sweep], tmp_path)
    again = plan_segmentation(config, [sweep], tmp_path)
    single = plan_segmentation(load_config(_write(data, GOOD.replace(
        '"cross", "pretrained", "budget"', '"cross"'), "single.toml")), [sweep], tmp_path)

    units = {(u.ratio, u.request.fold, u.request.seed) for u in plan.train.values()}
    assert len(plan.train) == len(units) == 2 * 2 * 3
    assert units == {(r, f, s) for r in (1.0, 20.0) for f in (0, 1) for s in (0, 1, 2)}
    assert set(again.train) == set(plan.train)  # content-hashed: a rerun finds the same
    assert set(single.train) < set(plan.train)  # seed 0, fold 0 units are shared
    # cross: every model of a (fold, seed) on every ratio; evaluation tables per model
    assert len(plan.evaluations) == 12 * 2


def test_a_ratio_out_of_reach_is_left_out_of_the_plan(data: Path, tmp_path: Path) -> None:
    """x100 not swept (out of the codec's reach on some image) once crashed the demo with
    KeyError: 100; the experiments run on the ratios that were swept."""
    from medlossy.experiments.segmentation import SweepFolders, plan_segmentation

    text = GOOD.replace('"cross", "pretrained", "budget"', '"cross", "pretrained"')
    config = load_config(_write(data, text, "unreached.toml"))
    folder = data / "data" / "Dataset950_Phantom"
    wanted = set(config.train_ratios) | set(config.ratios)
    swept = {r: folder for r in wanted if r != max(wanted)}
    plan = plan_segmentation(config, [SweepFolders("P", swept)], tmp_path)

    assert {u.ratio for u in plan.train.values()} == set(config.train_ratios) - {max(wanted)}
    tested = {row.evaluation.ratio_test for row in plan.rows}
    assert max(wanted) not in tested and tested
