"""Reader study web app: the rating flow, bad requests, forgery, blinding, crash safety."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from test_reader_pairs import demo_study

from medlossy.reader_study import app as app_module
from medlossy.reader_study.app import create_app
from medlossy.reader_study.cli import KEEP_ALIVE_S, REQUEST_TIMEOUT_S
from medlossy.reader_study.db import Database, form_token
from medlossy.reader_study.pairs import load_key, load_pairs
from medlossy.reader_study.server import deadline_protocol

_FIELD = re.compile(r'name="(\w+)" value="([^"]*)"')


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return demo_study(tmp_path_factory)


@dataclass(frozen=True)
class Link:
    """A rater (or the admin) as the tests know them: id, name and the token handed out."""

    id: int
    name: str
    token: str

    @property
    def form_token(self) -> str:
        return form_token(self.token)


def new_database(study: Path, folder: Path, raters: int = 2
                 ) -> tuple[Database, list[Link], Link]:
    """A fresh database for ``study``: (database, its raters' links, the admin's link)."""
    database = Database(f"sqlite:///{folder / 'answers.sqlite'}")
    tokens = database.setup([pair["id"] for pair in load_pairs(study)], raters)
    links = [Link(r.id, r.name, tokens[r.name]) for r in database.raters()]
    return database, [x for x in links if x.name != "admin"], \
        next(x for x in links if x.name == "admin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(study: Path, database: Database, *,
                   request_timeout: float = REQUEST_TIMEOUT_S,
                   keep_alive: int = KEEP_ALIVE_S) -> Iterator[str]:
    """A real uvicorn server on loopback, in a thread, with the HTTP protocol and timeouts
    of ``reader serve``; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(study, database), host="127.0.0.1", port=port,
                            log_level="warning", limit_concurrency=200,
                            http=deadline_protocol(request_timeout),
                            timeout_keep_alive=keep_alive)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Setup:
    client: TestClient
    database: Database
    raters: list[Link]
    admin: Link


@pytest.fixture
def setup(study, tmp_path) -> Setup:
    database, raters, admin = new_database(study, tmp_path)
    return Setup(TestClient(create_app(study, database), follow_redirects=False), database,
                 raters, admin)


def form_of(page: str) -> dict[str, str]:
    return dict(_FIELD.findall(page.split('id="answer-form"')[1].split("</form>")[0])
                ) | {"answer": "left"}


def begin_link(start_page) -> str:
    """Where the start page's Begin (or Continue) link goes."""
    assert start_page.status_code == 200
    return re.search(r'<a class="begin" id="begin" href="([^"]+)"', start_page.text).group(1)


def _count(database: Database) -> int:
    return len(database.all_answers())


def test_a_rater_answers_every_pair_and_can_resume(setup, study):
    client, database, rater = setup.client, setup.database, setup.raters[0]
    total = len(load_pairs(study))
    location = begin_link(client.get(f"/r/{rater.token}"))
    seen = []
    for step in range(total):
        page = client.get(location)
        assert page.status_code == 200
        assert f"{step + 1} / {total}" in page.text
        form = form_of(page.text)
        seen.append(form["pair"])
        form["answer"] = ("left", "right", "undecided")[step % 3]
        response = client.post(f"/r/{rater.token}/answer", data=form)
        assert response.status_code == 303
        location = response.headers["location"]
        if step == 2:  # stop, come back later: the link's start page goes on at the next
            start = client.get(f"/r/{rater.token}")  # unanswered pair, with the progress
            assert begin_link(start) == location and "answered 3 of 12 pairs" in start.text
    assert location.endswith("/done")
    assert sorted(seen) == sorted(p["id"] for p in load_pairs(study))
    assert _count(database) == total
    assert "You answered 12 of 12 pairs" in client.get(location).text


def test_each_rater_has_their_own_random_order(setup):
    client = setup.client
    orders = []
    for rater in setup.raters:
        orders.append([form_of(client.get(f"/r/{rater.token}/p/{n}").text)["pair"]
                       for n in range(1, 13)])
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]


def test_a_repeat_replaces_the_answer(setup):
    client, database, rater = setup.client, setup.database, setup.raters[0]
    form = form_of(client.get(f"/r/{rater.token}/p/1").text)
    client.post(f"/r/{rater.token}/answer", data=form)
    client.post(f"/r/{rater.token}/answer", data=form | {"answer": "undecided"})
    answers = database.all_answers()
    assert [(a["answer"], a["revisions"]) for a in answers] == [("undecided", 1)]
    page = client.get(f"/r/{rater.token}/p/1").text
    assert 'value="undecided" id="answer-undecided" class="chosen"' in page


