"""Reader app behind a proxy, with session cookies, and with its database locked from outside.

Each case was reproduced on the first version: behind a Host-rewriting proxy every answer got
403; a position such as "²" gave 500; an outside write lock of 3 s stalled an unrelated
static request for 2.8 s, one of 35 s froze the server and the answer got 500.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from test_reader_app import begin_link, form_of, new_database, running_server
from test_reader_pairs import demo_study

from medlossy.reader_study.app import SESSION_COOKIE, create_app
from medlossy.reader_study.db import (
    BUSY_TIMEOUT_S,
    MAX_SESSIONS_PER_RATER,
    SESSION_IDLE,
    SESSION_LIFETIME,
    SESSION_TOUCH,
)
from medlossy.reader_study.pairs import load_pairs

PUBLIC = "https://reader.example.org/study"
UPSTREAM = "127.0.0.1:8000"  # what nginx sends as Host by default (proxy_pass's address)
_LINKS = re.compile(r'(?:href|src|action)="([^"]*)"')


def _stamp(moment: datetime) -> str:
    """A time as the database stores it."""
    return moment.isoformat(timespec="milliseconds")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return demo_study(tmp_path_factory)


def test_a_superscript_position_is_404_not_500(study, tmp_path):
    database, (rater, _), _ = new_database(study, tmp_path)
    client = TestClient(create_app(study, database), follow_redirects=False,
                        raise_server_exceptions=False)
    for position in ("²", "\u0661", "1²"):  # str.isdigit() is True for all of them
        assert client.get(f"/r/{rater.token}/p/{position}").status_code == 404
    form = form_of(client.get(f"/r/{rater.token}/p/1").text)
    assert client.post(f"/r/{rater.token}/answer",
                       data=form | {"position": "²"}).status_code == 400
    assert database.all_answers() == []


def test_behind_a_proxy_that_rewrites_host_answers_go_through(study, tmp_path):
    database, (rater, _), admin = new_database(study, tmp_path)
    client = TestClient(create_app(study, database, public_url=PUBLIC + "/"),
                        base_url=f"http://{UPSTREAM}", follow_redirects=False)
    page = client.get(f"/r/{rater.token}/p/1")
    links = _LINKS.findall(page.text)
    assert links and all(link.startswith(PUBLIC + "/") for link in links), links
    form = form_of(page.text)
    # The browser's Origin is the public site; the Host the app sees is the upstream.
    response = client.post(f"/r/{rater.token}/answer", data=form,
                           headers={"origin": "https://reader.example.org"})
    assert response.status_code == 303
    assert response.headers["location"] == f"{PUBLIC}/r/{rater.token}/p/2"
    assert begin_link(client.get(f"/r/{rater.token}")).startswith(PUBLIC + "/r/")
    admin_page = client.get(f"/admin/{admin.token}").text
    assert all(link.startswith(PUBLIC + "/") for link in _LINKS.findall(admin_page))
    for origin in (f"http://{UPSTREAM}", "https://evil.example", "http://reader.example.org"):
        refused = client.post(f"/r/{rater.token}/answer", data=form,
                              headers={"origin": origin})
        assert refused.status_code == 403, origin
    assert len(database.all_answers()) == 1


def test_a_trailing_slash_redirects_within_the_public_url(study, tmp_path):
    """A link pasted with a slash (``/r/TOKEN/``) was redirected by Starlette to the Host the
    app received: behind a proxy ``http://127.0.0.1:8000/r/TOKEN``, the token sent in clear
    to the proxy's upstream address from the rater's machine. Redirects are built from
    ``--public-url`` as every other link; only paths of the app's own pages are redirected."""
    database, (rater, _), admin = new_database(study, tmp_path)
    for cookies in (False, True):
        client = TestClient(create_app(study, database, public_url=PUBLIC + "/",
                                       session_cookie=cookies),
                            base_url=f"http://{UPSTREAM}", follow_redirects=False)
        paths = [f"/r/{rater.token}", f"/r/{rater.token}/p/1", f"/r/{rater.token}/done",
                 f"/admin/{admin.token}"] + (["/s", "/s/p/2"] if cookies else [])
        for path in paths:
            response = client.get(path + "/")
            assert response.status_code == 307, path
            assert response.headers["location"] == PUBLIC + path, path
        for path in ("//evil.example/", "/nothing/", f"/r/{rater.token}/p/1//"):
            assert client.get(path).status_code == 404, path
    local = TestClient(create_app(study, database), base_url=f"http://{UPSTREAM}",
                       follow_redirects=False)
    assert local.get(f"/r/{rater.token}/").headers["location"] == f"/r/{rater.token}"


