"""Raters and answers in SQLite (WAL): one answer per rater and pair, nothing lost on a crash.

Every answer is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction: an upsert on the
(rater, pair) primary key (a repeat replaces the answer and counts a revision) plus a row in
an append-only log. With WAL and ``synchronous=FULL`` a committed answer survives the server
being killed at any point; an answer whose request was cut off was never committed. Answers
that arrive together are committed together (``record_many``: one transaction, one fsync).

Tokens: 32 random bytes (256 bits) each, URL-safe, handed out once (``setup``, ``reissue``)
and never stored: the database keeps only their SHA-256, so a copy of it (or of its -wal)
opens nothing. The form token a page carries is an HMAC of the rater's credential, derived
on each request, so it is not stored either. Every file (the database, its -wal and -shm) is
created with mode 0600 (umask 077 around each connection), and a database made by an older
version that kept plain tokens is rewritten without them at first open.

Sessions (``open_session``, for the app's session cookie) end on the server, not only in the
browser: one older than ``SESSION_LIFETIME`` or unused for ``SESSION_IDLE`` opens nothing, as
an unknown one. A rater keeps at most ``MAX_SESSIONS_PER_RATER`` (one per browser; the least
recently used goes first) and ended sessions are deleted whenever a new one is opened, so the
table cannot grow with every visit.

Waiting on a lock is bounded (``BUSY_TIMEOUT_S``): a database locked from outside for longer
raises ``DatabaseBusy`` instead of hanging, and nothing is committed then.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import os
import random
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medlossy.errors import MedlossyError
from medlossy.reader_study.designs import DEFAULT_DESIGN, get_design

TOKEN_BYTES = 32
#: Longest wait for a lock held by someone else before giving up (``DatabaseBusy``).
BUSY_TIMEOUT_S = 2.0
#: A session ends this long after it was opened (the cookie's Max-Age is the same).
SESSION_LIFETIME = _dt.timedelta(days=30)
#: ... or after this long without a request.
SESSION_IDLE = _dt.timedelta(days=7)
#: A session's last use is written at most this often (a write per page view would cost an
#: fsync each), so the idle limit holds to within this much.
SESSION_TOUCH = _dt.timedelta(hours=1)
#: Sessions a rater keeps (e.g. one per computer); opening one more ends the least recently
#: used.
MAX_SESSIONS_PER_RATER = 5
_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")
_UMASK_LOCK = threading.Lock()  # the umask is per process: one connection opens at a time
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('rater', 'admin')),
    token_sha256 TEXT NOT NULL UNIQUE,
    order_seed INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,
    rater_id INTEGER NOT NULL REFERENCES raters (id),
    created_at TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_rater ON sessions (rater_id);
CREATE TABLE IF NOT EXISTS answers (
    rater_id INTEGER NOT NULL REFERENCES raters (id),
    pair_id TEXT NOT NULL REFERENCES pairs (id),
    answer TEXT NOT NULL CHECK (answer IN ('left', 'right', 'undecided', 'seen', 'unseen')),
    answered_at TEXT NOT NULL,
    revisions INTEGER NOT NULL DEFAULT 0,
    response_ms INTEGER,
    design TEXT NOT NULL DEFAULT 'side-by-side',
    PRIMARY KEY (rater_id, pair_id)
);
CREATE TABLE IF NOT EXISTS answer_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater_id INTEGER NOT NULL REFERENCES raters (id),
    pair_id TEXT NOT NULL REFERENCES pairs (id),
    answer TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    response_ms INTEGER,
    design TEXT NOT NULL DEFAULT 'side-by-side'
);
"""
class DatabaseBusy(MedlossyError):
    """The database stayed locked by someone else for longer than ``BUSY_TIMEOUT_S``."""


@dataclass(frozen=True)
class Rater:
    id: int
    name: str
    role: str
    order_seed: int


def _now() -> str:
    return _stamp(_dt.datetime.now(_dt.UTC))


