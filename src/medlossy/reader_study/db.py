"""Raters and answers in SQLite (WAL): one answer per rater and pair, nothing lost on a crash.

Every answer is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction: an upsert on the
(rater, pair) primary key (a repeat replaces the answer and counts a revision) plus a row in
an append-only log. With WAL and ``synchronous=FULL`` a committed answer survives the server
being killed at any point; an answer whose request was cut off was never committed.

Tokens: 32 random bytes (256 bits) each, URL-safe. Requests are matched on the SHA-256 of the
token, so no comparison runs over the secret itself.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medlossy.errors import MedlossyError

ANSWERS = ("left", "right", "undecided")
TOKEN_BYTES = 32
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('rater', 'admin')),
    token TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    form_token TEXT NOT NULL,
    order_seed INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    rater_id INTEGER NOT NULL REFERENCES raters (id),
    pair_id TEXT NOT NULL REFERENCES pairs (id),
    answer TEXT NOT NULL CHECK (answer IN ('left', 'right', 'undecided')),
    answered_at TEXT NOT NULL,
    revisions INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rater_id, pair_id)
);
CREATE TABLE IF NOT EXISTS answer_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater_id INTEGER NOT NULL REFERENCES raters (id),
    pair_id TEXT NOT NULL REFERENCES pairs (id),
    answer TEXT NOT NULL,
    answered_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Rater:
    id: int
    name: str
    role: str
    token: str
    form_token: str
    order_seed: int


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL (or a plain path)."""
    if url.startswith(("postgresql:", "postgres:")):
        raise MedlossyError(None, "PostgreSQL is not supported yet; use sqlite:///PATH")
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
    elif "://" in url or url.startswith("sqlite:"):
        raise MedlossyError(None, f"unsupported database URL {url!r}; use sqlite:///PATH")
    else:
        path = url
    if not path or path == ":memory:":
        raise MedlossyError(None, "the database must be a file (sqlite:///PATH)")
    return Path(path)


class Database:
    """The study's database; safe to share between threads (one connection per thread)."""

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self._local = threading.local()
        if not self.path.parent.is_dir():
            raise MedlossyError(self.path, "its folder does not exist")
        try:
            self._connection().executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise MedlossyError(self.path, f"not a usable SQLite database ({error})") from None
        os.chmod(self.path, 0o600)  # it holds the rater tokens

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                             check_same_thread=True)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                connection.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as error:
                raise MedlossyError(self.path, f"not a usable SQLite database ({error})") from None
            self._local.connection = connection
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _query(self, sql: str, parameters: Iterable = ()) -> list[tuple]:
        return self._connection().execute(sql, tuple(parameters)).fetchall()

    # Set-up ---------------------------------------------------------------------------------

    def setup(self, pair_ids: Iterable[str], raters: int) -> None:
        """Register the pair set (once) and make sure there are ``raters`` raters and an admin.

        A database already holding another pair set is refused: its answers would not match.
        """
        pair_ids = sorted(set(pair_ids))
        with self._transaction() as connection:
            known = {row[0] for row in connection.execute("SELECT id FROM pairs")}
            if known and known != set(pair_ids):
                raise MedlossyError(self.path, "holds answers for another pair set; use a new "
                                               "database for this one")
            connection.executemany("INSERT OR IGNORE INTO pairs (id) VALUES (?)",
                                   [(pair_id,) for pair_id in pair_ids])
            count = connection.execute(
                "SELECT COUNT(*) FROM raters WHERE role = 'rater'").fetchone()[0]
            for number in range(count + 1, raters + 1):
                self._add(connection, f"rater{number}", "rater")
            if not connection.execute("SELECT 1 FROM raters WHERE role = 'admin'").fetchall():
                self._add(connection, "admin", "admin")

    @staticmethod
    def _add(connection: sqlite3.Connection, name: str, role: str) -> None:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        connection.execute(
            "INSERT INTO raters (name, role, token, token_sha256, form_token, order_seed, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, role, token, _digest(token), secrets.token_urlsafe(TOKEN_BYTES),
             secrets.randbits(63), _now()))

    # Reads ----------------------------------------------------------------------------------

    def pair_ids(self) -> list[str]:
        return [row[0] for row in self._query("SELECT id FROM pairs ORDER BY id")]

    def raters(self, role: str | None = None) -> list[Rater]:
        rows = self._query("SELECT id, name, role, token, form_token, order_seed FROM raters "
                           "WHERE (? IS NULL OR role = ?) ORDER BY id", (role, role))
        return [Rater(*row) for row in rows]

    def rater_by_token(self, token: str) -> Rater | None:
        rows = self._query("SELECT id, name, role, token, form_token, order_seed FROM raters "
                           "WHERE token_sha256 = ?", (_digest(token),))
        return Rater(*rows[0]) if rows else None

    def answers_of(self, rater_id: int) -> dict[str, str]:
        rows = self._query("SELECT pair_id, answer FROM answers WHERE rater_id = ?", (rater_id,))
        return dict(rows)

    def all_answers(self) -> list[dict]:
        """Every current answer with the rater's name, oldest first."""
        rows = self._query(
            "SELECT r.name, a.pair_id, a.answer, a.answered_at, a.revisions FROM answers a "
            "JOIN raters r ON r.id = a.rater_id ORDER BY a.answered_at, r.name, a.pair_id")
        return [dict(zip(("rater", "pair", "answer", "answered_at", "revisions"), row,
                         strict=True)) for row in rows]

    def progress(self) -> list[tuple[Rater, int, str | None]]:
        """(rater, answers given, time of the last one) per rater."""
        counts = dict((row[0], row[1:]) for row in self._query(
            "SELECT rater_id, COUNT(*), MAX(answered_at) FROM answers GROUP BY rater_id"))
        return [(rater, *counts.get(rater.id, (0, None))) for rater in self.raters("rater")]

    # Writes ---------------------------------------------------------------------------------

    def record(self, rater_id: int, pair_id: str, answer: str) -> None:
        """Store (or replace) a rater's answer for a pair, atomically."""
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, got {answer!r}")
        now = _now()
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO answers (rater_id, pair_id, answer, answered_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (rater_id, pair_id) DO UPDATE SET "
                "answer = excluded.answer, answered_at = excluded.answered_at, "
                "revisions = answers.revisions + 1",
                (rater_id, pair_id, answer, now))
            connection.execute(
                "INSERT INTO answer_log (rater_id, pair_id, answer, answered_at) "
                "VALUES (?, ?, ?, ?)", (rater_id, pair_id, answer, now))
