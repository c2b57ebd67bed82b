"""Published clinical guidance for lossy compression: the table and how a safe ratio reads."""

from __future__ import annotations

import pytest

from medlossy.errors import MedlossyError
from medlossy.experiments.config import DatasetEntry, StudyConfig, validate
from medlossy.experiments.guidelines import accepted_ratios, compared, guidance_rows
from medlossy.experiments.statistics import SafeRatio


@pytest.mark.parametrize(("modality", "region", "car", "drg"), [
    ("CT", "abdomen", 15, 8), ("CT", "chest", 15, 8), ("CT", "musculoskeletal", 15, 8),
    ("CT", "head", 12, 5), ("MR", "head", 24, 7), ("mr", "abdomen", 24, 7)])
def test_accepted_ratios_follow_the_two_guidelines(modality, region, car, drg) -> None:
    assert accepted_ratios(modality, region) == {"CAR": car, "DRG": drg}


def test_an_unknown_region_is_refused_and_an_uncovered_modality_has_none() -> None:
    with pytest.raises(ValueError, match="body_region must be one of"):
        accepted_ratios("CT", "brain")
    assert accepted_ratios("PT", "abdomen") == {}


@pytest.mark.parametrize(("safe", "words"), [
    (20, "beyond it (x20 > 15:1)"), (15, "equal"), (10, "within it (x10 < 15:1)"),
    (1, "no compressed ratio shown safe here"), (None, "no compressed ratio shown safe here")])
def test_a_safe_ratio_is_compared_in_words(safe, words) -> None:
    assert compared(safe, 15) == words


def test_rows_say_what_is_missing() -> None:
    rows = guidance_rows([("A", "CT", "head", SafeRatio(20.0), True),
                          ("B", "MR", None, SafeRatio(5.0), True),
                          ("C", "CT", "chest", None, False)])

    assert rows[0]["safe_ratio"] == "x20" and rows[0]["vs DRG"] == "beyond it (x20 > 5:1)"
    assert rows[0]["CAR 2008"] == "12:1"
    assert rows[1]["body_region"].startswith("not stated") and rows[1]["CAR 2008"] == ""
    assert rows[2]["safe_ratio"] == "not trained (quality only)" and rows[2]["vs CAR"] == ""
    assert rows[2]["DRG 2008"] == "8:1"


@pytest.mark.parametrize(("safe", "words"), [
    (SafeRatio(1.0, "mean", next_ratio=5.0, next_verdict="inconclusive"),
     "inconclusive (none shown safe)"),
    (SafeRatio(1.0, "liver", next_ratio=5.0, next_verdict="inferior"),
     "none safe (x5 inferior)"),
    (SafeRatio(None), "none named (too few test cases)")])
def test_the_safe_ratio_reads_as_the_verdict_says(safe, words) -> None:
    """An inconclusive study read "x1 (none compressed)" beside "inconclusive" above."""
    row = guidance_rows([("A", "CT", "abdomen", safe, True)])[0]

    assert row["safe_ratio"] == words
    assert row["vs CAR"] == "no compressed ratio shown safe here"


def test_the_config_refuses_an_unknown_body_region(tmp_path) -> None:
    config = StudyConfig(datasets=(DatasetEntry(tmp_path, body_region="belly"),),
                         experiments=("quality",))
    with pytest.raises(MedlossyError, match=r"body_region of .* must be one of abdomen, chest"):
        validate(config, "study.toml", check_files=False)
