"""``medlossy study CONFIG --plan``: the power of a design by simulation, before training."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from medlossy.cli.main import main
from medlossy.experiments.config import load_config
from medlossy.experiments.plan import plan_power

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_seeds_buy_power_that_three_folds_alone_lack() -> None:
    """AMOS (300 cases, 3 folds x 1 seed): training noise of sd 0.01 leaves a 0.01 margin
    mostly inconclusive; 3 seeds show it most of the time; both hold the margin's error."""
    config = load_config(EXAMPLES / "amos.toml", check_files=False)

    paper = plan_power(config, model_sd=0.01, studies=1000).iloc[0]
    seeds = plan_power(replace(config, seeds=(0, 1, 2)), model_sd=0.01, studies=1000).iloc[0]

    assert paper["test_cases"] == 300 and paper["folds_x_seeds"] == "3 x 1"
    assert paper["non_inferior"] < 0.35 < seeds["non_inferior"]
    assert seeds["detectable_margin"] < paper["detectable_margin"]
    assert max(paper["false_non_inferior_at_margin"],
               seeds["false_non_inferior_at_margin"]) <= 0.04
    assert paper["inferior"] < 0.01


def test_a_real_drop_is_called_inferior() -> None:
    config = load_config(EXAMPLES / "amos.toml", check_files=False)

    row = plan_power(config, effect=-0.08, model_sd=0.01, studies=500).iloc[0]

    assert row["inferior"] == pytest.approx(1.0, abs=0.02)


def test_plan_from_the_command_line_runs_nothing(tmp_path: Path, capsys) -> None:
    assert main(["study", str(EXAMPLES / "amos.toml"), "--plan", "--model-sd", "0.005",
                 "--out", str(tmp_path / "study")]) == 0
    output = capsys.readouterr().out
    assert "## Power of the design" in output and "| 300 | 3 x 1 |" in output
    assert "0.005" in output
    assert not (tmp_path / "study").exists()


def test_the_model_sd_of_the_plan_defaults_to_the_assumed_one() -> None:
    config = load_config(EXAMPLES / "amos.toml", check_files=False)

    assert plan_power(config, studies=200).iloc[0]["model_sd"] == 0.02


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--case-sd", "-1", r"--case-sd is a standard deviation of Dice, in \[0, 1\); got -1"),
    ("--model-sd", "-0.01", "--model-sd is a standard deviation"),
    ("--effect", "5", r"--effect is a mean Dice difference, in \[-1, 1\]; got 5")])
def test_impossible_plan_inputs_are_one_line_errors(option, value, message, capsys) -> None:
    """They printed a power table (case sd -1: detectable margin 1.52)."""
    assert main(["study", str(EXAMPLES / "amos.toml"), "--plan", option, value]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert re.search(message, captured.err)


def test_a_config_that_trains_nothing_has_no_design_to_plan() -> None:
    """A quality-only study printed an empty '|  |' table."""
    config = load_config(EXAMPLES / "amos.toml", check_files=False)

    with pytest.raises(ValueError, match="nothing to plan: no dataset is trained"):
        plan_power(replace(config, experiments=("quality",)))