def test_a_second_answer_without_reloading_is_timed_by_the_server(setup):
    client, database, rater = setup.client, setup.database, setup.raters[0]
    form = form_of(client.get(f"/r/{rater.token}/p/1").text)
    client.post(f"/r/{rater.token}/answer", data=form | {"elapsed_ms": "10"})
    # Far more than the server has seen: its own measure is kept, not NULL.
    client.post(f"/r/{rater.token}/answer",
                data=form | {"answer": "undecided", "elapsed_ms": "99999999"})
    (answer,) = database.all_answers()
    assert answer["answer"] == "undecided"
    assert answer["response_ms"] is not None and answer["response_ms"] < 99999999


def test_a_position_that_does_not_match_the_pair_is_refused(setup):
    client, database, rater = setup.client, setup.database, setup.raters[0]
    form = form_of(client.get(f"/r/{rater.token}/p/2").text)
    response = client.post(f"/r/{rater.token}/answer", data=form | {"position": "3"})
    assert response.status_code == 400 and "does not match" in response.text
    assert _count(database) == 0


def test_a_rater_sees_only_their_own_answers(setup):
    client, (first, second) = setup.client, setup.raters
    form = form_of(client.get(f"/r/{first.token}/p/1").text)
    client.post(f"/r/{first.token}/answer", data=form)
    order = [form_of(client.get(f"/r/{second.token}/p/{n}").text)["pair"] for n in range(1, 13)]
    page = client.get(f"/r/{second.token}/p/{order.index(form['pair']) + 1}").text
    assert "chosen" not in page and "0 answered" in page
    assert first.token not in page and first.form_token not in page


@pytest.mark.parametrize("path", ["/r/{bad}", "/r/{bad}/p/1", "/r/{bad}/img/{pair}.png",
                                  "/r/{bad}/done", "/admin/{bad}", "/admin/{rater}",
                                  "/admin/{rater}/answers.csv", "/r/{admin}",
                                  "/r/{rater}/p/0", "/r/{rater}/p/13", "/r/{rater}/p/x",
                                  "/r/{rater}/img/{forged}.png", "/r/{rater}/img/..%2Fkey.json",
                                  "/r/{bad}/stack/{pair}.bin", "/r/{rater}/stack/{forged}.bin",
                                  "/r/{rater}/stack/..%2Fkey.json", "/r/{rater}/key/{pair}.bin",
                                  "/static/../key.json", "/docs", "/openapi.json"])
def test_unknown_links_get_404(setup, study, path):
    client, rater, admin = setup.client, setup.raters[0], setup.admin
    url = path.format(bad="A" * 43, rater=rater.token, admin=admin.token,
                      pair=load_pairs(study)[0]["id"], forged="0" * 32)
    response = client.get(url)
    assert response.status_code == 404
    assert "less_compressed" not in response.text


def _post(client, token, form, **kwargs):
    return client.post(f"/r/{token}/answer", data=form, **kwargs)


def test_bad_posts_get_4xx_and_change_nothing(setup, study):
    client, database, (rater, other) = setup.client, setup.database, setup.raters
    good = form_of(client.get(f"/r/{rater.token}/p/1").text)
    cases = [
        (404, "A" * 43, good, {}),  # unknown token
        (404, setup.admin.token, good, {}),  # admin is no rater
        (403, rater.token, {k: v for k, v in good.items() if k != "form_token"}, {}),
        (403, rater.token, good | {"form_token": "x" * 43}, {}),
        (403, rater.token, good | {"form_token": other.form_token}, {}),  # another rater's
        (403, rater.token, good, {"headers": {"origin": "http://evil.example"}}),
        (403, rater.token, good, {"headers": {"origin": "null"}}),
        (404, rater.token, good | {"pair": "0" * 32}, {}),  # forged pair id
        (404, rater.token, good | {"pair": "'; DROP TABLE answers; --"}, {}),
        (400, rater.token, good | {"answer": "both"}, {}),
        (400, rater.token, good | {"position": "-1"}, {}),
        (400, rater.token, good | {"extra": "1"}, {}),
    ]
    for status, token, form, extra in cases:
        response = _post(client, token, form, **extra)
        assert response.status_code == status, (form, extra, response.text)
    url = f"/r/{rater.token}/answer"
    body = "&".join(f"{k}={v}" for k, v in good.items())
    assert client.post(url, content=body + "&answer=right", headers={
        "content-type": "application/x-www-form-urlencoded"}).status_code == 400
    assert client.post(url, content=b"\xff\xfe=%%%", headers={
        "content-type": "application/x-www-form-urlencoded"}).status_code == 400
    assert client.post(url, json=good).status_code == 415
    assert client.post(url, content="a=" + "x" * 5000, headers={
        "content-type": "application/x-www-form-urlencoded"}).status_code == 413
    assert client.put(url, data=good).status_code == 405
    assert _count(database) == 0
    assert _post(client, rater.token, good).status_code == 303  # the real one still works
    assert _count(database) == 1


