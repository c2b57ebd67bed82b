"""The raters' web app: one blinded pair at a time, the design's answers, resumable.

Routes (``TOKEN`` is a rater's or the admin's private token; ``R`` is ``/r/TOKEN`` with
links, or ``/s`` with a session cookie, see below):

- ``GET /r/TOKEN``: the start page: what the study asks, the answer and viewer keys, the
  rater's progress and a link on to the first unanswered pair in the rater's own random
  order (at the end: on to the thank-you page). It loads the rating pages' stylesheet and
  scripts (named by content hash, kept by the browser), so that the first pair's page
  finds them cached instead of fetching them cold, and a practice viewer on a test pattern
  the script makes (``viewer``): raters try the controls, and the viewer's code is compiled
  before the first pair.
- ``GET R/p/N``: the N-th pair of that order, with the answer given so far if any.
- ``GET R/img/PAIR.png``: the pair's composite image (left | right), pre-windowed: what a
  browser without script shows.
- ``GET R/stack/PAIR.bin``: the pair's stack of 16-bit values, both sides (``stacks``),
  which the page's viewer windows, zooms and scrolls itself (``viewer``); with ``?part=1``
  only its header and the pair's own slice (preloaded by the page's head: the first view),
  with ``?part=2`` the other slices (fetched once the first view is drawn).
- ``POST R/answer``: ``pair``, ``answer`` (one of the study design's: ``designs``),
  ``position``, the page's ``form_token`` (cross-site request forgery guard) and
  ``elapsed_ms`` (the time from the first view to the answer, measured by the page; may be
  empty); 303 to the next pair.
- ``GET /admin/TOKEN`` and ``GET /admin/TOKEN/answers.csv``: progress, export.

Session cookies (``session_cookie=True``): the first visit of ``/r/TOKEN`` exchanges the
link's token for a session cookie (HttpOnly, SameSite=Lax, Secure behind HTTPS) and redirects
to token-free URLs under ``/s``, so proxies and browser history no longer record the token
beyond that first request. A browser that opens the link again while its session lasts keeps
that session (no new one); sessions end on the server (see ``db``), and an ended one is
refused as an unknown one: the rater opens their link again for a new one.

Behind a reverse proxy, ``public_url`` is the address raters use: every link and redirect is
built from it and a POST's Origin must match it; the request's Host (which a proxy may
rewrite) is never used then.

Every database call runs in a worker thread (answers through the group-commit ``Committer``),
so the event loop, static files and other raters never wait on SQLite; a database locked
past its busy timeout gives 503 with Retry-After, and nothing acknowledged is lost.

What a rater's requests can observe never depends on the key: pages differ only in the pair
id and position, every image and stack of a given size has the same byte count and headers,
and the request handlers never read the key (only the admin export does).

Response time: the server notes when it first served each pair's page to a rater (in
memory); the time the page reports is kept when it is no longer than that (plus
``CLOCK_SLACK_MS``), else the server's own measure is stored (``response_time``).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from medlossy.errors import MedlossyError
from medlossy.reader_study.assets import CSS, JS
from medlossy.reader_study.committer import Committer
from medlossy.reader_study.db import (
    SESSION_LIFETIME,
    Database,
    DatabaseBusy,
    Rater,
    form_token,
    presentation_order,
    tokens_equal,
)
from medlossy.reader_study.designs import Choice, Design, get_design
from medlossy.reader_study.pairs import load_key, load_pairs, study_design
from medlossy.reader_study.stacks import PARTS, read_part
from medlossy.reader_study.viewer import VIEWER_CSS, VIEWER_JS
from medlossy.reader_study.windows import PRESETS, VIEWER_CT_PRESETS

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_PAIR = re.compile(r"^[0-9a-f]{32}$")
_FILES = {".png": "img", ".bin": "stack"}
_PARTS = {f"part={part}": part for part in PARTS}  # a stack's query, exactly
_POSITION = re.compile(r"^[0-9]{1,9}$")  # ASCII digits: str.isdigit() also accepts "²"
_FIELDS = {"pair", "answer", "position", "form_token", "elapsed_ms"}
_REQUIRED = _FIELDS - {"elapsed_ms"}  # pages served before the field existed lack it
#: How much later than the server's clock a page may say its answer came (network, clocks).
CLOCK_SLACK_MS = 2000
#: Without a server-side reference (a restart since the page was served), the longest
#: response time believed.
MAX_RESPONSE_MS = 24 * 3600 * 1000
MAX_BODY_BYTES = 1024
SESSION_COOKIE = "medlossy_reader"
RETRY_AFTER_S = 2
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    # The token may be in the URL: never send it to another site. ("no-referrer" would also
    # blank the Origin of the page's own POSTs, which the forgery check reads.)
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # connect-src: the viewer fetches its pair's stack from this server, nothing else.
    "Content-Security-Policy": ("default-src 'none'; img-src 'self'; style-src 'self'; "
                                "script-src 'self'; connect-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
}
_RAW_HEADERS = tuple((name.lower().encode(), value.encode())
                     for name, value in _SECURITY_HEADERS.items())
#: The page's stylesheet and scripts: (text, media type).
_ASSETS = {"rater.css": (CSS + VIEWER_CSS, "text/css"), "rater.js": (JS, "text/javascript"),
           "viewer.js": (VIEWER_JS, "text/javascript")}
#: Pages name each asset with its content's hash (``?v=``): such a URL never changes what it
#: serves, so browsers keep it instead of fetching it again before every pair's first view.
_VERSIONS = {name: hashlib.sha256(text.encode()).hexdigest()[:16]
             for name, (text, _) in _ASSETS.items()}
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
#: How a key is shown on its button (``KeyboardEvent.key`` names otherwise).
_KEY_NAMES = {"ArrowLeft": "\u2190", "ArrowRight": "\u2192", "ArrowDown": "\u2193",
              " ": "Space"}
T = TypeVar("T")


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class _Visit:
    """Who asks, with which credential, and where their pages live (``/r/TOKEN`` or ``/s``)."""

    rater: Rater
    credential: str
    root: str


def public_base(public_url: str | None) -> tuple[str, str | None]:
    """(prefix for every link, origin POSTs must come from) for ``--public-url``.

    Without a public URL links are root-relative and the origin is checked against Host.
    """
    if public_url is None:
        return "", None
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or \
            parts.fragment:
        raise MedlossyError(None, f"--public-url must be http(s)://HOST[:PORT][/PATH], got "
                                  f"{public_url!r}")
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    return origin + parts.path.rstrip("/"), origin


def _asset(base: str, name: str) -> str:
    return f"{base}/static/{name}?v={_VERSIONS[name]}"


def _page(title: str, body: str, base: str, *, script: bool = False, preload: str = "") -> str:
    """A page; ``preload``: a URL the page's script will fetch, requested from the head so
    that its transfer starts while the rest of the page is still being parsed; only where
    script runs (``media``: a browser without script would fetch it for nothing, and one
    that does not know the feature fetches it from the script)."""
    early = (f"<link rel=\"preload\" href=\"{preload}\" as=\"fetch\" crossorigin "
             "media=\"(scripting: enabled)\">" if preload else "")
    tail = (f'<script src="{_asset(base, "rater.js")}"></script>'
            f'<script src="{_asset(base, "viewer.js")}"></script>') if script else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"referrer\" content=\"same-origin\">"
            f"<title>{html.escape(title)}</title>"
            f"{early}<link rel=\"stylesheet\" href=\"{_asset(base, 'rater.css')}\"></head>"
            f"<body>{body}{tail}</body></html>")


def create_app(study: str | Path, database: Database, *, public_url: str | None = None,
               session_cookie: bool = False) -> FastAPI:
    """The app for the pair set in ``study`` with raters and answers in ``database``."""
    study = Path(study)
    pairs = load_pairs(study)
    pair_ids = sorted(pair["id"] for pair in pairs)
    files = {".png": {pair["id"]: study / "images" / f"{pair['id']}.png" for pair in pairs},
             ".bin": {pair["id"]: study / "stacks" / f"{pair['id']}.bin" for pair in pairs}}
    images = files[".png"]
    # Studies made before stacks existed show the composite PNG only.
    viewer = all(path.is_file() for path in files[".bin"].values())
    # Per rater, the pair on screen and when the server first showed it: kept until the
    # rater is shown another pair, so a second answer to the same pair is timed too.
    first_shown: dict[int, tuple[str, float]] = {}
    design_name, flicker_ms = study_design(study)
    design = get_design(design_name)
    database.setup(pair_ids, raters=0, design=design.name)
    base, origin = public_base(public_url)
    secure = (public_url or "").startswith("https:")
    orders: dict[int, list[str]] = {}
    committer = Committer(database)

    # Starlette's own trailing-slash redirect is built from the request's Host, which a proxy
    # rewrites (to its upstream address): ``http_error`` redirects from ``base`` instead.
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)

    async def db(function: Callable[..., T], *arguments: Any) -> T:
        """Run a database call in a worker thread, never on the event loop."""
        return await anyio.to_thread.run_sync(function, *arguments)

    def refusal(status: int, message: str, headers: dict[str, str] | None = None
                ) -> HTMLResponse:
        body = f"<main class=\"message\"><h1>{status}</h1><p>{html.escape(message)}</p></main>"
        return HTMLResponse(_page("Reader study", body, base), status_code=status,
                            headers=_SECURITY_HEADERS | (headers or {}))

    def redirect(path: str) -> RedirectResponse:
        return RedirectResponse(base + path, status_code=303)

    def order_of(rater: Rater) -> list[str]:
        if rater.id not in orders:
            orders[rater.id] = presentation_order(pair_ids, rater.order_seed)
        return orders[rater.id]

    # The helpers below touch SQLite: each handler runs them in one worker thread (``db``).

    def by_token(token: str, role: str = "rater") -> Rater:
        rater = database.rater_by_token(token) if _TOKEN.match(token) else None
        if rater is None or rater.role != role:
            raise _Refused(404, "Unknown link. Ask the study's organiser for yours.")
        return rater

    def by_link(token: str) -> Callable[[], _Visit]:
        return lambda: _Visit(by_token(token), token, f"/r/{token}")

    def by_cookie(request: Request) -> Callable[[], _Visit]:
        session = request.cookies.get(SESSION_COOKIE, "")

        def visit() -> _Visit:
            rater = database.rater_by_session(session) if _TOKEN.match(session) else None
            if rater is None or rater.role != "rater":
                raise _Refused(403, "Your session has ended: open your private link again.")
            return _Visit(rater, session, "/s")
        return visit

    def next_position(rater: Rater, after: int = 0) -> int | None:
        """1-based position of the first unanswered pair after ``after`` (wrapping round)."""
        order, answered = order_of(rater), database.answers_of(rater.id)
        for offset in range(len(order)):
            index = (after + offset) % len(order)
            if order[index] not in answered:
                return index + 1
        return None

    def position_of(text: str, rater: Rater, status: int) -> int:
        if not _POSITION.match(text) or not 1 <= int(text) <= len(order_of(rater)):
            raise _Refused(status, "No such pair." if status == 404 else "Bad position.")
        return int(text)

    @app.exception_handler(_Refused)
    async def refused(_: Request, error: _Refused) -> HTMLResponse:
        return refusal(error.status, error.message, error.headers)

    @app.exception_handler(DatabaseBusy)
    async def busy(_: Request, __: DatabaseBusy) -> HTMLResponse:
        return refusal(503, "The study's database is busy; nothing was saved. Send your "
                            "answer again in a moment.", {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 404 and (path := _without_slash(app, request)):
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(base + path + query, status_code=307)
        # Starlette's headers kept: a 405 names the allowed methods (``Allow``).
        return refusal(error.status_code, "Not here." if error.status_code == 404
                       else str(error.detail), dict(error.headers or {}))

    app.add_middleware(_SecurityHeaders)

    @app.get("/static/{name}")
    async def static(name: str, request: Request) -> Response:
        if name not in _ASSETS:
            raise _Refused(404, "Not here.")
        text, media_type = _ASSETS[name]
        versioned = request.url.query == f"v={_VERSIONS[name]}"
        return Response(text, media_type=media_type, headers=_IMMUTABLE if versioned else None)

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/r/{token}")
    async def start(token: str, request: Request) -> Response:
        visit = await db(by_link(token))
        if not session_cookie:
            return await welcome(lambda: visit)
        held = request.cookies.get(SESSION_COOKIE, "")

        def session_of_this_browser() -> tuple[str, bool]:
            """(session, whether it is new): the browser's own if it still lasts."""
            current = database.rater_by_session(held) if _TOKEN.match(held) else None
            if current is not None and current.id == visit.rater.id:
                return held, False
            return database.open_session(visit.rater.id), True
        session, new = await db(session_of_this_browser)
        response = redirect("/s")  # the start page, without the token in its URL
        if new:
            response.set_cookie(SESSION_COOKIE, session,
                                max_age=int(SESSION_LIFETIME.total_seconds()),
                                path=(urlsplit(base).path or "") + "/", secure=secure,
                                httponly=True, samesite="lax")
        return response

    @app.get("/s")
    async def session_start(request: Request) -> Response:
        return await welcome(by_cookie(request))

    async def welcome(resolve: Callable[[], _Visit]) -> Response:
        """The start page, on to the first unanswered pair; the thank-you page at the end."""
        def work() -> tuple[_Visit, int, int | None]:
            visit = resolve()
            return (visit, len(database.answers_of(visit.rater.id)),
                    next_position(visit.rater))
        visit, answered, position = await db(work)
        if position is None:
            return redirect(f"{visit.root}/done")
        return HTMLResponse(_start_page(base + visit.root, position, answered,
                                        len(pair_ids), base, viewer=viewer, design=design,
                                        flicker_ms=flicker_ms))

    async def show(resolve: Callable[[], _Visit], position: str) -> HTMLResponse:
        def work() -> tuple[_Visit, int, dict[str, str]]:
            visit = resolve()
            number = position_of(position, visit.rater, 404)
            return visit, number, database.answers_of(visit.rater.id)
        visit, number, answers = await db(work)
        order = order_of(visit.rater)
        pair_id = order[number - 1]
        if first_shown.get(visit.rater.id, ("", 0.0))[0] != pair_id:
            first_shown[visit.rater.id] = (pair_id, time.monotonic())
        return HTMLResponse(_rating_page(base + visit.root, form_token(visit.credential),
                                         pair_id, number, len(order), len(answers),
                                         answers.get(pair_id), base, viewer=viewer,
                                         design=design, flicker_ms=flicker_ms))

    async def pair_file(resolve: Callable[[], _Visit], name: str, suffix: str,
                        query: str) -> Response:
        """A pair's composite PNG, its stack or a part of the stack (``?part=1``: the header
        and the pair's own slice, ``?part=2``: the rest): the file's bytes, nothing per file
        added."""
        if query and (suffix != ".bin" or query not in _PARTS):
            raise _Refused(404, "No such image.")
        part = _PARTS.get(query)

        def work() -> bytes:
            resolve()
            pair_id = name.removesuffix(suffix)
            if not name.endswith(suffix) or not _PAIR.match(pair_id) or \
                    pair_id not in files[suffix]:
                raise _Refused(404, "No such image.")
            path = files[suffix][pair_id]
            try:
                return path.read_bytes() if part is None else read_part(path, part)
            except FileNotFoundError:
                raise _Refused(404, "No such image.") from None
        media_type = "image/png" if suffix == ".png" else "application/octet-stream"
        return Response(await db(work), media_type=media_type)

    def response_time(rater_id: int, pair_id: str, reported: str) -> int | None:
        """The page's measure when the server's clock allows it, else the server's own."""
        shown_pair, shown = first_shown.get(rater_id, ("", 0.0))
        served_ms = (None if shown_pair != pair_id else
                     round((time.monotonic() - shown) * 1000))
        browser_ms = int(reported) if reported else None
        limit = MAX_RESPONSE_MS if served_ms is None else served_ms + CLOCK_SLACK_MS
        if browser_ms is not None and browser_ms <= limit:
            return browser_ms
        return served_ms

    async def answer(resolve: Callable[[], _Visit], request: Request) -> Response:
        visit = await db(resolve)
        _check_origin(request, origin)
        fields = await _form(request)
        if not tokens_equal(fields.get("form_token", ""), form_token(visit.credential)):
            raise _Refused(403, "This form has expired or did not come from the study's page; "
                                "reload the page and answer again.")
        if not _REQUIRED <= set(fields) <= _FIELDS:
            raise _Refused(400, f"Expected the fields {sorted(_FIELDS)}.")
        elapsed = fields.get("elapsed_ms", "")
        if elapsed and not _POSITION.match(elapsed):
            raise _Refused(400, "Bad response time.")
        pair_id, value = fields["pair"], fields["answer"]
        if value not in design.answers:
            raise _Refused(400, f"The answer must be one of {', '.join(design.answers)}.")
        number = position_of(fields["position"], visit.rater, 400)
        if not _PAIR.match(pair_id) or pair_id not in images:
            raise _Refused(404, "No such pair.")
        if order_of(visit.rater)[number - 1] != pair_id:
            raise _Refused(400, "The position does not match the pair.")
        await committer.record(visit.rater.id, pair_id, value,
                               response_time(visit.rater.id, pair_id, elapsed))
        following = await db(next_position, visit.rater, number)
        return redirect(f"{visit.root}/done" if following is None
                        else f"{visit.root}/p/{following}")

    async def done(resolve: Callable[[], _Visit]) -> HTMLResponse:
        def work() -> tuple[_Visit, int, int | None]:
            visit = resolve()
            return (visit, len(database.answers_of(visit.rater.id)),
                    next_position(visit.rater))
        visit, count, remaining = await db(work)
        total = len(pair_ids)
        root = base + visit.root
        more = ("" if remaining is None else
                f"<p><a href=\"{root}/p/{remaining}\">{total - count} pairs still "
                "unanswered</a></p>")
        body = (f"<main class=\"message\"><h1>Thank you</h1><p>You answered {count} of "
                f"{total} pairs.</p>{more}<p><a href=\"{root}/p/1\">Review your "
                "answers</a> (a new answer replaces the old one).</p></main>")
        return HTMLResponse(_page("Reader study: done", body, base))

    @app.get("/r/{token}/p/{position}")
    async def show_by_link(token: str, position: str) -> HTMLResponse:
        return await show(by_link(token), position)

    @app.get("/s/p/{position}")
    async def show_by_cookie(position: str, request: Request) -> HTMLResponse:
        return await show(by_cookie(request), position)

    @app.get("/r/{token}/{kind}/{name}")
    async def file_by_link(token: str, kind: str, name: str, request: Request) -> Response:
        return await pair_file(by_link(token), name, _suffix(kind), request.url.query)

    @app.get("/s/{kind}/{name}")
    async def file_by_cookie(kind: str, name: str, request: Request) -> Response:
        return await pair_file(by_cookie(request), name, _suffix(kind), request.url.query)

    @app.post("/r/{token}/answer")
    async def answer_by_link(token: str, request: Request) -> Response:
        return await answer(by_link(token), request)

    @app.post("/s/answer")
    async def answer_by_cookie(request: Request) -> Response:
        return await answer(by_cookie(request), request)

    @app.get("/r/{token}/done")
    async def done_by_link(token: str) -> HTMLResponse:
        return await done(by_link(token))

    @app.get("/s/done")
    async def done_by_cookie(request: Request) -> HTMLResponse:
        return await done(by_cookie(request))

    @app.get("/admin/{token}")
    async def admin(token: str) -> HTMLResponse:
        await db(by_token, token, "admin")
        rows = "".join(
            f"<tr><td>{html.escape(rater.name)}</td><td>{count} / {len(pair_ids)}</td>"
            f"<td>{html.escape(last or '-')}</td></tr>"
            for rater, count, last in await db(database.progress))
        body = ("<main class=\"message admin\"><h1>Reader study: administration</h1>"
                f"<p>{len(pair_ids)} pairs.</p><table><tr><th>rater</th><th>answered</th>"
                f"<th>last answer (UTC)</th></tr>{rows}</table>"
                "<p>Private links are shown once, when a rater is created (the database keeps "
                "only their hashes); <code>medlossy reader link STUDY NAME</code> issues a new "
                "one.</p>"
                f"<p><a href=\"{base}/admin/{token}/answers.csv\">Export answers with the key "
                "(CSV)</a></p></main>")
        return HTMLResponse(_page("Reader study: administration", body, base))

    @app.get("/admin/{token}/answers.csv")
    async def export(token: str) -> Response:
        await db(by_token, token, "admin")
        key = await db(load_key, study)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["rater", "pair", "answer", "answered_at", "response_ms", "revisions",
                         "design", "dataset",
                         "case", "channel", "slice", "left_ratio", "right_ratio",
                         "less_compressed"])
        for row in await db(database.all_answers):
            entry = key[row["pair"]]
            writer.writerow([row["rater"], row["pair"], row["answer"], row["answered_at"],
                             row["response_ms"], row["revisions"], row["design"],
                             entry["dataset"], entry["case"], entry["channel"], entry["slice"],
                             entry["left"]["ratio"], entry["right"]["ratio"],
                             entry["less_compressed"]])
        return Response(buffer.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": "attachment; filename=answers.csv"})

    return app


def _without_slash(app: FastAPI, request: Request) -> str | None:
    """The request's path without its trailing slash where that is one of the app's routes
    for this method (a link pasted with a slash), else None."""
    path = request.scope["path"]
    if not path.endswith("/") or path.endswith("//"):
        return None
    scope = {**request.scope, "path": path[:-1]}
    if any(route.matches(scope)[0] is Match.FULL for route in app.router.routes):
        return path[:-1]
    return None


def _suffix(kind: str) -> str:
    """The file suffix a pair-file route serves (``img`` -> .png, ``stack`` -> .bin)."""
    for suffix, name in _FILES.items():
        if name == kind:
            return suffix
    raise _Refused(404, "Not here.")


class _SecurityHeaders:
    """Adds ``_SECURITY_HEADERS`` to every response that lacks them.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` wraps every request in
    extra tasks and streams, measurably slower with 50 raters at once (bench/reader_load.py).
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((n, v) for n, v in _RAW_HEADERS if n not in present)]
            await send(message)
        await self.app(scope, receive, with_headers)


def _check_origin(request: Request, origin: str | None) -> None:
    """Browsers send Origin on POSTs: it must be this server (defence besides the form token).

    Behind a proxy (``origin`` from the public URL) it must be the public origin: the Host
    header the app receives is the proxy's upstream, not what the browser used.
    """
    sent = request.headers.get("origin")
    if sent is None:
        return
    if origin is not None:
        if sent.lower() != origin:
            raise _Refused(403, "Cross-site request refused.")
    elif urlsplit(sent).netloc != request.headers.get("host"):
        raise _Refused(403, "Cross-site request refused.")


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded body as single-valued fields; anything else is refused with 4xx."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise _Refused(415, "Send the form as application/x-www-form-urlencoded.")
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
        raise _Refused(413, "Request too large.")
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _Refused(413, "Request too large.")
    except ClientDisconnect:  # gone, or cut off by the server's request deadline
        raise _Refused(400, "The request was cut off; nothing was saved.") from None
    try:
        parsed = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                          max_num_fields=len(_FIELDS) + 1)
    except (UnicodeDecodeError, ValueError):
        raise _Refused(400, "Malformed form.") from None
    if any(len(values) != 1 for values in parsed.values()):
        raise _Refused(400, "Each field must appear once.")
    return {name: values[0] for name, values in parsed.items()}


def _key_list(keys: tuple[str, ...]) -> str:
    """Keys for the page's script, space-separated (the space bar itself as "Space")."""
    return html.escape(" ".join("Space" if key == " " else key for key in keys))


def _button(choice: Choice, *, chosen: bool, disabled: bool = False) -> str:
    keys = " / ".join(f"<kbd>{html.escape(_KEY_NAMES.get(key, key))}</kbd>"
                      for key in choice.keys)
    css = ' class="chosen"' if chosen else ""
    off = " disabled" if disabled else ""
    return (f'<button type="submit" name="answer" value="{choice.value}" '
            f'id="answer-{choice.value}"{css}{off} data-keys="{_key_list(choice.keys)}">'
            f'{choice.label}<span class="keys">{keys}</span></button>')


def _rating_page(root: str, form: str, pair_id: str, number: int, total: int,
                 answered: int, current: str | None, base: str, *, viewer: bool,
                 design: Design, flicker_ms: int) -> str:
    """The rating page; ``root`` is the rater's full link prefix (``BASE/r/TOKEN`` or
    ``BASE/s``). With ``viewer`` the page's script replaces the composite image by the
    viewer on the pair's stack (one alternating viewport for a flicker design).

    A flicker pair has no composite (it is side by side, not the design) and its answers
    are disabled until the viewer's first view is drawn: without script, or when its stack
    cannot be had, the pair cannot be answered (it stays unanswered; ``viewer``)."""
    buttons = "".join(_button(choice, chosen=choice.value == current,
                              disabled=design.flicker)
                      for choice in design.choices)
    previous = (f"<a href=\"{root}/p/{number - 1}\">&larr; previous</a>" if number > 1
                else "<span></span>")
    following = (f"<a href=\"{root}/p/{number + 1}\">next &rarr;</a>" if number < total
                 else "<span></span>")
    image = f"{root}/img/{pair_id}.png"
    composite = (f"<img id=\"pair\" src=\"{image}\" alt=\"two versions of one CT or MR "
                 "slice, side by side\">")
    stack = f"{root}/stack/{pair_id}.bin" if viewer else ""
    figure = f" data-stack=\"{stack}\" data-image=\"{image}\"" if viewer else ""
    if design.flicker:
        figure += f" data-flicker-ms=\"{flicker_ms}\""
        composite = ""
        caption = ("<figcaption><span>the two images alternate in this view</span>"
                   "</figcaption><noscript><p>This pair cannot be shown: the flicker needs "
                   "JavaScript. Turn it on for this page.</p></noscript>")
    else:
        caption = "<figcaption><span>left</span><span>right</span></figcaption>"
    # With the viewer the composite is for browsers without script only: inside <noscript>
    # a scripted browser never fetches it (it took bandwidth and CPU from the stack), and
    # the viewer's script shows it when the stack cannot be had.
    if viewer and composite:
        composite = f"<noscript>{composite}</noscript>"
    body = (
        "<header><span class=\"title\">Reader study</span>"
        f"<span class=\"progress\" id=\"progress\">{number} / {total}</span>"
        f"<span class=\"answered\">{answered} answered</span></header>"
        f"<main class=\"rating\" data-design=\"{design.name}\">"
        f"<p class=\"question\">{html.escape(design.question)}</p>"
        f"<figure id=\"figure\"{figure}>{composite}{caption}</figure>"
        f"<form method=\"post\" action=\"{root}/answer\" id=\"answer-form\">"
        f"<input type=\"hidden\" name=\"pair\" value=\"{pair_id}\">"
        f"<input type=\"hidden\" name=\"position\" value=\"{number}\">"
        f"<input type=\"hidden\" name=\"form_token\" value=\"{html.escape(form)}\">"
        "<input type=\"hidden\" name=\"elapsed_ms\" value=\"\" id=\"elapsed\">"
        f"<div class=\"buttons\">{buttons}</div></form>"
        f"<nav>{previous}<span class=\"hint\">You can stop at any time: your link brings you "
        f"back where you left off.</span>{following}</nav></main>")
    return _page(f"Reader study {number} / {total}", body, base, script=True,
                 preload=f"{stack}?part=1" if viewer else "")


#: The viewer's controls as the start page lists them (the viewer's own keys: ``viewer``).
_VIEWER_HELP = (
    ("window presets", "buttons", "<kbd>4</kbd> <kbd>5</kbd> <kbd>6</kbd> <kbd>7</kbd>"),
    ("window width / level", "right-drag (or <kbd>w</kbd>, then drag)",
     "<kbd>Shift</kbd> + arrows"),
    ("slices above and below", "wheel", "<kbd>PageUp</kbd> <kbd>PageDown</kbd>, "
     "<kbd>k</kbd> <kbd>j</kbd>"),
    ("zoom (1x to 8x)", "buttons, <kbd>Ctrl</kbd> + wheel", "<kbd>+</kbd> <kbd>-</kbd>"),
    ("pan", "drag", ""),
    ("magnifier", "button", "<kbd>m</kbd>"),
    ("reset the view", "button", "<kbd>0</kbd>"),
)


def _practice(design: Design, flicker_ms: int) -> str:
    """The start page's practice viewer: a figure the viewer's script fills with a CT test
    pattern it makes itself (no study data, the same for every rater), hidden until then, so
    absent without script. Trying the controls there also runs the viewer's code once
    before the first pair (compiled, caches warm), whose first view is then as fast as the
    later pairs'."""
    windows = [PRESETS["soft-tissue"], *(PRESETS[name] for name in VIEWER_CT_PRESETS)]
    listed = " ".join(f"{width:g},{level:g}" for width, level in windows)
    flicker = f" data-flicker-ms=\"{flicker_ms}\"" if design.flicker else ""
    # a flicker study's practice is one view: no right side to point at
    coarsened = ("One of the two alternating images" if design.flicker else "The right side")
    return ("<section class=\"practice\" id=\"practice-section\" hidden>"
            "<h2>Try the viewer</h2><p>A test pattern, not from the study: a gradient, fine "
            f"bars, a bone ring and a faint disc that grows from slice to slice. {coarsened} "
            "is coarsened, as a compressed image may be: look for it with the brain "
            "preset and the magnifier.</p>"
            f"<figure id=\"practice\" data-windows=\"{listed}\"{flicker}></figure></section>")


def _start_page(root: str, position: int, answered: int, total: int, base: str, *,
                viewer: bool, design: Design, flicker_ms: int) -> str:
    """The page a rater's link opens: the task, the keys, their progress and a plain link
    on to pair ``position`` (no script needed). It carries the rating pages' stylesheet
    and scripts, cached for the pairs; with a viewer, its practice figure (``_practice``)."""
    if design.flicker:
        shown = (f"one view in which two versions of the same slice alternate, each shown for "
                 f"{flicker_ms} ms")
    else:
        shown = "two versions of the same slice side by side, left and right"
    answers = "".join(
        f"<tr><td>{html.escape(choice.label)}</td><td>" +
        " / ".join(f"<kbd>{html.escape(_KEY_NAMES.get(key, key))}</kbd>" for key in choice.keys)
        + "</td></tr>" for choice in design.choices)
    controls = ""
    if viewer:
        rows = "".join(f"<tr><td>{what}</td><td>{mouse}</td><td>{keys}</td></tr>"
                       for what, mouse, keys in _VIEWER_HELP)
        controls = ("<h2>Looking closer</h2><p>Everything applies to both images at once. "
                    "The window starts at the study's; the presets are soft tissue, lung, "
                    "bone and brain for CT, percentile windows for MR.</p>"
                    "<table class=\"keys-table\"><tr><th>what</th><th>mouse</th><th>keys</th>"
                    f"</tr>{rows}</table>{_practice(design, flicker_ms)}")
    progress = (f"You have answered {answered} of {total} pairs." if answered else
                f"{total} pairs to answer.")
    label = "Begin" if answered == 0 else f"Continue with pair {position}"
    # Progress and the link come before the instructions: on a laptop screen (768-900 px
    # high) a link below them was out of sight.
    needs_script = ("<noscript><p class=\"status\">The pairs of this study flicker, which "
                    "needs JavaScript: turn it on for this site before you begin.</p>"
                    "</noscript>" if design.flicker else "")
    body = (
        "<header><span class=\"title\">Reader study</span>"
        f"<span class=\"progress\">{answered} / {total} answered</span>"
        "<span></span></header>"
        "<main class=\"message start\">"
        "<h1>Reader study</h1>"
        f"<p>Each page shows {shown}. The images are shown in random order and nothing on "
        f"the page tells which is which.</p><p class=\"question\"><strong>"
        f"{html.escape(design.question)}</strong></p>"
        f"{needs_script}"
        f"<p class=\"status\" id=\"status\">{progress}</p>"
        f"<p><a class=\"begin\" id=\"begin\" href=\"{root}/p/{position}\">{label}</a></p>"
        f"<h2>Answers</h2><table class=\"keys-table\">{answers}</table>"
        "<p>Answering moves on to the next pair; &larr; previous / next &rarr; go back, and "
        "a new answer replaces the old one.</p>"
        f"{controls}"
        "<p class=\"hint\">You can stop at any time: your link brings you back here, to "
        "where you left off.</p></main>")
    return _page("Reader study", body, base, script=True)
