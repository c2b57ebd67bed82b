"""Reader study analysis: scores against the key, bootstrap CIs, Cohen's kappa, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_reader_app import new_database
from test_reader_pairs import demo_study

from medlossy.reader_study.analysis import (
    POOLED,
    agreement_table,
    bootstrap_mean_ci,
    cohen_kappa,
    score_table,
    scored_answers,
)
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


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    scores = np.array([1, 1, 0, 1, -1, 1, 0, 1, 1, 1], dtype=float)
    clusters = np.arange(len(scores))
    first = bootstrap_mean_ci(scores, clusters, resamples=2000, rng=np.random.default_rng(3))
    again = bootstrap_mean_ci(scores, clusters, resamples=2000, rng=np.random.default_rng(3))
    assert first == again
    assert first[0] < scores.mean() < first[1]
    constant = bootstrap_mean_ci(np.ones(6), clusters[:6], resamples=500,
                                 rng=np.random.default_rng(0))
    assert constant == (1.0, 1.0)


def test_score_table_has_every_rater_and_the_pool():
    answers = [_answer(r, p, "left") for r in ("r1", "r2") for p in KEY]
    table = score_table(scored_answers(answers, KEY), [(1.0, 20.0), (1.0, 5.0)], resamples=200)
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
                            f"sqlite:///{database.path}", "--out", out, "--bootstrap", "500")
    assert code == 0, err
    assert "24 answers from 2 raters" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["answers.csv", "scores.csv", "agreement.csv", "reader_study.png", "report.md",
         "summary.json"])
    scores = pd.read_csv(out / "scores.csv")
    assert (scores[scores["rater"] == "rater1"]["mean_score"] == 1).all()
    assert (scores[scores["rater"] == "rater2"]["mean_score"] == 0).all()
    assert (scores[scores["rater"] == POOLED]["mean_score"] == 0.5).all()
    assert len(scores) == 3 * 3  # 3 ratio pairs x (2 raters + pooled)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answers"] == 24 and len(summary["pooled"]) == 3
    assert (out / "reader_study.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Pooled" in (out / "report.md").read_text()


def test_analyze_before_any_answer(study, tmp_path, cli):
    database, _, _ = new_database(study, tmp_path)
    code, stdout, err = cli("reader", "analyze", study, "--db", f"sqlite:///{database.path}",
                            "--out", tmp_path / "report")
    assert code == 0, err
    assert "0 answers from 0 raters" in stdout
