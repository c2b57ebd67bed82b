"""Reader study designs: flicker and 2AFC beside side-by-side, from ``reader make`` to the
analysis: pairs against the reference, sides (flicker phase, 2AFC left/right) balanced and
seeded, answers stored with their design, pages blinded, rates and thresholds per design.

The flicker and 2AFC studies reuse the stores of the shared demo study (``--stores``), so
nothing is compressed again.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from test_reader_app import _blank, form_of, new_database
from test_reader_db import _FIRST_VERSION, PAIRS
from test_reader_pairs import RATIOS, demo_study

from medlossy.cli.main import main as cli_main
from medlossy.errors import MedlossyError
from medlossy.reader_study import app as app_module
from medlossy.reader_study.analysis import analyze_study, score_table, scored_answers
from medlossy.reader_study.app import create_app
from medlossy.reader_study.db import Database
from medlossy.reader_study.designs import DESIGNS, get_design
from medlossy.reader_study.pairs import PairSettings, load_key, load_pairs, study_design
from medlossy.reader_study.psychometric import (
    curve_table,
    fit_curve,
    threshold,
    threshold_problem,
)
from medlossy.reader_study.windows import Window

FLICKER_MS = 150


def make_design_study(tmp_path_factory, design: str, name: str | None = None,
                      seed: int = 0) -> Path:
    """A ``design`` study from the demo study's inputs and stores (built once per name)."""
    demo = demo_study(tmp_path_factory)
    out = demo.parent / (name or design)
    if (out / "pairs.json").exists():
        return out
    code = cli_main(["reader", "make", str(demo.parent / "inputs"), "--out", str(out),
                     "--ratios", ",".join(f"{r:g}" for r in RATIOS), "--per-pair", "2",
                     "--design", design, "--seed", str(seed), "--stores", str(demo / "stores"),
                     "--quiet", *(["--flicker-ms", str(FLICKER_MS)] if design == "flicker"
                                  else [])])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def flicker(tmp_path_factory) -> Path:
    return make_design_study(tmp_path_factory, "flicker")


@pytest.fixture(scope="module")
def afc(tmp_path_factory) -> Path:
    return make_design_study(tmp_path_factory, "2afc")


# Designs --------------------------------------------------------------------------------

def test_each_design_scores_its_own_answers():
    side, flick, afc_ = DESIGNS["side-by-side"], DESIGNS["flicker"], DESIGNS["2afc"]
    assert [side.score(a, "left") for a in ("left", "undecided", "right")] == [1, 0, -1]
    assert [flick.score(a, "left") for a in ("seen", "unseen")] == [1, -1]
    assert [flick.score(a, "right") for a in ("seen", "unseen")] == [1, -1]
    # 2AFC asks for the compressed image: the side that is not the less compressed one.
    assert [afc_.score(a, "left") for a in ("left", "right")] == [-1, 1]
    assert [afc_.score(a, "right") for a in ("left", "right")] == [1, -1]
    with pytest.raises(ValueError):
        afc_.score("undecided", "left")  # a forced choice has no third answer
    with pytest.raises(ValueError):
        flick.score("left", "left")
    with pytest.raises(MedlossyError, match="unknown reader study design"):
        get_design("triangle")


def test_flicker_and_2afc_pair_the_reference_with_every_other_ratio():
    settings = {"ratios": (1, 5, 20, 50), "per_pair": 1, "window": Window("abdomen")}
    assert PairSettings(**settings).ratio_pairs == [(1, 5), (1, 20), (1, 50), (5, 20),
                                                    (5, 50), (20, 50)]
    for design in ("flicker", "2afc"):
        assert PairSettings(**settings, design=design).ratio_pairs == [(1, 5), (1, 20),
                                                                       (1, 50)]
    with pytest.raises(MedlossyError, match="--flicker-ms"):
        PairSettings(**settings, design="flicker", flicker_ms=10)