def _blank(text: str, study: Path, position: int, token: str) -> str:
    for pair in load_pairs(study):
        text = text.replace(pair["id"], "PAIR")
    # The form token is random too: 1 page in 50 held "x5", "less"... in it.
    text = text.replace(token, "TOKEN").replace(form_token(token), "FORM")
    for before, after in ((f"/p/{position + 1}\"", "/p/NEXT\""),
                          (f"/p/{position - 1}\"", "/p/PREVIOUS\""),
                          (f">{position} / ", ">N / "), (f"y {position} / ", "y N / "),
                          (f'value="{position}"', 'value="N"')):
        assert before in text
        text = text.replace(before, after)
    return text


def test_pages_and_images_do_not_depend_on_the_key(setup, study, monkeypatch):
    """What a rater receives is the same for every ratio pair, up to the pair id."""
    # The rater's requests never touch the key: no way for its content to shape the timing.
    def no_key(_):
        raise AssertionError("a rater's request read the key")
    monkeypatch.setattr(app_module, "load_key", no_key)
    client, rater = setup.client, setup.raters[0]
    key = load_key(study)
    pages, headers, sizes, stack_headers = set(), set(), {}, set()
    for position in range(2, 12):  # the first and last have one navigation link fewer
        page = client.get(f"/r/{rater.token}/p/{position}").text
        pair_id = form_of(page)["pair"]
        blank = _blank(page, study, position, rater.token)
        pages.add(blank)
        # on the page less its random token and pair ids, which hold "x5" now and then
        for word in ("ratio", "lossless", "compress", "x20", "x5", "less"):
            assert word not in blank.lower()
        image = client.get(f"/r/{rater.token}/img/{pair_id}.png")
        assert image.headers["content-type"] == "image/png"
        headers.add(tuple(sorted((k, v) for k, v in image.headers.items()
                                 if k != "content-length")))
        entry = key[pair_id]
        sizes.setdefault((entry["dataset"], entry["case"]), set()).add(len(image.content))
        # The viewer's stack: both sides in one response, its size set by the case's shape.
        stack = client.get(f"/r/{rater.token}/stack/{pair_id}.bin")
        stack_headers.add(tuple(sorted((k, v) for k, v in stack.headers.items()
                                       if k != "content-length")))
        sizes.setdefault(("stack", entry["dataset"], entry["case"]), set()).add(
            len(stack.content))
    assert len(pages) == 1, "rating pages differ beyond pair id and position"
    assert len(stack_headers) == 1
    assert len(headers) == 1  # no ETag, Last-Modified or anything else per file
    assert all(len(values) == 1 for values in sizes.values())


def test_the_start_page_is_blind_plain_and_sent_like_the_pair_pages(setup, study,
                                                                   monkeypatch):
    """The link's start page reads no key, is the same for every rater up to the token (and
    their progress), needs no script of its own (no inline code: the CSP forbids it; only
    the pair pages' hashed assets, which it loads for them) and has the pages' headers."""
    monkeypatch.setattr(app_module, "load_key", lambda _: pytest.fail("the key was read"))
    client, (first, second) = setup.client, setup.raters
    pages = [client.get(f"/r/{rater.token}") for rater in (first, second)]
    texts = {page.text.replace(rater.token, "TOKEN") for page, rater in zip(
        pages, (first, second), strict=True)}
    assert len(texts) == 1
    (text,) = texts
    assert "12 pairs to answer." in text and ">Begin</a>" in text
    assert begin_link(pages[0]) == f"/r/{first.token}/p/1"
    assert re.findall(r"<script[^>]*>", text) == [
        f'<script src="/static/{name}?v={app_module._VERSIONS[name]}">'
        for name in ("rater.js", "viewer.js")]
    assert f'href="/static/rater.css?v={app_module._VERSIONS["rater.css"]}"' in text
    pair_page = client.get(f"/r/{first.token}/p/1")
    for name in ("content-security-policy", "cache-control", "referrer-policy",
                 "x-frame-options", "x-content-type-options"):
        assert pages[0].headers[name] == pair_page.headers[name], name
    for word in ("ratio", "lossless", "x20", "x5"):
        assert word not in text.replace("TOKEN", "").lower()


