"""Group commit of answers: committed together, acknowledged only once on disk, a bad or
blocked batch failing without losing or inventing anything."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from medlossy.reader_study.committer import Committer
from medlossy.reader_study.db import Database, DatabaseBusy

PAIRS = [f"{i:032x}" for i in range(6)]


@pytest.fixture
def database(tmp_path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'answers.sqlite'}")
    database.setup(PAIRS, raters=3)
    return database


def _record_all(committer: Committer, items: list[tuple[int, str, str]]) -> list:
    async def main() -> list:
        return await asyncio.gather(*(committer.record(*item) for item in items),
                                    return_exceptions=True)
    return asyncio.run(main())


def test_answers_arriving_together_share_one_transaction(database):
    raters = database.raters("rater")
    items = [(rater.id, pair, "left") for rater in raters for pair in PAIRS]
    assert _record_all(Committer(database), items) == [None] * len(items)
    answers = database.all_answers()
    assert len(answers) == len(items)
    assert len({answer["answered_at"] for answer in answers}) == 1  # one commit


def test_a_bad_answer_in_a_batch_fails_alone(database):
    rater = database.raters("rater")[0]
    outcomes = _record_all(Committer(database), [
        (rater.id, PAIRS[0], "left"), (rater.id, "e" * 32, "left"),
        (rater.id, PAIRS[1], "right")])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], sqlite3.IntegrityError)  # not a pair of the study
    assert database.answers_of(rater.id) == {PAIRS[0]: "left", PAIRS[1]: "right"}


def test_a_locked_database_fails_the_batch_and_stores_none_of_it(database):
    rater = database.raters("rater")[0]
    outside = sqlite3.connect(database.path, isolation_level=None)
    outside.execute("BEGIN IMMEDIATE")
    committer = Committer(database)
    outcomes = _record_all(committer, [(rater.id, pair, "left") for pair in PAIRS[:3]])
    assert all(isinstance(outcome, DatabaseBusy) for outcome in outcomes)
    outside.execute("ROLLBACK")
    assert database.all_answers() == []
    assert _record_all(committer, [(rater.id, PAIRS[0], "undecided")]) == [None]
    assert database.answers_of(rater.id) == {PAIRS[0]: "undecided"}