def test_a_method_not_allowed_says_which_is(study, tmp_path):
    """405 came without ``Allow`` (RFC 9110 requires it): the app's error page dropped the
    headers of Starlette's refusal. HEAD or POST on a rater's link, GET on the answer route."""
    database, (rater, _), _ = new_database(study, tmp_path)
    client = TestClient(create_app(study, database), follow_redirects=False)
    for method, path, allowed in (("HEAD", f"/r/{rater.token}", "GET"),
                                  ("POST", f"/r/{rater.token}", "GET"),
                                  ("PUT", f"/r/{rater.token}/p/1", "GET"),
                                  ("GET", f"/r/{rater.token}/answer", "POST")):
        response = client.request(method, path)
        assert response.status_code == 405, (method, path)
        assert response.headers.get("allow") == allowed, (method, path)
        assert response.headers["cache-control"] == "no-store"
    assert database.all_answers() == []


def test_a_bad_public_url_is_one_line_error(study, cli):
    code, _, err = cli("reader", "serve", study, "--public-url", "reader.example.org")
    assert code == 2
    assert "--public-url must be http(s)://HOST" in err and len(err.strip().splitlines()) == 1


def test_the_link_token_is_exchanged_for_a_session_cookie(study, tmp_path):
    database, (rater, other), _ = new_database(study, tmp_path)
    client = TestClient(create_app(study, database, public_url="https://reader.example.org",
                                   session_cookie=True),
                        base_url="https://reader.example.org", follow_redirects=False)
    first = client.get(f"/r/{rater.token}")
    assert first.status_code == 303
    assert first.headers["location"] == "https://reader.example.org/s"  # the start page
    assert begin_link(client.get("/s")) == "https://reader.example.org/s/p/1"
    cookie = first.headers["set-cookie"].lower()
    assert all(word in cookie for word in ("httponly", "secure", "samesite=lax", "path=/"))
    session = client.cookies[SESSION_COOKIE]
    assert session != rater.token
    total = len(load_pairs(study))
    for step in range(total):
        page = client.get(f"/s/p/{step + 1}")
        assert page.status_code == 200 and rater.token not in page.text
        assert all("/r/" not in link for link in _LINKS.findall(page.text))
        image = client.get(_LINKS.findall(page.text.split('<img id="pair"')[1])[0])
        assert image.headers["content-type"] == "image/png"
        stack = client.get(re.search(r'data-stack="([^"]+)"', page.text).group(1))
        assert stack.headers["content-type"] == "application/octet-stream"
        assert stack.url.path.startswith("/s/stack/")
        response = client.post("/s/answer", data=form_of(page.text),
                               headers={"origin": "https://reader.example.org"})
        assert response.status_code == 303 and rater.token not in response.headers["location"]
    assert response.headers["location"].endswith("/s/done")
    assert {a["rater"] for a in database.all_answers()} == {"rater1"}
    assert len(database.all_answers()) == total
    # Without the cookie (or with a forged one) the token-free pages are closed.
    stranger = TestClient(client.app, base_url="https://reader.example.org",
                          follow_redirects=False)
    assert stranger.get("/s/p/1").status_code == 403
    stranger.cookies.set(SESSION_COOKIE, other.token)  # a link token is no session
    assert stranger.get("/s/p/1").status_code == 403
    # A page opened by the link cannot be answered with the session's form token.
    page = client.get(f"/r/{rater.token}/p/1")
    assert client.post("/s/answer", data=form_of(page.text)).status_code == 403


def _hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    """Another program writing to the database, holding its write lock for ``seconds``."""
    outside = sqlite3.connect(path, isolation_level=None)
    outside.execute("BEGIN IMMEDIATE")
    outside.execute("INSERT INTO pairs (id) VALUES ('outside')")
    locked.set()
    time.sleep(seconds)
    outside.execute("ROLLBACK")
    outside.close()