# Pairs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("design", ["flicker", "2afc"])
def test_a_design_study_records_its_design_and_balances_sides(tmp_path_factory, design):
    study = make_design_study(tmp_path_factory, design)
    settings = json.loads((study / "study.json").read_text())
    assert settings["design"] == design
    assert settings["ratio_pairs"] == [[1, 5], [1, 20]]
    assert settings.get("flicker_ms") == (FLICKER_MS if design == "flicker" else None)
    key = load_key(study)
    assert len(key) == 2 * 2 * 2  # 2 datasets x 2 ratio pairs x 2 per pair
    cells = Counter((e["dataset"], e["left"]["ratio"] if e["less_compressed"] == "right"
                     else e["right"]["ratio"], e["less_compressed"]) for e in key.values())
    # Per dataset and ratio: the reference once shown first (left) and once second (right).
    assert set(cells.values()) == {1} and len(cells) == 8
    for entry in key.values():
        reference = entry[entry["less_compressed"]]
        assert reference["ratio"] == 1.0


def test_the_phase_and_side_assignment_is_reproducible_from_the_seed(tmp_path_factory,
                                                                      flicker):
    again = make_design_study(tmp_path_factory, "flicker", "flicker-again")
    other = make_design_study(tmp_path_factory, "flicker", "flicker-seed-1", seed=1)

    def draws(study: Path) -> list[tuple]:
        return sorted((e["dataset"], e["case"], e["slice"], e["left"]["ratio"],
                       e["right"]["ratio"]) for e in load_key(study).values())
    assert draws(again) == draws(flicker)
    assert draws(other) != draws(flicker)


# Database ---------------------------------------------------------------------------------

def test_answers_are_stored_with_the_study_design(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'answers.sqlite'}")
    database.setup(PAIRS, raters=1, design="flicker")
    rater = database.raters("rater")[0]
    database.record(rater.id, PAIRS[0], "seen", 900)
    with pytest.raises(ValueError, match="seen"):
        database.record(rater.id, PAIRS[1], "left")  # not a flicker answer
    assert [(a["answer"], a["design"]) for a in database.all_answers()] == [("seen", "flicker")]
    with sqlite3.connect(database.path) as raw:
        assert raw.execute("SELECT design FROM answer_log").fetchall() == [("flicker",)]
    with pytest.raises(MedlossyError, match="flicker answers, not 2afc"):
        Database(f"sqlite:///{database.path}").setup(PAIRS, raters=1, design="2afc")


def test_answers_of_a_database_made_before_designs_are_side_by_side(tmp_path):
    path = tmp_path / "answers.sqlite"
    with sqlite3.connect(path) as old:
        old.executescript(_FIRST_VERSION)
        old.executemany("INSERT INTO pairs VALUES (?)", [(p,) for p in PAIRS])
        old.execute("INSERT INTO raters VALUES (1, 'rater1', 'rater', 'x', 'd', 'f', 7, 't')")
        old.execute("INSERT INTO answers VALUES (1, ?, 'left', 't', 0)", (PAIRS[0],))
    old.close()
    database = Database(f"sqlite:///{path}")
    assert [a["design"] for a in database.all_answers()] == ["side-by-side"]


# App and blinding -----------------------------------------------------------------------

def _client(study: Path, tmp_path: Path):
    database, raters, _ = new_database(study, tmp_path)
    return TestClient(create_app(study, database), follow_redirects=False), database, raters[0]


def test_the_flicker_page_asks_about_a_flicker_and_takes_only_its_answers(flicker, tmp_path):
    client, database, rater = _client(flicker, tmp_path)
    page = client.get(f"/r/{rater.token}/p/1").text
    assert f'data-flicker-ms="{FLICKER_MS}"' in page and "flicker" in page
    assert 'id="answer-seen"' in page and 'id="answer-unseen"' in page
    assert 'id="answer-left"' not in page
    form = form_of(page)
    assert client.post(f"/r/{rater.token}/answer", data=form).status_code == 400  # "left"
    assert client.post(f"/r/{rater.token}/answer",
                       data=form | {"answer": "seen"}).status_code == 303
    assert [(a["answer"], a["design"]) for a in database.all_answers()] == [("seen", "flicker")]


