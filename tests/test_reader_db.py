"""Reader study database: one answer per rater and pair, replaced atomically, tokens."""

from __future__ import annotations

import base64
import sqlite3

import pytest

from medlossy.errors import MedlossyError
from medlossy.reader_study.db import Database, sqlite_path

PAIRS = [f"{i:032x}" for i in range(5)]


@pytest.fixture
def database(tmp_path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'answers.sqlite'}")
    database.setup(PAIRS, raters=2)
    return database


def test_urls():
    assert str(sqlite_path("sqlite:///rs/answers.sqlite")) == "rs/answers.sqlite"
    assert str(sqlite_path("sqlite:////tmp/a.sqlite")) == "/tmp/a.sqlite"
    assert str(sqlite_path("plain.sqlite")) == "plain.sqlite"
    with pytest.raises(MedlossyError, match="PostgreSQL is not supported yet"):
        sqlite_path("postgresql://user@host/db")
    with pytest.raises(MedlossyError, match="unsupported database URL"):
        sqlite_path("mysql://host/db")
    with pytest.raises(MedlossyError, match="must be a file"):
        sqlite_path("sqlite:///:memory:")


def test_raters_and_admin_get_long_random_tokens(database):
    raters, admins = database.raters("rater"), database.raters("admin")
    assert [r.name for r in raters] == ["rater1", "rater2"] and len(admins) == 1
    tokens = [r.token for r in raters + admins] + [r.form_token for r in raters + admins]
    assert len(set(tokens)) == len(tokens)
    assert all(len(base64.urlsafe_b64decode(t + "=")) * 8 >= 128 for t in tokens)
    assert database.rater_by_token(raters[0].token) == raters[0]
    assert database.rater_by_token("not-a-token") is None


def test_setup_again_adds_raters_and_keeps_tokens(database):
    before = database.raters()
    database.setup(PAIRS, raters=3)
    after = database.raters()
    assert after[: len(before)] == before
    assert [r.name for r in database.raters("rater")] == ["rater1", "rater2", "rater3"]
    database.setup(PAIRS, raters=1)  # never removes anyone
    assert len(database.raters("rater")) == 3


def test_a_database_of_another_pair_set_is_refused(database):
    with pytest.raises(MedlossyError, match="another pair set"):
        database.setup([*PAIRS[:3], "f" * 32], raters=2)


def test_a_repeated_answer_replaces_the_first(database):
    rater = database.raters("rater")[0]
    database.record(rater.id, PAIRS[0], "left")
    database.record(rater.id, PAIRS[0], "right")
    database.record(rater.id, PAIRS[1], "undecided")
    answers = database.all_answers()
    assert [(a["pair"], a["answer"], a["revisions"]) for a in
            sorted(answers, key=lambda a: a["pair"])] == [(PAIRS[0], "right", 1),
                                                          (PAIRS[1], "undecided", 0)]
    log = sqlite3.connect(database.path).execute("SELECT COUNT(*) FROM answer_log").fetchone()
    assert log == (3,)


def test_bad_answers_and_unknown_pairs_change_nothing(database):
    rater = database.raters("rater")[0]
    with pytest.raises(ValueError, match="answer must be one of"):
        database.record(rater.id, PAIRS[0], "both")
    with pytest.raises(sqlite3.IntegrityError):
        database.record(rater.id, "e" * 32, "left")  # foreign key: not a pair of the study
    assert database.all_answers() == []


def test_journal_is_wal_and_the_file_is_private(database):
    mode = sqlite3.connect(database.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert oct(database.path.stat().st_mode)[-3:] == "600"


def test_not_a_database_is_one_error(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MedlossyError, match="SQLite"):
        Database(f"sqlite:///{path}")
