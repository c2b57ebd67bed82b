"""A tiny study end to end: every experiment, report, tidy results, figures, cached reruns."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.experiments.config import StudyConfig, load_config
from medlossy.experiments.study import run_study

pytestmark = pytest.mark.slow

CONFIG = """\
experiments = ["quality", "train", "cross", "pretrained", "budget"]
ratios = [1, 1.2, 20]
train_ratios = [1, 20]
folds = 2
train_folds = [0]
budget_fractions = [0.3, 1.0]

[[datasets]]
path = "data/Dataset950_Phantom"
synthetic = true
body_region = "abdomen"

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

SECTIONS = ("1. Image quality", "2. Train on compressed data",
            "Statistics: non-inferiority against ratio 1", "3. Cross-ratio matrix",
            "4. Pretrained model on compressed inputs", "5. Storage budget",
            "Clinical guidance (context, not a verdict)")
EXPERIMENTS = {"quality", "train", "cross", "pretrained", "budget:few-shot",
               "budget:compressed"}
FIGURES = ("quality", "train_dice", "non_inferiority", "cross_Dataset950_Phantom",
           "pretrained_dice", "budget", "pictures/slices_Dataset950_Phantom",
           "pictures/contours_Dataset950_Phantom")


class Study:
    def __init__(self, config_path: Path, out: Path) -> None:
        self.config_path = config_path
        self.config: StudyConfig = load_config(config_path)
        self.out = out
        started = time.perf_counter()
        self.reports = run_study(self.config, out, workers=1)
        self.seconds = time.perf_counter() - started


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    root = tmp_path_factory.mktemp("study")
    # 64 x 64 slices: JPEG 2000 reaches x38 there (x9 on 32 x 32: the metadata), so x20
    # is met, not refused.
    write_phantom_dataset(root / "data", 6, PhantomConfig(shape=(64, 64, 24),
                                                         spacing=(6.0, 6.0, 6.0)))
    (root / "study.toml").write_text(CONFIG)
    return Study(root / "study.toml", root / "out")


def _mtimes(folder: Path, pattern: str) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.glob(pattern)}


def test_report_exists_in_markdown_and_html(study: Study) -> None:
    assert study.reports == [study.out / "report.md", study.out / "report.html"]
    assert all(path.stat().st_size > 0 for path in study.reports)


@pytest.mark.parametrize("name", ["report.md", "report.html"])
def test_report_has_every_experiment_section(study: Study, name: str) -> None:
    text = (study.out / name).read_text()

    missing = [section for section in SECTIONS if section not in text]
    assert not missing


@pytest.mark.parametrize("name", ["report.md", "report.html"])
def test_report_says_the_run_is_too_short_for_conclusions(study: Study, name: str) -> None:
    text = " ".join((study.out / name).read_text().split())

    assert "far too short" in text
    assert "not as evidence" in text


def test_guidance_for_the_stated_body_region_sits_beside_the_safe_ratio(study: Study) -> None:
    text = (study.out / "report.md").read_text()
    section = text.split("## Clinical guidance")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if "Dataset950_Phantom" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]

    # 2 test cases: fewer than min_test_cases, so no safe ratio is named to compare
    assert cells[:4] == ["Dataset950_Phantom", "CT", "abdomen",
                         "none named (too few test cases)"]
    assert "15:1" in cells and "8:1" in cells
    assert "Koff" in section and "Loose" in section


def test_a_ratio_stored_losslessly_is_labelled_so(study: Study) -> None:
    text = (study.out / "report.md").read_text()

    assert "x1.2 (lossless)" in text  # lossless coding beats x1.2 on every image
    assert "| lossless |" in text and "x20 (lossless" not in text
    ratios_line = next(line for line in text.splitlines() if "Compression ratios:" in line)
    assert "x1.2 (lossless)" in ratios_line and "{" not in ratios_line  # not a raw dict


def test_pictures_show_the_ratios_and_every_class_is_in_the_legend(study: Study) -> None:
    text = (study.out / "report.md").read_text()
    curves = (study.out / "train_dice.svg").read_text()
    contours = (study.out / "pictures" / "contours_Dataset950_Phantom.svg").read_text()

    assert "## Pictures: one slice at each ratio" in text
    assert "## Pictures: predicted contours" in text
    for name in ("liver", "spleen", "per-case mean"):
        assert name in curves
    assert "liver" in contours and "x20" in contours


