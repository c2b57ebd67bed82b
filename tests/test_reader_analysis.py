"""Reader study analysis: scores against the key, intervals, Cohen's kappa, outputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_reader_app import new_database
from test_reader_pairs import demo_study

from medlossy.reader_study.analysis import (
    POOLED,
    REPORT_FILES,
    agreement_table,
    analyze_study,
    cohen_kappa,
    krippendorff_alpha,
    score_table,
    scored_answers,
)
from medlossy.reader_study.intervals import score_interval
from medlossy.reader_study.pairs import load_key

KEY = {
    "a" * 32: {"dataset": "D", "case": "c", "channel": 0, "slice": 1, "less_compressed": "left",
               "left": {"ratio": 1.0}, "right": {"ratio": 20.0}},
    "b" * 32: {"dataset": "D", "case": "c", "channel": 0, "slice": 2,
               "less_compressed": "right", "left": {"ratio": 20.0}, "right": {"ratio": 1.0}},
}


def _answer(rater: str, pair: str, answer: str) -> dict:
    return {"rater": rater, "pair": pair, "answer": answer, "answered_at": "t", "revisions": 0}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return demo_study(tmp_path_factory)


def test_score_is_plus_one_zero_minus_one_against_the_key():
    answers = [_answer("r1", "a" * 32, "left"), _answer("r1", "b" * 32, "left"),
               _answer("r2", "a" * 32, "undecided"), _answer("r2", "b" * 32, "right")]
    scored = scored_answers(answers, KEY)
    assert scored["score"].tolist() == [1, -1, 0, 1]
    assert scored[["ratio_low", "ratio_high"]].drop_duplicates().values.tolist() == [[1, 20]]


def test_cohen_kappa_matches_the_textbook_example():
    # 50 items: both yes 20, both no 15, A yes / B no 5, A no / B yes 10 -> kappa = 0.4.
    first = np.array([1] * 20 + [0] * 15 + [1] * 5 + [0] * 10)
    second = np.array([1] * 20 + [0] * 15 + [0] * 5 + [1] * 10)
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    assert cohen_kappa(first, first) == pytest.approx(1.0)
    assert np.isnan(cohen_kappa(np.ones(5), np.ones(5)))  # undefined: no variation at all
    assert np.isnan(cohen_kappa(np.array([]), np.array([])))


def test_rater_interval_brackets_the_mean_and_keeps_a_width_at_the_ceiling():
    scores = np.array([1, 1, 0, 1, -1, 1, 0, 1, 1, 1], dtype=float)
    images = np.arange(len(scores))
    low, high, df = score_interval(scores, np.zeros(len(scores)), images)
    assert low < scores.mean() < high and df == len(scores) - 1
    # Reproduced on the bootstrap version: six +1 answers gave the CI (1.0, 1.0).
    low, high, _ = score_interval(np.ones(6), np.zeros(6), images[:6])
    assert high == pytest.approx(1.0) and -1 < low < 0.9


def test_score_table_has_every_rater_and_the_pool():
    answers = [_answer(r, p, "left") for r in ("r1", "r2") for p in KEY]
    table = score_table(scored_answers(answers, KEY), [(1.0, 20.0), (1.0, 5.0)])
    assert set(table["rater"]) == {"r1", "r2", POOLED}
    pooled = table[(table["rater"] == POOLED) & (table["ratio_high"] == 20)].iloc[0]
    assert (pooled["n"], pooled["mean_score"], pooled["correct"], pooled["wrong"]) == (4, 0, 2, 2)
    empty = table[table["ratio_high"] == 5]
    assert (empty["n"] == 0).all() and empty["mean_score"].isna().all()
    kappa = agreement_table(scored_answers(answers, KEY))
    assert kappa.iloc[0]["kappa"] == pytest.approx(1.0) and kappa.iloc[0]["n"] == 2


def test_analyze_writes_scores_agreement_plot_and_report(study, tmp_path, cli):
    database, (first, second), _ = new_database(study, tmp_path, raters=2)
    key = load_key(study)
    for pair_id, entry in key.items():
        database.record(first.id, pair_id, entry["less_compressed"])  # always right
        database.record(second.id, pair_id, "undecided")
    out = tmp_path / "report"
    code, stdout, err = cli("reader", "analyze", study, "--db",
                            f"sqlite:///{database.path}", "--out", out)
    assert code == 0, err
    assert "24 answers from 2 raters" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["answers.csv", "scores.csv", "agreement.csv", "psychometric.csv", "quality.csv",
         "reader_study.png", "detection.png", "report.md", "summary.json"])
    assert "pooled mean score" in stdout and "50% detection against x1" in stdout
    assert "quality scale (Bradley-Terry" in stdout
    scores = pd.read_csv(out / "scores.csv")
    assert (scores[scores["rater"] == "rater1"]["mean_score"] == 1).all()
    assert (scores[scores["rater"] == "rater2"]["mean_score"] == 0).all()
    assert (scores[scores["rater"] == POOLED]["mean_score"] == 0.5).all()
    assert len(scores) == 3 * 3  # 3 ratio pairs x (2 raters + pooled)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answers"] == 24 and len(summary["pooled"]) == 3
    assert (out / "reader_study.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Pooled" in (out / "report.md").read_text()


def test_analyze_prints_intervals_threshold_and_quality_from_stored_answers(study, tmp_path,
                                                                          cli):
    # Three raters: every x1 vs x20 and x5 vs x20 answer sees the loss (the ceiling, where
    # the bootstrap version wrote the CI [1.00, 1.00]); x1 vs x5 is seen half the time.
    database, raters, _ = new_database(study, tmp_path, raters=3)
    # In key order, not by pair id: the ids are random, the key's contents are not.
    entries = sorted(load_key(study).items(), key=lambda item: (
        item[1]["dataset"], item[1]["slice"], item[1]["left"]["ratio"],
        item[1]["right"]["ratio"]))
    for number, rater in enumerate(raters):
        for index, (pair_id, entry) in enumerate(entries):
            high = max(entry["left"]["ratio"], entry["right"]["ratio"])
            seen = high == 20 or (index + number) % 2 == 0
            database.record(rater.id, pair_id, entry["less_compressed"] if seen else
                            "undecided")
    out = tmp_path / "report"
    code, stdout, err = cli("reader", "analyze", study, "--db",
                            f"sqlite:///{database.path}", "--out", out)
    assert code == 0, err
    pooled = pd.read_csv(out / "scores.csv").query("rater == 'pooled'")
    ceiling = pooled[pooled["ratio_high"] == 20]
    assert (ceiling["mean_score"] == 1).all() and (ceiling["ci_low"] < 0.9).all()
    assert (pooled["df"] >= 2).all()  # Hillis's df is at least raters - 1
    curve = pd.read_csv(out / "psychometric.csv")
    assert curve["ratio"].tolist() == [5, 20] and curve["detection"].iloc[1] == 1
    quality = pd.read_csv(out / "quality.csv")
    assert quality["ratio"].tolist() == [1, 5, 20]
    assert quality["quality"].iloc[0] == 0 > quality["quality"].iloc[1] > quality[
        "quality"].iloc[2]
    summary = json.loads((out / "summary.json").read_text())
    found = summary["detection_50"]["ratio"]
    assert 1 < found["value"] < 20 and found["ci_low"] < found["value"] < found["ci_high"]
    assert "(75% correct, visually lossless up to): ratio " in stdout
    assert "x1 vs x20: n 12, score 1 [" in stdout


def test_analyze_before_any_answer(study, tmp_path, cli):
    database, _, _ = new_database(study, tmp_path)
    code, stdout, err = cli("reader", "analyze", study, "--db", f"sqlite:///{database.path}",
                            "--out", tmp_path / "report")
    assert code == 0, err
    assert "0 answers from 0 raters" in stdout


def test_analyze_without_a_database_says_no_answers_yet(study, cli, tmp_path):
    fresh = tmp_path / "rs"  # a study nobody has served yet
    fresh.mkdir()
    shutil.copy(study / "pairs.json", fresh)
    shutil.copy(study / "study.json", fresh)
    shutil.copy(study / "key.json", fresh)
    database = fresh / "answers.sqlite"
    code, stdout, err = cli("reader", "analyze", fresh)
    assert code == 2 and stdout == ""
    assert err.strip().splitlines() == [f"medlossy: error: {fresh}: no answers yet (no "
                                        f"database {database})"]
    assert sorted(p.name for p in fresh.iterdir()) == ["key.json", "pairs.json", "study.json"]


def _key_1_vs_20(images: int) -> dict:
    return {f"{i:032x}": {"dataset": "D", "case": "c", "channel": 0, "slice": i,
                          "less_compressed": "left", "left": {"ratio": 1.0},
                          "right": {"ratio": 20.0}, "identical": False}
            for i in range(images)}


def test_pooled_ci_has_raters_as_well_as_images_random():
    # Reproduced on the first version: raters +1, +1, -1, +1 (each consistent over the
    # images) gave the pooled CI [0.50, 0.50], as if the four raters were the population;
    # the two-way bootstrap then gave [-0.50, 1.00].
    key = _key_1_vs_20(images=2)
    picks = {"r1": "left", "r2": "left", "r3": "right", "r4": "left"}
    answers = [_answer(rater, pair, side) for rater, side in picks.items() for pair in key]
    scored = scored_answers(answers, key)
    table = score_table(scored, [(1.0, 20.0)])
    pooled = table[table["rater"] == POOLED].iloc[0]
    assert pooled["mean_score"] == 0.5
    # q = (1, 1, 0, 1): MS(R) = 0.25, Cov2 = 0 (no rater varies over the images), so
    # Var = 0.0625 on Hillis df r - 1 = 3 and n* = 0.75 * 0.25 / 0.0625 = 3 answers.
    assert pooled["df"] == 3
    assert pooled["ci_low"] < -0.5 and 0.9 < pooled["ci_high"] < 1


def test_pooled_interval_shrinks_with_more_raters_and_images_and_never_collapses():
    rng = np.random.default_rng(1)

    def width(raters: int, images: int) -> float:
        rater_index = np.repeat(np.arange(raters), images)
        image_index = np.tile(np.arange(images), raters)
        bias = rng.normal(0.4, 0.3, raters)[rater_index] + rng.normal(0, 0.3, images)[
            image_index]
        scores = np.clip(np.round(bias + rng.normal(0, 0.5, len(bias))), -1, 1)
        low, high, _ = score_interval(scores, rater_index, image_index)
        assert low <= scores.mean() <= high
        return high - low

    assert width(20, 40) < width(3, 8)
    # Reproduced on the bootstrap version: every answer +1 gave the zero-width [1, 1].
    low, high, df = score_interval(np.ones(6), np.arange(6) % 3, np.arange(6) // 3)
    assert high == pytest.approx(1.0) and low < 0.5 and df == 2


def _linear_weighted_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook formula, written out: 1 - sum(w * observed) / sum(w * expected)."""
    scale = [-1, 0, 1]
    observed = np.array([[np.mean((a == i) & (b == j)) for j in scale] for i in scale])
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    weights = np.abs(np.subtract.outer(np.arange(3), np.arange(3))) / 2
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def test_weighted_kappa_counts_a_one_step_miss_as_half_a_disagreement():
    a = np.array([1, 1, 0, -1, 1, 0, 0, 1, -1, 1])
    b = np.array([1, 0, 0, -1, 0, 0, 1, 1, 0, 1])  # every disagreement one step apart
    weighted = cohen_kappa(a, b, weights="linear")
    assert weighted == pytest.approx(_linear_weighted_kappa(a, b))
    assert weighted > cohen_kappa(a, b)
    far = np.array([-1, 1, 0, 1, 0, 0, 0, -1, 1, 1])  # disagreements two steps apart
    assert cohen_kappa(a, far, weights="linear") == pytest.approx(
        _linear_weighted_kappa(a, far))


