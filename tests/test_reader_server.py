"""The reader app's HTTP server: connections that never send a whole request are closed.

Reproduced on the first version (uvicorn's h11 protocol alone): 2,000 loopback connections
sending nothing or half a request line were all still open 20 s later (the issue saw 19,900
held and 276 MB); only a connection left idle after a response was ever closed.
"""

from __future__ import annotations

import selectors
import socket
import time
from pathlib import Path

import httpx
import pytest
from test_reader_app import form_of, new_database, running_server
from test_reader_pairs import demo_study

from medlossy.cli.main import main

TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1
#: Margin for a loaded machine: the server closes within TIMEOUT_S plus this.
SLACK_S = 3.0
HEAD = b"GET /static/rater.css HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def _partial(token: str) -> tuple[bytes, ...]:
    """What the idle connections send: nothing, half a request line, headers without their
    end, an answer whose body stops (10 of 100 bytes, to a rater's link: the app waits)."""
    return (b"", HEAD[:20], HEAD,
            f"POST /r/{token}/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            "application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\npair=00000"
            .encode())


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return demo_study(tmp_path_factory)


def _connect(base: str, sent: bytes) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=5)
    connection.sendall(sent)
    return connection


def _closed_within(connections: list[socket.socket], seconds: float) -> dict[int, float]:
    """{index: seconds until the server closed it} for the connections closed in time."""
    started, closed = time.monotonic(), {}
    with selectors.DefaultSelector() as selector:  # select() fails past 1024 descriptors
        for index, connection in enumerate(connections):
            selector.register(connection, selectors.EVENT_READ, index)
        while len(closed) < len(connections) and time.monotonic() - started < seconds:
            for key, _ in selector.select(timeout=0.1):
                try:
                    ended = key.fileobj.recv(65536) == b""
                except ConnectionResetError:
                    ended = True
                if ended:
                    closed[key.data] = time.monotonic() - started
                    selector.unregister(key.fileobj)
    return closed


def test_connections_that_never_send_a_whole_request_are_closed(study, tmp_path, capfd):
    database, (rater, _), _ = new_database(study, tmp_path)
    with running_server(study, database, request_timeout=TIMEOUT_S,
                        keep_alive=KEEP_ALIVE_S) as base:
        partial = _partial(rater.token)
        opened = time.monotonic()  # none can close before opened + TIMEOUT_S
        idle = [_connect(base, partial[i % len(partial)]) for i in range(50)]
        try:
            # Meanwhile the raters are served as usual.
            with httpx.Client(base_url=base, timeout=10) as client:
                page = client.get(f"/r/{rater.token}/p/1")
                assert page.status_code == 200
                assert client.post(f"/r/{rater.token}/answer",
                                   data=form_of(page.text)).status_code == 303
                assert client.get("/static/rater.css").status_code == 200
            early = TIMEOUT_S / 2 - (time.monotonic() - opened)
            assert _closed_within(idle, early) == {}  # none before its time
            closed = _closed_within(idle, TIMEOUT_S + SLACK_S)
            assert sorted(closed) == list(range(len(idle))), \
                f"{len(idle) - len(closed)} of {len(idle)} connections still open"
        finally:
            for connection in idle:
                connection.close()
        assert len(database.all_answers()) == 1
    # The answer cut off by the deadline is no server error (no traceback in the log).
    assert "Traceback" not in capfd.readouterr().err


def test_a_request_that_arrives_in_parts_in_time_is_served(study, tmp_path):
    database, _, _ = new_database(study, tmp_path)
    with running_server(study, database, request_timeout=TIMEOUT_S,
                        keep_alive=KEEP_ALIVE_S) as base:
        connection = _connect(base, HEAD[:20])
        with connection:
            time.sleep(TIMEOUT_S / 3)
            connection.sendall(HEAD[20:] + b"\r\n")
            assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_a_kept_alive_connection_is_closed_when_idle_or_stalled(study, tmp_path):
    database, _, _ = new_database(study, tmp_path)
    with running_server(study, database, request_timeout=TIMEOUT_S,
                        keep_alive=KEEP_ALIVE_S) as base:
        connections = [_connect(base, HEAD + b"\r\n") for _ in range(2)]
        try:
            for connection in connections:
                assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")
            # The second starts another request and stalls: uvicorn's keep-alive timer stops
            # at its first byte, the request deadline takes over.
            connections[1].sendall(HEAD[:20])
            closed = _closed_within(connections, max(TIMEOUT_S, KEEP_ALIVE_S) + SLACK_S)
            assert sorted(closed) == [0, 1]
        finally:
            for connection in connections:
                connection.close()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_request_timeout_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reader", "serve", "rs", "--request-timeout", value])
    assert exit_info.value.code == 2
    assert "not a positive number of seconds" in capsys.readouterr().err.splitlines()[-1]