def test_results_have_rows_for_every_experiment_and_the_config_hash(study: Study) -> None:
    results = pd.read_csv(study.out / "results.csv")

    assert set(results["experiment"]) == EXPERIMENTS
    assert set(results["config_hash"]) == {study.config.digest()}
    assert results.groupby("experiment").size().min() > 0


def test_segmentation_rows_cover_the_held_out_cases_and_ratios(study: Study) -> None:
    results = pd.read_csv(study.out / "results.csv")
    dice = results[(results["metric"] == "dice") & (results["class"] == "mean")]

    train = dice[dice["experiment"] == "train"]
    cross = dice[dice["experiment"] == "cross"]
    assert train["case"].nunique() == 3  # fold 0 of 2 over 6 cases
    assert set(train["ratio_train"]) == {1.0, 20.0}
    assert set(zip(cross["ratio_train"], cross["ratio_test"], strict=True)) == \
        {(1.0, 1.0), (1.0, 20.0), (20.0, 1.0), (20.0, 20.0)}
    assert dice["value"].between(0, 1).all()


def test_parquet_holds_the_same_table_as_csv(study: Study) -> None:
    csv = pd.read_csv(study.out / "results.csv")
    parquet = pd.read_parquet(study.out / "results.parquet")

    assert list(parquet.columns) == list(csv.columns)
    assert len(parquet) == len(csv)
    assert set(parquet["experiment"]) == EXPERIMENTS


@pytest.mark.parametrize("stem", FIGURES)
def test_figures_exist_as_png_and_svg(study: Study, stem: str) -> None:
    png, svg = study.out / f"{stem}.png", study.out / f"{stem}.svg"

    assert png.read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in svg.read_bytes()[:2000]


def test_one_model_per_ratio_plus_the_equal_byte_budget_models(study: Study) -> None:
    models = sorted(p.name.rsplit("_", 1)[0] for p in (study.out / "models").glob("*/*")
                    if (p / "model.pt").exists())

    # ratios 1 and 20 (train); few-shot on the x1 cases that fit 30% of the raw bytes at
    # lossless size (k of the 3 training cases); all cases at the ratio whose stored bytes
    # match, searched (not 1 / 0.3)
    few_shot = [m for m in models if m.startswith("r1_") and not m.endswith("frac1")]
    full = {"r1_fold0_frac1", "r20_fold0_frac1"}
    compressed = [m for m in models if m not in full and m not in few_shot]
    assert len(models) == 4 and len(few_shot) == len(compressed) == 1
    assert few_shot[0] in ("r1_fold0_frac0.333333", "r1_fold0_frac0.666667")
    assert compressed[0].endswith("_fold0_frac1") and compressed[0] != "r3.33333_fold0_frac1"


def test_rerun_reuses_every_unit_and_is_much_faster(study: Study, cli) -> None:
    models = _mtimes(study.out, "models/*/*/model.pt")
    evaluations = _mtimes(study.out, "evaluations/*/*.csv")
    results = pd.read_csv(study.out / "results.csv")

    started = time.perf_counter()
    code, stdout, stderr = cli("study", study.config_path, "--out", study.out, "--workers", "1",
                               "--quiet")
    seconds = time.perf_counter() - started

    assert code == 0, stderr
    assert stdout.split() == [str(path) for path in study.reports]
    assert _mtimes(study.out, "models/*/*/model.pt") == models
    assert _mtimes(study.out, "evaluations/*/*.csv") == evaluations
    pd.testing.assert_frame_equal(pd.read_csv(study.out / "results.csv"), results)
    assert seconds < 0.6 * study.seconds, (seconds, study.seconds)


def test_deleting_one_evaluation_reruns_only_that_unit(study: Study) -> None:
    models = _mtimes(study.out, "models/*/*/model.pt")
    predictions = _mtimes(study.out, "predictions/*/*/*.nii.gz")
    evaluations = _mtimes(study.out, "evaluations/*/*.csv")
    victim = next(p for p in sorted(evaluations) if p.name.startswith("r20_") and "_on_r20_" in
                  p.name)
    before = pd.read_csv(victim)
    victim.unlink()

    run_study(study.config, study.out, workers=1)

    after = _mtimes(study.out, "evaluations/*/*.csv")
    assert after.keys() == evaluations.keys()
    assert [p for p in after if after[p] != evaluations[p]] == [victim]
    pd.testing.assert_frame_equal(pd.read_csv(victim), before)
    assert _mtimes(study.out, "models/*/*/model.pt") == models
    assert _mtimes(study.out, "predictions/*/*/*.nii.gz") == predictions