def test_only_a_flicker_start_page_warns_a_browser_without_script(flicker, afc, tmp_path):
    """A flicker pair cannot be answered without JavaScript: its start page says so inside
    <noscript> before the rater begins (they learnt it on the first pair)."""
    pages = {}
    for name, study in (("flicker", flicker), ("afc", afc)):
        (tmp_path / name).mkdir()
        client, _, rater = _client(study, tmp_path / name)
        pages[name] = client.get(f"/r/{rater.token}").text
    warning = re.search(r"<noscript>(.*?)</noscript>", pages["flicker"])
    assert warning is not None and "needs JavaScript" in warning.group(1)
    assert "<noscript>" not in pages["afc"]
    # the practice text points at what each design shows (a flicker has no right side)
    assert "One of the two alternating images is coarsened" in pages["flicker"]
    assert "The right side is coarsened" in pages["afc"]


def test_the_2afc_page_has_two_answers_and_no_undecided(afc, tmp_path):
    client, database, rater = _client(afc, tmp_path)
    page = client.get(f"/r/{rater.token}/p/1").text
    assert "which one is compressed" in page and "data-flicker-ms" not in page
    assert 'id="answer-undecided"' not in page
    form = form_of(page)
    assert client.post(f"/r/{rater.token}/answer",
                       data=form | {"answer": "undecided"}).status_code == 400
    assert client.post(f"/r/{rater.token}/answer", data=form).status_code == 303
    assert database.all_answers()[0]["design"] == "2afc"


@pytest.mark.parametrize("design", ["flicker", "2afc"])
def test_design_pages_and_stacks_do_not_depend_on_the_key(tmp_path_factory, tmp_path,
                                                          monkeypatch, design):
    """Which phase or side holds the reference changes nothing a rater can observe."""
    study = make_design_study(tmp_path_factory, design)

    def no_key(_):
        raise AssertionError("a rater's request read the key")
    monkeypatch.setattr(app_module, "load_key", no_key)
    client, _, rater = _client(study, tmp_path)
    key = load_key(study)
    pages, headers, sizes, first = set(), set(), {}, set()
    for position in range(2, len(key)):
        page = client.get(f"/r/{rater.token}/p/{position}").text
        pair_id = form_of(page)["pair"]
        blank = _blank(page, study, position, rater.token)
        pages.add(blank)
        for word in ("ratio", "lossless", "x20", "x5", "less", "original"):
            assert word not in blank.lower().replace("the original, the other", "")
        entry = key[pair_id]
        first.add(entry["less_compressed"])
        for kind, suffix in (("stack", "bin"), ("img", "png")):
            response = client.get(f"/r/{rater.token}/{kind}/{pair_id}.{suffix}")
            headers.add(tuple(sorted((k, v) for k, v in response.headers.items()
                                     if k != "content-length")))
            sizes.setdefault((kind, entry["dataset"], entry["case"]), set()).add(
                len(response.content))
    assert first == {"left", "right"}  # both phases / sides occur among these pairs
    assert len(pages) == 1
    assert len(headers) == 2  # one set for stacks, one for images; nothing per file
    assert all(len(values) == 1 for values in sizes.values())


# Analysis ---------------------------------------------------------------------------------

def _curve_rows(success: dict[float, float], answers: int = 40) -> pd.DataFrame:
    """Answers against x1 with the given fraction of +1 per ratio (10 raters x 4 images)."""
    rows = []
    for ratio, fraction in success.items():
        hits = round(fraction * answers)
        for number in range(answers):
            rows.append({"rater": f"r{number % 10}", "pair": f"{ratio}-{number // 10}",
                         "ratio_low": 1.0, "ratio_high": ratio, "score": 1 if number < hits
                         else -1, "less_compressed": "left", "left_psnr_db": float("inf"),
                         "right_psnr_db": 60 - 5 * np.log2(ratio)})
    return pd.DataFrame(rows)


def _detected(ratio: float, at: float = 8.0) -> float:
    return 1 / (1 + np.exp(-2.0 * (np.log(ratio) - np.log(at))))