def test_krippendorff_alpha_for_many_raters_with_missing_answers():
    key = _key_1_vs_20(images=6)
    pairs = sorted(key)
    truth = ["left", "left", "undecided", "right", "left", "undecided"]
    answers = [_answer(r, p, side) for r in ("r1", "r2", "r3") for p, side in
               zip(pairs, truth, strict=True) if not (r == "r3" and p == pairs[0])]
    assert krippendorff_alpha(scored_answers(answers, key)) == pytest.approx(1.0)
    noisy = [*answers[:-1], _answer("r3", pairs[-1], "right")]
    alpha = krippendorff_alpha(scored_answers(noisy, key))
    assert 0 < alpha < 1
    assert np.isnan(krippendorff_alpha(scored_answers(answers[:6], key)))  # one rater


def test_identical_pairs_are_flagged_left_out_and_counted():
    key = _key_1_vs_20(images=4)
    pairs = sorted(key)
    key[pairs[0]]["identical"] = True
    # A key made before the flag existed: both sides lossless means the same pixels.
    del key[pairs[1]]["identical"]
    key[pairs[1]]["left"] = {"ratio": 1.0, "psnr_db": float("inf")}
    key[pairs[1]]["right"] = {"ratio": 20.0, "psnr_db": float("inf")}
    answers = [_answer(r, p, "right") for r in ("r1", "r2") for p in pairs[:2]] + [
        _answer(r, p, "left") for r in ("r1", "r2") for p in pairs[2:]]
    scored = scored_answers(answers, key)
    assert scored.groupby("pair")["identical"].first().to_dict() == {
        pairs[0]: True, pairs[1]: True, pairs[2]: False, pairs[3]: False}
    table = score_table(scored, [(1.0, 20.0)])
    pooled = table[table["rater"] == POOLED].iloc[0]
    assert (pooled["n"], pooled["mean_score"], pooled["identical_left_out"]) == (4, 1.0, 4)
    kept = score_table(scored, [(1.0, 20.0)], include_identical=True)
    pooled = kept[kept["rater"] == POOLED].iloc[0]
    assert (pooled["n"], pooled["mean_score"], pooled["identical_left_out"]) == (8, 0.0, 0)
    assert agreement_table(scored).iloc[0]["n"] == 2


@pytest.fixture
def common_umask():
    """The usual umask (022), under which the first version wrote the report 0644 / 0755."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _modes(folder: Path) -> dict[str, str]:
    return {path.name: oct(path.stat().st_mode & 0o777)
            for path in [folder, *folder.iterdir()]}


def test_the_report_is_private_like_the_key(study, tmp_path, cli, common_umask):
    # Reproduced on the first version: answers.csv (every answer joined with the key, which
    # unblinds the study) was 0644 in a 0755 folder.
    database, (rater, _), _ = new_database(study, tmp_path)
    for pair_id, entry in load_key(study).items():
        database.record(rater.id, pair_id, entry["less_compressed"])
    private = {name: "0o600" for name in REPORT_FILES} | {"report": "0o700"}
    out = tmp_path / "report"
    code, _, err = cli("reader", "analyze", study, "--db", f"sqlite:///{database.path}",
                       "--out", out)
    assert code == 0, err
    assert _modes(out) == private
    os.umask(0o022)  # the library call, without the command's umask
    analyze_study(study, database, out)
    assert _modes(out) == private