def _under_an_outside_lock(study: Path, tmp_path: Path, seconds: float) -> None:
    database, (first, second), _ = new_database(study, tmp_path)
    with running_server(study, database) as base, httpx.Client(base_url=base,
                                                               timeout=60) as client:
        acknowledged = []
        forms = {r.token: form_of(client.get(f"/r/{r.token}/p/1").text) for r in (first, second)}
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(database.path, seconds, locked))
        holder.start()
        locked.wait()
        outcome: dict[str, httpx.Response] = {}
        poster = threading.Thread(target=lambda: outcome.setdefault("post", client.post(
            f"/r/{first.token}/answer", data=forms[first.token])))
        started = time.monotonic()
        poster.start()
        time.sleep(0.3)
        # While the answer waits on the lock, everything else keeps answering at once.
        slowest = 0.0
        while poster.is_alive():
            for path in ("/static/rater.css", f"/r/{second.token}/p/2",
                         f"/r/{second.token}/img/{forms[second.token]['pair']}.png"):
                began = time.monotonic()
                assert client.get(path).status_code == 200
                slowest = max(slowest, time.monotonic() - began)
            time.sleep(0.05)
        poster.join()
        waited = time.monotonic() - started
        response = outcome["post"]
        # The first version stalled them 2.8 s (3 s lock) and 30 s (35 s lock); under 1 s
        # leaves room for a loaded CI machine.
        assert slowest < 1.0, f"another request waited {slowest:.2f} s on the lock"
        assert response.status_code in (303, 503), response.text
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
            assert waited < BUSY_TIMEOUT_S + 1.5  # bounded: refused, not frozen
            assert "nothing was saved" in response.text
        else:
            acknowledged.append(forms[first.token]["pair"])
        holder.join()
        # After the lock: the rater sends again (or another answer) and it is stored.
        retry = client.post(f"/r/{second.token}/answer", data=forms[second.token])
        assert retry.status_code == 303
        again = client.post(f"/r/{first.token}/answer", data=forms[first.token])
        assert again.status_code == 303
    stored = {(a["rater"], a["pair"]) for a in database.all_answers()}
    assert ("rater1", forms[first.token]["pair"]) in stored
    assert ("rater2", forms[second.token]["pair"]) in stored
    assert set(acknowledged) <= {pair for _, pair in stored}
    assert "outside" not in database.pair_ids()


def test_a_three_second_outside_lock_stalls_nothing_else(study, tmp_path):
    _under_an_outside_lock(study, tmp_path, 3.0)


@pytest.mark.slow
def test_a_long_outside_lock_gives_503_and_never_freezes_the_server(study, tmp_path):
    _under_an_outside_lock(study, tmp_path, 35.0)


def test_reader_link_issues_a_new_link_and_the_old_one_stops(study, tmp_path, cli):
    database, (rater, _), _ = new_database(study, tmp_path)
    code, out, err = cli("reader", "link", study, "rater1", "--db", f"sqlite:///{database.path}",
                         "--public-url", PUBLIC)
    assert code == 0, err
    new = re.search(rf"{PUBLIC}/r/(\S+)", out).group(1)
    assert database.rater_by_token(rater.token) is None
    assert database.rater_by_token(new).name == "rater1"
    code, _, err = cli("reader", "link", study, "nobody", "--db", f"sqlite:///{database.path}")
    assert code == 2 and "no rater named 'nobody'" in err


def _cookie_client(study: Path, database) -> TestClient:
    return TestClient(create_app(study, database, public_url="https://reader.example.org",
                                 session_cookie=True),
                      base_url="https://reader.example.org", follow_redirects=False)


def _sessions(database) -> list[tuple[int, str, str]]:
    with sqlite3.connect(database.path) as connection:
        return connection.execute("SELECT rater_id, created_at, last_seen FROM sessions "
                                  "ORDER BY created_at").fetchall()


def _age_sessions(database, column: str, stamp: str) -> None:
    with sqlite3.connect(database.path) as connection:
        connection.execute(f"UPDATE sessions SET {column} = ?", (stamp,))


