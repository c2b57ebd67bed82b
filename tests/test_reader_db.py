"""Reader study database: one answer per rater and pair, replaced atomically, tokens."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from medlossy.errors import MedlossyError
from medlossy.reader_study.db import (
    BUSY_TIMEOUT_S,
    Database,
    DatabaseBusy,
    form_token,
    sqlite_path,
)

PAIRS = [f"{i:032x}" for i in range(5)]


@pytest.fixture
def issued(tmp_path) -> tuple[Database, dict[str, str]]:
    database = Database(f"sqlite:///{tmp_path / 'answers.sqlite'}")
    return database, database.setup(PAIRS, raters=2)


@pytest.fixture
def database(issued) -> Database:
    return issued[0]


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


def test_raters_and_admin_get_long_random_tokens(issued):
    database, tokens = issued
    raters, admins = database.raters("rater"), database.raters("admin")
    assert [r.name for r in raters] == ["rater1", "rater2"] and len(admins) == 1
    assert sorted(tokens) == ["admin", "rater1", "rater2"]
    forms = [form_token(t) for t in tokens.values()]
    assert len(set(tokens.values()) | set(forms)) == 2 * len(tokens)
    assert all(len(base64.urlsafe_b64decode(t + "=")) * 8 >= 256 for t in tokens.values())
    assert database.rater_by_token(tokens["rater1"]) == raters[0]
    assert database.rater_by_token(tokens["admin"]) == admins[0]
    assert database.rater_by_token("not-a-token") is None


def test_setup_again_adds_raters_and_keeps_tokens(issued):
    database, tokens = issued
    before = database.raters()
    assert list(database.setup(PAIRS, raters=3)) == ["rater3"]  # only the new one's token
    after = database.raters()
    assert after[: len(before)] == before
    assert [r.name for r in database.raters("rater")] == ["rater1", "rater2", "rater3"]
    assert database.setup(PAIRS, raters=1) == {}  # never removes anyone
    assert len(database.raters("rater")) == 3
    assert database.rater_by_token(tokens["rater2"]).name == "rater2"


def test_reissue_replaces_a_lost_link_and_keeps_the_answers(issued):
    database, tokens = issued
    rater = database.raters("rater")[0]
    database.record(rater.id, PAIRS[0], "left")
    session = database.open_session(rater.id)
    new = database.reissue("rater1")
    assert database.rater_by_token(tokens["rater1"]) is None
    assert database.rater_by_session(session) is None  # its sessions end with it
    assert database.rater_by_token(new) == rater
    assert database.answers_of(rater.id) == {PAIRS[0]: "left"}
    with pytest.raises(MedlossyError, match="no rater named 'rater9'"):
        database.reissue("rater9")


def _files(path: Path) -> dict[str, Path]:
    return {suffix: Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")
            if Path(f"{path}{suffix}").exists()}


@pytest.fixture
def common_umask():
    """The usual umask (022), under which the first version left -wal and -shm 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_no_file_of_the_database_is_readable_by_others_or_holds_a_token(tmp_path,
                                                                       common_umask):
    # Reproduced on the first version: answers.sqlite 0600 but -wal/-shm 0644, and the -wal
    # held every rater's and the admin's token in the clear.
    database = Database(f"sqlite:///{tmp_path / 'answers.sqlite'}")
    tokens = database.setup(PAIRS, raters=3)
    rater = database.rater_by_token(tokens["rater1"])
    database.record(rater.id, PAIRS[0], "right")
    session = database.open_session(rater.id)
    files = _files(database.path)
    assert set(files) == {"", "-wal", "-shm"}  # the connection is open: WAL files exist
    assert {suffix: oct(path.stat().st_mode & 0o777) for suffix, path in files.items()} == {
        suffix: "0o600" for suffix in files}
    secrets_ = [*tokens.values(), session, *(form_token(t) for t in tokens.values())]
    for path in files.values():
        data = path.read_bytes()
        assert not [t for t in secrets_ if t.encode() in data], f"a token in {path.name}"
    # A copy of all three files opens nothing without the links themselves.
    copy = tmp_path / "copy"
    copy.mkdir()
    for suffix, path in files.items():
        shutil.copy(path, copy / f"answers.sqlite{suffix}")
    stolen = sqlite3.connect(copy / "answers.sqlite")
    digests = [row[0] for row in stolen.execute("SELECT token_sha256 FROM raters")]
    assert len(digests) == 4 and not {"token", "form_token"} & {
        row[1] for row in stolen.execute("PRAGMA table_info(raters)")}