def test_security_headers(setup):
    page = setup.client.get(f"/r/{setup.raters[0].token}/p/1")
    assert page.headers["referrer-policy"] == "same-origin"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert "set-cookie" not in page.headers


def test_admin_sees_progress_and_exports_answers_with_the_key(setup, study):
    client, rater, admin = setup.client, setup.raters[0], setup.admin
    form = form_of(client.get(f"/r/{rater.token}/p/1").text)
    client.post(f"/r/{rater.token}/answer", data=form)
    page = client.get(f"/admin/{admin.token}").text
    assert "1 / 12" in page and "rater1" in page
    assert rater.token not in page  # not stored, so never shown again
    export = client.get(f"/admin/{admin.token}/answers.csv")
    assert export.headers["content-type"].startswith("text/csv")
    lines = export.text.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"rater1,{form['pair']},left,")
    entry = load_key(study)[form["pair"]]
    assert lines[1].endswith(f",{entry['less_compressed']}")


def test_answers_survive_the_server_being_killed(study, tmp_path):
    """SIGKILL mid-session: every answer the server confirmed is there after a restart."""
    url = f"sqlite:///{tmp_path / 'answers.sqlite'}"
    port = free_port()
    command = [sys.executable, "-m", "medlossy.cli.main", "reader", "serve", str(study),
               "--db", url, "--port", str(port), "--raters", "1"]

    def start(token: str | None = None):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        while True:
            line = process.stdout.readline()
            assert line, "the server exited"
            if token is None:  # the first start prints the new links
                match = re.search(r"rater1: http://\S+/r/(\S+)", line)
                token = match and match.group(1)
                if token:
                    break
            elif line.startswith("No new raters"):  # later ones print none: hashes only
                break
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/r/{token}", timeout=1)
                return process, token
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not answer")

    process, token = start()
    confirmed = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for position in range(1, 8):
                form = form_of(client.get(f"/r/{token}/p/{position}").text)
                if client.post(f"/r/{token}/answer", data=form).status_code == 303:
                    confirmed.append(form["pair"])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    stored = sqlite3.connect(tmp_path / "answers.sqlite").execute(
        "SELECT pair_id FROM answers").fetchall()
    assert sorted(p for (p,) in stored) == sorted(confirmed) and len(confirmed) == 7
    process, _ = start(token)
    try:  # the same private link works after a restart, and resumes after the 7 answers
        response = httpx.get(f"http://127.0.0.1:{port}/r/{token}", follow_redirects=False)
        assert begin_link(response).endswith("/p/8")
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_serve_refuses_postgresql_for_now(study, cli):
    code, _, err = cli("reader", "serve", study, "--db", "postgresql://user@localhost/rs")
    assert code == 2
    assert err.strip().splitlines() == ["medlossy: error: PostgreSQL is not supported yet; use "
                                        "sqlite:///PATH"]


def test_serve_on_a_port_in_use_is_refused_before_raters_are_made(study, cli, tmp_path):
    database = tmp_path / "answers.sqlite"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = cli("reader", "serve", study, "--db", f"sqlite:///{database}",
                             "--port", port)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and f"port {port}" in err
    assert not database.exists()


@pytest.mark.parametrize("command", ["serve", "analyze"])
def test_serve_and_analyze_name_a_folder_that_is_no_study(cli, tmp_path, command):
    code, _, err = cli("reader", command, tmp_path / "nonexistent")
    assert code == 2
    assert err.strip().splitlines() == [f"medlossy: error: {tmp_path / 'nonexistent'}: not a "
                                        "reader study folder (make one with `medlossy reader "
                                        "make`)"]