def test_a_session_ends_on_the_server_not_only_in_the_browser(study, tmp_path):
    # Reproduced on the first version: a session row created in 2000 still opened the pages
    # (only the cookie's Max-Age ended it, and a client can keep a cookie as long as it likes).
    database, (rater, _), _ = new_database(study, tmp_path)
    client = _cookie_client(study, database)
    client.get(f"/r/{rater.token}")
    assert client.get("/s/p/1").status_code == 200
    stranger = _cookie_client(study, database)
    stranger.cookies.set(SESSION_COOKIE, "x" * 43)
    unknown = stranger.get("/s/p/1")
    assert unknown.status_code == 403
    ended = _stamp(datetime.now(UTC) - SESSION_LIFETIME - timedelta(minutes=1))
    idle = _stamp(datetime.now(UTC) - SESSION_IDLE - timedelta(minutes=1))
    for column, stamp in (("created_at", "2000-01-01T00:00:00.000+00:00"),
                          ("created_at", ended), ("last_seen", idle)):
        _age_sessions(database, column, _stamp(datetime.now(UTC)))
        assert client.get("/s/p/1").status_code == 200
        _age_sessions(database, column, stamp)
        for path in ("/s", "/s/p/1", "/s/done", "/s/img/" + "0" * 32 + ".png",
                     "/s/stack/" + "0" * 32 + ".bin"):
            refused = client.get(path)
            assert (refused.status_code, refused.text) == (403, unknown.text), (column, path)
        form = form_of(client.get(f"/r/{rater.token}/p/1").text)
        assert client.post("/s/answer", data=form).status_code == 403
        # The link still works and gives this browser a new session.
        again = client.get(f"/r/{rater.token}")
        assert again.status_code == 303 and SESSION_COOKIE in again.headers["set-cookie"]
        assert client.get("/s/p/1").status_code == 200
    assert database.all_answers() == []


def test_a_used_session_notes_its_last_use_at_most_hourly(study, tmp_path):
    database, (rater, _), _ = new_database(study, tmp_path)
    client = _cookie_client(study, database)
    client.get(f"/r/{rater.token}")
    quiet = _stamp(datetime.now(UTC) - SESSION_TOUCH - timedelta(minutes=1))
    _age_sessions(database, "last_seen", quiet)
    assert client.get("/s/p/1").status_code == 200
    (_, _, noted), = _sessions(database)
    assert noted > quiet
    assert client.get("/s/p/2").status_code == 200
    assert _sessions(database)[0][2] == noted  # within the hour: no write per page view


def test_revisits_keep_one_session_and_new_browsers_do_not_pile_up(study, tmp_path):
    # Reproduced on the first version: 51 visits of a link from one browser made 51 session
    # rows, and every new browser one more, for ever.
    database, (rater, other), _ = new_database(study, tmp_path)
    client = _cookie_client(study, database)
    for visit in range(51):
        response = client.get(f"/r/{rater.token}")
        assert response.status_code == 303
        assert ("set-cookie" in response.headers) == (visit == 0)
    assert len(_sessions(database)) == 1
    page = client.get("/s/p/1")
    assert client.post("/s/answer", data=form_of(page.text),
                       headers={"origin": "https://reader.example.org"}).status_code == 303
    first_session = client.cookies[SESSION_COOKIE]
    # Another rater's link in the same browser gets that rater's own session.
    client.get(f"/r/{other.token}")
    assert client.get("/s/p/1").status_code == 200
    assert [r for r, _, _ in _sessions(database)].count(other.id) == 1
    # Many browsers: at most MAX_SESSIONS_PER_RATER live, the least recently used end.
    browsers = [_cookie_client(study, database) for _ in range(MAX_SESSIONS_PER_RATER + 3)]
    for browser in browsers:
        browser.get(f"/r/{rater.token}")
    assert [r for r, _, _ in _sessions(database)].count(rater.id) == MAX_SESSIONS_PER_RATER
    assert [b.get("/s/p/1").status_code for b in browsers] == \
        [403] * 3 + [200] * MAX_SESSIONS_PER_RATER
    first = _cookie_client(study, database)
    first.cookies.set(SESSION_COOKIE, first_session)
    assert first.get("/s/p/1").status_code == 403  # it was the least recently used
    # Ended sessions of every rater are deleted when a new one opens.
    _age_sessions(database, "created_at", "2000-01-01T00:00:00.000+00:00")
    _cookie_client(study, database).get(f"/r/{rater.token}")
    assert len(_sessions(database)) == 1
    # The answer given through a session stays the rater's.
    assert [(a["rater"], a["pair"]) for a in database.all_answers()] == [
        ("rater1", form_of(page.text)["pair"])]