def _stamp(moment: _dt.datetime) -> str:
    """UTC time as stored: fixed width, so stamps compare as strings."""
    return moment.isoformat(timespec="milliseconds")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def form_token(credential: str) -> str:
    """The anti-forgery token of the pages opened with ``credential`` (link or session)."""
    mac = hmac.new(credential.encode("utf-8", "surrogatepass"), b"medlossy reader form",
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def order_seed(study_seed: int, name: str) -> int:
    """A rater's order seed from the study's seed and the rater's name (63 bits)."""
    digest = hashlib.sha256(f"medlossy reader order {study_seed} {name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def presentation_order(pair_ids: Iterable[str], seed: int) -> list[str]:
    """A rater's order of the pairs: the sorted ids shuffled by ``random.Random(seed)``."""
    order = sorted(pair_ids)
    random.Random(seed).shuffle(order)
    return order


def tokens_equal(given: str, expected: str) -> bool:
    """Constant-time comparison of two tokens (or digests)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


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


@contextmanager
def private_files() -> Iterator[None]:
    """Files created inside are readable by their owner only (umask 077)."""
    with _UMASK_LOCK:
        previous = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(previous)


def _session_cutoffs(now: _dt.datetime) -> tuple[str, str]:
    """(opened after, last used after): the stamps a live session must be later than."""
    return _stamp(now - SESSION_LIFETIME), _stamp(now - SESSION_IDLE)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    return "locked" in str(error) or "busy" in str(error)


class Database:
    """The study's database; safe to share between threads (one connection per thread)."""

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self._local = threading.local()
        #: The study's design (``setup``): which answers are accepted, recorded per answer.
        self.design = DEFAULT_DESIGN
        if not self.path.parent.is_dir():
            raise MedlossyError(self.path, "its folder does not exist")
        for suffix in _FILE_SUFFIXES:  # files left readable by an older version
            existing = Path(f"{self.path}{suffix}")
            if existing.exists():
                existing.chmod(0o600)
        try:
            self._connection().executescript(_SCHEMA)
            self._migrate()
        except sqlite3.OperationalError as error:
            if _is_busy(error):
                raise DatabaseBusy(self.path, "is locked by another program") from None
            raise MedlossyError(self.path, f"not a usable SQLite database ({error})") from None
        except sqlite3.DatabaseError as error:
            raise MedlossyError(self.path, f"not a usable SQLite database ({error})") from None

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                # The -wal and -shm files appear with the first statement: keep them private.
                with private_files():
                    connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S,
                                                 isolation_level=None, check_same_thread=True)
                    connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                connection.execute("PRAGMA foreign_keys=ON")
                connection.execute("PRAGMA secure_delete=ON")  # replaced digests are zeroed
            except sqlite3.OperationalError as error:
                if _is_busy(error):
                    raise DatabaseBusy(self.path, "is locked by another program") from None
                raise MedlossyError(self.path, f"not a usable SQLite database ({error})") from None
            except sqlite3.DatabaseError as error:
                raise MedlossyError(self.path, f"not a usable SQLite database ({error})") from None
            self._local.connection = connection
        return connection

    def _migrate(self) -> None:
        """Bring a database of an earlier version up to date."""
        self._add_last_seen()
        self._drop_plain_tokens()
        self._add_response_time()
        self._add_design()

    def _add_design(self) -> None:
        """Answers given before designs existed were side-by-side (the column's default)."""
        for table in ("answers", "answer_log"):
            columns = {row[1] for row in self._query(f"PRAGMA table_info({table})")}
            if "design" not in columns:
                with self._transaction() as connection:
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN design TEXT NOT NULL "
                                       f"DEFAULT '{DEFAULT_DESIGN}'")

    def _add_response_time(self) -> None:
        """Answers given before response times were kept have none (NULL)."""
        for table in ("answers", "answer_log"):
            columns = {row[1] for row in self._query(f"PRAGMA table_info({table})")}
            if "response_ms" not in columns:
                with self._transaction() as connection:
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN response_ms INTEGER")

    def _add_last_seen(self) -> None:
        """Sessions made before they could end get their opening time as their last use."""
        columns = {row[1] for row in self._query("PRAGMA table_info(sessions)")}
        if "last_seen" in columns:
            return
        with self._transaction() as connection:
            connection.execute("ALTER TABLE sessions ADD COLUMN last_seen TEXT NOT NULL "
                               "DEFAULT ''")
            connection.execute("UPDATE sessions SET last_seen = created_at")

    def _drop_plain_tokens(self) -> None:
        """Drop the plain-token columns of a first-version database, and scrub its pages."""
        columns = {row[1] for row in self._query("PRAGMA table_info(raters)")}
        if "token" not in columns:
            return
        with self._transaction() as connection:  # DROP COLUMN: SQLite 3.35 and later
            connection.execute("ALTER TABLE raters DROP COLUMN token")
            connection.execute("ALTER TABLE raters DROP COLUMN form_token")
        connection = self._connection()
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("VACUUM")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if _is_busy(error):
                raise DatabaseBusy(self.path, "is locked by another program") from None
            raise
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        try:
            connection.execute("COMMIT")
        except sqlite3.OperationalError as error:
            connection.execute("ROLLBACK")
            if _is_busy(error):
                raise DatabaseBusy(self.path, "is locked by another program") from None
            raise

    def _query(self, sql: str, parameters: Iterable = ()) -> list[tuple]:
        try:
            return self._connection().execute(sql, tuple(parameters)).fetchall()
        except sqlite3.OperationalError as error:
            if _is_busy(error):
                raise DatabaseBusy(self.path, "is locked by another program") from None
            raise

    # Set-up ---------------------------------------------------------------------------------

    def setup(self, pair_ids: Iterable[str], raters: int, *,
              study_seed: int | None = None, design: str = DEFAULT_DESIGN) -> dict[str, str]:
        """Register the pair set (once) and make sure there are ``raters`` raters and an admin.

        A new rater's order seed is ``order_seed(study_seed, name)``, so their order can be
        rebuilt from the study file (random when ``study_seed`` is None). Returns the private
        token of every rater (and admin) created now, by name: the only time it exists in the
        clear. A database already holding another pair set, or answers of another design,
        is refused: its answers would not match.
        """
        pair_ids = sorted(set(pair_ids))
        get_design(design)
        issued = {}
        with self._transaction() as connection:
            known = {row[0] for row in connection.execute("SELECT id FROM pairs")}
            if known and known != set(pair_ids):
                raise MedlossyError(self.path, "holds answers for another pair set; use a new "
                                               "database for this one")
            given = {row[0] for row in connection.execute("SELECT DISTINCT design FROM answers")}
            if given - {design}:
                raise MedlossyError(self.path, f"holds {', '.join(sorted(given))} answers, not "
                                               f"{design}; use a new database for this study")
            self.design = design
            connection.executemany("INSERT OR IGNORE INTO pairs (id) VALUES (?)",
                                   [(pair_id,) for pair_id in pair_ids])
            count = connection.execute(
                "SELECT COUNT(*) FROM raters WHERE role = 'rater'").fetchone()[0]
            for number in range(count + 1, raters + 1):
                name = f"rater{number}"
                issued[name] = self._add(connection, name, "rater",
                                         None if study_seed is None else
                                         order_seed(study_seed, name))
            if not connection.execute("SELECT 1 FROM raters WHERE role = 'admin'").fetchall():
                issued["admin"] = self._add(connection, "admin", "admin")
        return issued

    @staticmethod
    def _add(connection: sqlite3.Connection, name: str, role: str,
             seed: int | None = None) -> str:
        token = new_token()
        connection.execute(
            "INSERT INTO raters (name, role, token_sha256, order_seed, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (name, role, _digest(token), secrets.randbits(63) if seed is None else seed,
             _now()))
        return token

    def reissue(self, name: str) -> str:
        """A new private token for rater (or admin) ``name``; the old link and its sessions
        stop working. The rater's answers and order are kept."""
        token = new_token()
        with self._transaction() as connection:
            row = connection.execute("SELECT id FROM raters WHERE name = ?", (name,)).fetchone()
            if row is None:
                names = [r[0] for r in connection.execute("SELECT name FROM raters ORDER BY id")]
                raise MedlossyError(self.path, f"no rater named {name!r} (there are: "
                                               f"{', '.join(names)})")
            connection.execute("UPDATE raters SET token_sha256 = ? WHERE id = ?",
                               (_digest(token), row[0]))
            connection.execute("DELETE FROM sessions WHERE rater_id = ?", (row[0],))
        return token

    # Reads ----------------------------------------------------------------------------------

    def pair_ids(self) -> list[str]:
        return [row[0] for row in self._query("SELECT id FROM pairs ORDER BY id")]

    def raters(self, role: str | None = None) -> list[Rater]:
        rows = self._query("SELECT id, name, role, order_seed FROM raters "
                           "WHERE (? IS NULL OR role = ?) ORDER BY id", (role, role))
        return [Rater(*row) for row in rows]

    def rater_by_token(self, token: str) -> Rater | None:
        """The rater whose private link carries ``token``."""
        return self._by_digest("SELECT r.token_sha256, r.id, r.name, r.role, r.order_seed "
                               "FROM raters r WHERE r.token_sha256 = ?", token)

    def rater_by_session(self, session: str) -> Rater | None:
        """The rater a session cookie (``open_session``) belongs to, while the session lasts
        (``SESSION_LIFETIME``, ``SESSION_IDLE``); an ended one is unknown."""
        now = _dt.datetime.now(_dt.UTC)
        opened_after, used_after = _session_cutoffs(now)
        digest = _digest(session)
        rows = self._query("SELECT s.token_sha256, r.id, r.name, r.role, r.order_seed, "
                           "s.last_seen FROM sessions s JOIN raters r ON r.id = s.rater_id "
                           "WHERE s.token_sha256 = ? AND s.created_at > ? AND s.last_seen > ?",
                           (digest, opened_after, used_after))
        if not rows or not tokens_equal(rows[0][0], digest):
            return None
        if rows[0][5] <= _stamp(now - SESSION_TOUCH):
            self._touch(digest, _stamp(now))
        return Rater(*rows[0][1:5])

    def _touch(self, digest: str, now: str) -> None:
        """Note a session's use, without waiting: a page view never stalls on a lock held by
        a commit or another program; a missed note is retried on the next request."""
        connection = self._connection()
        connection.execute("PRAGMA busy_timeout = 0")
        try:
            connection.execute("UPDATE sessions SET last_seen = ? WHERE token_sha256 = ?",
                               (now, digest))
        except sqlite3.OperationalError as error:
            if not _is_busy(error):
                raise
        finally:
            connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def _by_digest(self, sql: str, token: str) -> Rater | None:
        digest = _digest(token)
        rows = self._query(sql, (digest,))
        if not rows or not tokens_equal(rows[0][0], digest):
            return None
        return Rater(*rows[0][1:])

    def answers_of(self, rater_id: int) -> dict[str, str]:
        rows = self._query("SELECT pair_id, answer FROM answers WHERE rater_id = ?", (rater_id,))
        return dict(rows)

    def all_answers(self) -> list[dict]:
        """Every current answer with the rater's name, oldest first."""
        rows = self._query(
            "SELECT r.name, a.pair_id, a.answer, a.answered_at, a.response_ms, a.revisions, "
            "a.design FROM answers a JOIN raters r ON r.id = a.rater_id "
            "ORDER BY a.answered_at, r.name, a.pair_id")
        return [dict(zip(("rater", "pair", "answer", "answered_at", "response_ms",
                          "revisions", "design"), row, strict=True)) for row in rows]

    def progress(self) -> list[tuple[Rater, int, str | None]]:
        """(rater, answers given, time of the last one) per rater."""
        counts = dict((row[0], row[1:]) for row in self._query(
            "SELECT rater_id, COUNT(*), MAX(answered_at) FROM answers GROUP BY rater_id"))
        return [(rater, *counts.get(rater.id, (0, None))) for rater in self.raters("rater")]

    # Writes ---------------------------------------------------------------------------------

    def open_session(self, rater_id: int) -> str:
        """A new session token for ``rater_id`` (for a cookie); only its digest is kept.

        Ended sessions (of every rater) are deleted, and the rater's least recently used
        ones beyond ``MAX_SESSIONS_PER_RATER`` - 1, to make room for this one.
        """
        session = new_token()
        now = _dt.datetime.now(_dt.UTC)
        with self._transaction() as connection:
            connection.execute("DELETE FROM sessions WHERE created_at <= ? OR last_seen <= ?",
                               _session_cutoffs(now))
            connection.execute(
                "DELETE FROM sessions WHERE rater_id = ? AND token_sha256 NOT IN (SELECT "
                "token_sha256 FROM sessions WHERE rater_id = ? ORDER BY last_seen DESC, "
                "created_at DESC LIMIT ?)", (rater_id, rater_id, MAX_SESSIONS_PER_RATER - 1))
            connection.execute("INSERT INTO sessions (token_sha256, rater_id, created_at, "
                               "last_seen) VALUES (?, ?, ?, ?)",
                               (_digest(session), rater_id, _stamp(now), _stamp(now)))
        return session

    def record(self, rater_id: int, pair_id: str, answer: str,
               response_ms: int | None = None) -> None:
        """Store (or replace) a rater's answer for a pair, atomically."""
        self.record_many([(rater_id, pair_id, answer, response_ms)])

    def record_many(self, answers: list[tuple[int, str, str, int | None]]) -> None:
        """Store several (rater id, pair id, answer, response time in ms or None) in one
        transaction: all or none. Each is recorded with the study's design (``setup``),
        whose answers only are accepted."""
        allowed = get_design(self.design).answers
        for _, _, answer, _ in answers:
            if answer not in allowed:
                raise ValueError(f"answer must be one of {allowed}, got {answer!r}")
        now = _now()
        with self._transaction() as connection:
            for rater_id, pair_id, answer, response_ms in answers:
                connection.execute(
                    "INSERT INTO answers (rater_id, pair_id, answer, answered_at, response_ms, "
                    "design) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rater_id, pair_id) DO "
                    "UPDATE SET answer = excluded.answer, answered_at = excluded.answered_at, "
                    "response_ms = excluded.response_ms, revisions = answers.revisions + 1",
                    (rater_id, pair_id, answer, now, response_ms, self.design))
                connection.execute(
                    "INSERT INTO answer_log (rater_id, pair_id, answer, answered_at, "
                    "response_ms, design) VALUES (?, ?, ?, ?, ?, ?)",
                    (rater_id, pair_id, answer, now, response_ms, self.design))