_FIRST_VERSION = """
CREATE TABLE pairs (id TEXT PRIMARY KEY);
CREATE TABLE raters (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('rater', 'admin')), token TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE, form_token TEXT NOT NULL, order_seed INTEGER NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE answers (rater_id INTEGER NOT NULL REFERENCES raters (id),
    pair_id TEXT NOT NULL REFERENCES pairs (id), answer TEXT NOT NULL, answered_at TEXT NOT NULL,
    revisions INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (rater_id, pair_id));
CREATE TABLE answer_log (id INTEGER PRIMARY KEY AUTOINCREMENT, rater_id INTEGER NOT NULL,
    pair_id TEXT NOT NULL, answer TEXT NOT NULL, answered_at TEXT NOT NULL);
"""


def test_a_first_version_database_loses_its_plain_tokens_and_keeps_working(tmp_path,
                                                                           common_umask):
    path = tmp_path / "answers.sqlite"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(_FIRST_VERSION)
    token, form = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    with old:
        old.executemany("INSERT INTO pairs VALUES (?)", [(p,) for p in PAIRS])
        old.execute("INSERT INTO raters VALUES (1, 'rater1', 'rater', ?, ?, ?, 7, 't')",
                    (token, digest, form))
        old.execute("INSERT INTO answers VALUES (1, ?, 'left', 't', 0)", (PAIRS[0],))
    old.close()
    assert token.encode() in path.read_bytes()
    database = Database(f"sqlite:///{path}")
    rater = database.rater_by_token(token)  # the links handed out stay valid
    assert (rater.name, rater.order_seed) == ("rater1", 7)
    assert database.answers_of(rater.id) == {PAIRS[0]: "left"}
    database.record(rater.id, PAIRS[1], "right", 2500)
    times = {answer["pair"]: answer["response_ms"] for answer in database.all_answers()}
    assert times == {PAIRS[0]: None, PAIRS[1]: 2500}  # the column was added
    for found in _files(path).values():
        assert token.encode() not in found.read_bytes() and form.encode() not in \
            found.read_bytes()
        assert found.stat().st_mode & 0o777 == 0o600


def test_a_database_locked_from_outside_is_busy_not_hung(database):
    rater = database.raters("rater")[0]
    outside = sqlite3.connect(database.path, isolation_level=None)
    outside.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(DatabaseBusy, match="locked"):
        database.record(rater.id, PAIRS[0], "left")
    assert time.monotonic() - started < BUSY_TIMEOUT_S + 1.0
    assert database.answers_of(rater.id) == {}  # reads go on under the writer's lock
    outside.execute("ROLLBACK")
    database.record(rater.id, PAIRS[0], "left")
    assert database.answers_of(rater.id) == {PAIRS[0]: "left"}


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


def test_sessions_of_a_database_made_before_they_could_end_are_kept_or_ended(issued):
    database, tokens = issued
    rater = database.rater_by_token(tokens["rater1"])
    recent, old = database.open_session(rater.id), database.open_session(rater.id)
    with sqlite3.connect(database.path) as connection:  # the sessions table as it was
        rows = connection.execute("SELECT token_sha256, rater_id, created_at FROM sessions"
                                  ).fetchall()
        connection.execute("DROP TABLE sessions")
        connection.execute("CREATE TABLE sessions (token_sha256 TEXT PRIMARY KEY, rater_id "
                           "INTEGER NOT NULL REFERENCES raters (id), created_at TEXT NOT NULL)")
        connection.executemany("INSERT INTO sessions VALUES (?, ?, ?)", rows)
        connection.execute("UPDATE sessions SET created_at = '2000-01-01T00:00:00.000+00:00' "
                           "WHERE token_sha256 = ?", (hashlib.sha256(old.encode()).hexdigest(),))
    reopened = Database(f"sqlite:///{database.path}")
    assert reopened.rater_by_session(recent).name == "rater1"
    assert reopened.rater_by_session(old) is None
    reopened.open_session(rater.id)  # purges the ended one
    count = sqlite3.connect(database.path).execute("SELECT COUNT(*) FROM sessions").fetchone()
    assert count == (2,)
