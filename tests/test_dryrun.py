"""``medlossy study CONFIG --dry-run`` on the paper's example configs (no data on disk)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from medlossy.cli.main import main
from medlossy.experiments.config import load_config
from medlossy.experiments.dryrun import TRAIN_VOXELS_PER_SECOND, dry_run

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("name", ["amos", "lits", "brats2021", "bgpd"])
def test_every_example_config_plans_without_its_data(name: str, tmp_path: Path) -> None:
    config = load_config(EXAMPLES / f"{name}.toml", check_files=False)
    assert not config.datasets[0].path.exists()  # the user brings the data
    units, totals, notes = dry_run(config, tmp_path)
    train = units[units["unit"] == "train"]
    few_shot = sum(1 for f in config.budget_fractions if f < 1) \
        if "budget" in config.experiments else 0
    assert len(train) == (len(config.train_ratios) + few_shot) * len(config.train_folds)
    assert not units["cached"].any()
    # 300 x 250 iterations of 2 x 128^3 voxels at the H100's 38 Mvox/s: 2.3 h per model.
    expected = 300 * 250 * 2 * 128 ** 3 / TRAIN_VOXELS_PER_SECOND / 3600
    assert train["gpu_hours"].to_numpy() == pytest.approx(expected)
    total = totals.set_index("unit").loc["total"]
    assert total["gpu_hours_to_run"] > len(train) * expected
    assert total["storage_gb"] > 0
    assert any("config hints" in note for note in notes)


def test_amos_dry_run_from_the_command_line(tmp_path: Path, capsys) -> None:
    assert main(["study", str(EXAMPLES / "amos.toml"), "--dry-run", "--out",
                 str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "## Totals" in output and "Mvox/s" in output
    assert "300 cases" in output
    assert not (tmp_path / "models").exists()  # nothing ran
    # users have the repository only: no path to the developers' shared notes
    assert "shared" not in output and "CODECS.md" not in output


@pytest.mark.parametrize("document", sorted(
    [*(Path(__file__).parent.parent / "docs").glob("*.md"),
     Path(__file__).parent.parent / "README.md"]), ids=lambda path: path.name)
def test_docs_cite_nothing_outside_the_repository(document: Path) -> None:
    text = document.read_text()
    for outside in ("../shared", "shared/", "STUDY.md", "/work/"):
        assert outside not in text, f"{document.name} cites {outside}"


def test_lits_is_cropped_to_the_liver() -> None:
    entry = load_config(EXAMPLES / "lits.toml", check_files=False).datasets[0]
    assert entry.crop_to_label == (1, 2) and entry.crop_margin_mm == 10


def test_brats_has_four_channels_by_its_size_hint() -> None:
    config = load_config(EXAMPLES / "brats2021.toml", check_files=False)
    assert config.datasets[0].voxels_per_case == 4 * 240 * 240 * 155


def test_a_codec_list_plans_a_sweep_and_models_per_codec(tmp_path: Path) -> None:
    """Each codec gets its own sweep and models, named dataset_codec, as the real run does
    (the dry run used to plan one codec's units: half the GPU-hours)."""
    config = load_config(EXAMPLES / "amos.toml", check_files=False)
    two = replace(config, codec=("jpeg2k", "htj2k"))

    one, _, _ = dry_run(config, tmp_path)
    units, _, _ = dry_run(two, tmp_path)

    for unit in ("compress", "train", "predict+evaluate"):
        assert (units["unit"] == unit).sum() == 2 * (one["unit"] == unit).sum(), unit
    names = set(units.loc[units["unit"] == "train", "dataset"])
    assert len(names) == 2
    assert sorted(name.rsplit("_", 1)[1] for name in names) == ["htj2k", "jpeg2k"]
