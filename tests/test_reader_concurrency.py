"""20 raters answering every pair at once against a real server on loopback: nothing lost,
nothing duplicated, and a second round of answers replaces the first one exactly."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from test_reader_app import form_of, new_database, running_server
from test_reader_pairs import demo_study

from medlossy.reader_study.pairs import load_pairs

RATERS = 20
ANSWERS = ("left", "right", "undecided")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return demo_study(tmp_path_factory)


def _round(base: str, tokens: list[str], pairs: int, shift: int) -> tuple[dict, list, float]:
    """Every rater answers every pair, all raters at once; returns what each one sent."""
    sent: dict[tuple[int, str], str] = {}
    failures: list[str] = []
    barrier = threading.Barrier(len(tokens))

    def rater(number: int, token: str) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            barrier.wait()
            for position in range(1, pairs + 1):
                page = client.get(f"/r/{token}/p/{position}")
                form = form_of(page.text)
                form["answer"] = ANSWERS[(number + position + shift) % 3]
                response = client.post(f"/r/{token}/answer", data=form)
                if response.status_code != 303:
                    failures.append(f"{number}/{position}: {response.status_code}")
                    continue
                sent[number, form["pair"]] = form["answer"]

    threads = [threading.Thread(target=rater, args=(n, t)) for n, t in enumerate(tokens)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent, failures, time.perf_counter() - started


def test_twenty_raters_at_once_lose_and_duplicate_nothing(study, tmp_path):
    pairs = len(load_pairs(study))
    database, raters, _ = new_database(study, tmp_path, raters=RATERS)
    names = {index: rater.name for index, rater in enumerate(raters)}
    with running_server(study, database) as base:
        for round_number in range(2):  # the second round replaces every answer
            sent, failures, seconds = _round(base, [r.token for r in raters], pairs,
                                             shift=round_number)
            assert failures == []
            assert len(sent) == RATERS * pairs
            stored = {(row["rater"], row["pair"]): (row["answer"], row["revisions"])
                      for row in database.all_answers()}
            assert len(database.all_answers()) == RATERS * pairs  # no duplicate rows
            assert stored == {(names[n], pair): (answer, round_number)
                              for (n, pair), answer in sent.items()}
            print(f"\nround {round_number + 1}: {RATERS} raters x {pairs} pairs = "
                  f"{len(sent)} answers in {seconds:.2f} s, lost 0, duplicated 0")
    log = sqlite3.connect(database.path).execute("SELECT COUNT(*) FROM answer_log").fetchone()
    assert log == (2 * RATERS * pairs,)