def test_flicker_detection_and_2afc_identification_put_50_percent_at_the_truth():
    ratios = (2.0, 4.0, 8.0, 16.0, 32.0)
    flicker = _curve_rows({r: _detected(r) for r in ratios})
    afc = _curve_rows({r: 0.5 + 0.5 * _detected(r) for r in ratios})  # half guessed right
    assert threshold(flicker, "ratio", guess=0.0) == pytest.approx(np.log(8), abs=0.1)
    assert threshold(afc, "ratio", guess=0.5) == pytest.approx(np.log(8), abs=0.1)
    # The floor matters: 2AFC answers read as yes / no put the point far lower.
    assert np.exp(threshold(afc, "ratio", guess=0.0)) < 4
    table = curve_table(afc, 1.0, fit_curve(afc, "ratio", guess=0.5), guess=0.5)
    # Corrected for guessing: detection = 2 P(correct) - 1, so 75 % correct is 50 %.
    assert table.set_index("ratio").loc[8.0, "correct"] == pytest.approx(0.75)
    assert table.set_index("ratio").loc[8.0, "detection"] == pytest.approx(0.5)
    flat = curve_table(flicker, 1.0, fit_curve(flicker, "ratio", guess=0.0), guess=0.0)
    assert flat.set_index("ratio").loc[8.0, "detection"] == pytest.approx(0.5)


def test_flicker_rates_per_ratio_have_or_hillis_intervals():
    key = {f"{i:032x}": {"dataset": "d", "case": f"c{i}", "channel": 0, "slice": i,
                         "left": {"ratio": 1.0, "psnr_db": float("inf")},
                         "right": {"ratio": 20.0 if i % 2 else 5.0, "psnr_db": 40.0},
                         "less_compressed": "left", "identical": False} for i in range(8)}
    answers = [{"rater": f"rater{r}", "pair": pair, "answer": "seen" if
                (entry["right"]["ratio"] == 20 or (r + i) % 4 == 0) else "unseen",
                "answered_at": "t", "response_ms": 800, "revisions": 0, "design": "flicker"}
               for r in range(3) for i, (pair, entry) in enumerate(key.items())]
    scored = scored_answers(answers, key, get_design("flicker"))
    table = score_table(scored, [(1.0, 5.0), (1.0, 20.0)]).set_index(["rater", "ratio_high"])
    five, twenty = table.loc[("pooled", 5.0)], table.loc[("pooled", 20.0)]
    assert five["rate"] == pytest.approx(4 / 12)
    assert twenty["rate"] == 1.0
    assert 0 <= five["rate_ci_low"] < five["rate"] < five["rate_ci_high"] < 1
    assert twenty["rate_ci_low"] < 1  # never a zero-width [1, 1]
    with pytest.raises(MedlossyError, match="flicker answer in a 2afc study"):
        scored_answers(answers, key, get_design("2afc"))


def test_analyze_a_flicker_study_end_to_end(flicker, tmp_path):
    database, raters, _ = new_database(flicker, tmp_path, raters=2)
    database.setup([p["id"] for p in load_pairs(flicker)], raters=2, design="flicker")
    key = load_key(flicker)
    for rater in raters:
        for pair_id, entry in key.items():
            seen = max(entry["left"]["ratio"], entry["right"]["ratio"]) == 20 or rater.id == 1
            database.record(rater.id, pair_id, "seen" if seen else "unseen")
    summary = analyze_study(flicker, database, tmp_path / "report")
    assert summary["design"] == "flicker" and summary["quality"] == []
    rates = {row["ratio_high"]: row["rate"] for row in summary["pooled"]}
    assert rates == {5.0: 0.5, 20.0: 1.0}
    assert summary["detection_50"]["guess"] == 0.0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "saw the flicker" in report and "false alarms are not measured" in report


def test_a_threshold_bound_past_exps_range_is_no_bound(tmp_path, monkeypatch):
    """A steep fit with one rater left out can put the log-ratio bound past 709: the ratio
    interval is then open, and the report still plots."""
    from medlossy.reader_study import analysis, psychometric

    monkeypatch.setattr(psychometric, "crossed_jackknife",
                        lambda *_, **__: [psychometric.Estimate(2.0, 1.0, 900.0, 2.0)])
    rows = _curve_rows({2.0: 0.2, 8.0: 0.6})
    found = psychometric.threshold_estimate(rows, "ratio", guess=0.0)
    assert found.value == pytest.approx(np.exp(2.0)) and np.isnan(found.high)
    curve = curve_table(rows, 1.0, None, guess=0.0)
    analysis.plot_detection(curve, None, {"value": found.value, "ci_low": np.exp(1.0),
                                          "ci_high": None}, tmp_path / "detection.png")
    assert (tmp_path / "detection.png").stat().st_size > 0


def _analyze_one_rater(study: Path, design: str, tmp_path: Path, cli,
                       answer: Callable[[dict], str]) -> tuple[str, str, dict, str]:
    """One rater answers every pair with ``answer(key entry)``; (stdout, stderr, summary,
    report) of ``reader analyze``."""
    database, (rater,), _ = new_database(study, tmp_path, raters=1)
    database.setup([p["id"] for p in load_pairs(study)], raters=1, design=design)
    for pair_id, entry in load_key(study).items():
        database.record(rater.id, pair_id, answer(entry))
    out = tmp_path / "report"
    code, stdout, err = cli("reader", "analyze", study, "--db", f"sqlite:///{database.path}",
                            "--out", out)
    assert code == 0, err
    return (stdout, err, json.loads((out / "summary.json").read_text()),
            (out / "report.md").read_text())


@pytest.mark.filterwarnings("error::RuntimeWarning")  # exp overflowed in the plot
def test_2afc_where_every_answer_is_wrong_has_no_threshold(afc, tmp_path, cli):
    stdout, _, summary, report = _analyze_one_rater(
        afc, "2afc", tmp_path, cli, lambda entry: entry["less_compressed"])
    found = summary["detection_50"]
    for measure in ("ratio", "psnr_db"):
        assert found[measure]["value"] is None and found[measure]["not_determined"]
    assert "ratio n/a: " in stdout and "PSNR n/a: " in stdout and "e+" not in stdout
    assert "PSNR n/a: " in report and "e+" not in report
    assert "answers from 1 rater;" in stdout and "from 1 rater on" in report


def test_a_flat_flicker_curve_has_no_threshold(flicker, tmp_path, cli):
    """Half the pairs of every ratio seen: detection 0.5 everywhere, no 50 % point."""
    seen: dict[float, int] = {}

    def half(entry: dict) -> str:
        ratio = max(entry["left"]["ratio"], entry["right"]["ratio"])
        seen[ratio] = seen.get(ratio, 0) + 1
        return "seen" if seen[ratio] % 2 else "unseen"
    stdout, _, summary, _ = _analyze_one_rater(flicker, "flicker", tmp_path, cli, half)
    assert {row["rate"] for row in summary["pooled"]} == {0.5}
    assert summary["detection_50"]["ratio"]["value"] is None
    assert "ratio n/a: detection does not change with compression" in stdout


def test_a_threshold_outside_the_tested_range_is_not_determined():
    # Detection below 50 % at every tested ratio: the fit's 50 % point lies beyond x32.
    rows = _curve_rows({r: 0.05 + 0.05 * i for i, r in enumerate((2.0, 4.0, 8.0, 16.0, 32.0))})
    assert threshold_problem(rows, "ratio", guess=0.0).startswith(
        "outside the tested range (x2 to x32)")
    assert threshold_problem(_curve_rows({r: _detected(r) for r in (2.0, 8.0, 32.0)}),
                             "ratio", guess=0.0) is None


@pytest.mark.parametrize("value", ["<b>x</b>", "200", 1e9, 10, True, None])
def test_a_bad_flicker_ms_in_study_json_is_named(tmp_path, value):
    """A study.json edited by hand with a flicker_ms that is no whole number from 50 to
    2000 was shown on pages as given (1e9 ms) or failed with an error naming no file
    ("invalid literal for int() with base 10: '<b>x</b>'"); now one error naming the file."""
    (tmp_path / "study.json").write_text(json.dumps({"design": "flicker", "flicker_ms": value}))
    with pytest.raises(MedlossyError, match="flicker_ms must be") as raised:
        study_design(tmp_path)
    assert "study.json" in str(raised.value)
    (tmp_path / "study.json").write_text(json.dumps({"design": "flicker", "flicker_ms": 350}))
    assert study_design(tmp_path) == ("flicker", 350)
