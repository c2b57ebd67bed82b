"""The raters' web app: one blinded pair at a time, three answers, resumable.

Routes (``TOKEN`` is a rater's or the admin's private token):

- ``GET /r/TOKEN``: on to the first unanswered pair in the rater's own random order.
- ``GET /r/TOKEN/p/N``: the N-th pair of that order, with the answer given so far if any.
- ``GET /r/TOKEN/img/PAIR.png``: the pair's composite image (left | right).
- ``POST /r/TOKEN/answer``: ``pair``, ``answer`` (left / right / undecided), ``position``
  and the rater's ``form_token`` (cross-site request forgery guard); 303 to the next pair.
- ``GET /admin/TOKEN`` and ``GET /admin/TOKEN/answers.csv``: progress, links, export.

What a rater's requests can observe never depends on the key: pages differ only in the pair
id and position, every image of a given size has the same byte count and headers, and the
request handlers never read the key (only the admin export does).
"""

from __future__ import annotations

import csv
import html
import io
import random
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from medlossy.reader_study.assets import CSS, JS
from medlossy.reader_study.db import ANSWERS, Database, Rater
from medlossy.reader_study.pairs import load_key, load_pairs

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_PAIR = re.compile(r"^[0-9a-f]{32}$")
_FIELDS = {"pair", "answer", "position", "form_token"}
MAX_BODY_BYTES = 1024
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    # The token is in the URL: never send it to another site. ("no-referrer" would also
    # blank the Origin of the page's own POSTs, which the forgery check reads.)
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'none'; img-src 'self'; style-src 'self'; "
                                "script-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'"),
}
_LABELS = {"left": "Left better", "undecided": "Cannot decide", "right": "Right better"}
_KEYS = {"left": ("1", "\u2190"), "undecided": ("2", "\u2193", "Space"),
         "right": ("3", "\u2192")}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _page(title: str, body: str, *, script: bool = False) -> str:
    tail = '<script src="/static/rater.js"></script>' if script else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"referrer\" content=\"same-origin\">"
            f"<title>{html.escape(title)}</title>"
            "<link rel=\"stylesheet\" href=\"/static/rater.css\"></head>"
            f"<body>{body}{tail}</body></html>")


def _refusal(status: int, message: str) -> HTMLResponse:
    body = f"<main class=\"message\"><h1>{status}</h1><p>{html.escape(message)}</p></main>"
    return HTMLResponse(_page("Reader study", body), status_code=status,
                        headers=_SECURITY_HEADERS)


def create_app(study: str | Path, database: Database) -> FastAPI:
    """The app for the pair set in ``study`` with raters and answers in ``database``."""
    study = Path(study)
    pairs = load_pairs(study)
    pair_ids = sorted(pair["id"] for pair in pairs)
    images = {pair["id"]: study / "images" / f"{pair['id']}.png" for pair in pairs}
    database.setup(pair_ids, raters=0)
    orders: dict[int, list[str]] = {}

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def order_of(rater: Rater) -> list[str]:
        if rater.id not in orders:
            order = list(pair_ids)
            random.Random(rater.order_seed).shuffle(order)
            orders[rater.id] = order
        return orders[rater.id]

    def rater_for(token: str, role: str = "rater") -> Rater:
        rater = database.rater_by_token(token) if _TOKEN.match(token) else None
        if rater is None or rater.role != role:
            raise _Refused(404, "Unknown link. Ask the study's organiser for yours.")
        return rater

    def next_position(rater: Rater, after: int = 0) -> int | None:
        """1-based position of the first unanswered pair after ``after`` (wrapping round)."""
        order, answered = order_of(rater), database.answers_of(rater.id)
        for offset in range(len(order)):
            index = (after + offset) % len(order)
            if order[index] not in answered:
                return index + 1
        return None

    @app.exception_handler(_Refused)
    async def refused(_: Request, error: _Refused) -> HTMLResponse:
        return _refusal(error.status, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> HTMLResponse:
        return _refusal(error.status_code, "Not here." if error.status_code == 404
                        else str(error.detail))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        files = {"rater.css": (CSS, "text/css"), "rater.js": (JS, "text/javascript")}
        if name not in files:
            raise _Refused(404, "Not here.")
        text, media_type = files[name]
        return Response(text, media_type=media_type)

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/r/{token}")
    def start(token: str) -> Response:
        rater = rater_for(token)
        position = next_position(rater)
        target = f"/r/{token}/done" if position is None else f"/r/{token}/p/{position}"
        return RedirectResponse(target, status_code=303)

    @app.get("/r/{token}/p/{position}")
    def show(token: str, position: str) -> HTMLResponse:
        rater = rater_for(token)
        order = order_of(rater)
        if not position.isdigit() or not 1 <= int(position) <= len(order):
            raise _Refused(404, "No such pair.")
        number = int(position)
        pair_id = order[number - 1]
        answers = database.answers_of(rater.id)
        return HTMLResponse(_rating_page(token, rater, pair_id, number, len(order),
                                         len(answers), answers.get(pair_id)))

    @app.get("/r/{token}/img/{name}")
    def image(token: str, name: str) -> Response:
        rater_for(token)
        pair_id = name.removesuffix(".png")
        if not name.endswith(".png") or not _PAIR.match(pair_id) or pair_id not in images:
            raise _Refused(404, "No such image.")
        return Response(images[pair_id].read_bytes(), media_type="image/png")

    @app.post("/r/{token}/answer")
    async def answer(token: str, request: Request) -> Response:
        rater = rater_for(token)
        _check_origin(request)
        fields = await _form(request)
        form_token = fields.get("form_token", "")
        if not _constant_time_equal(form_token, rater.form_token):
            raise _Refused(403, "This form has expired or did not come from the study's page; "
                                "reload the page and answer again.")
        if set(fields) != _FIELDS:
            raise _Refused(400, f"Expected the fields {sorted(_FIELDS)}.")
        pair_id, value, position = fields["pair"], fields["answer"], fields["position"]
        if value not in ANSWERS:
            raise _Refused(400, f"The answer must be one of {', '.join(ANSWERS)}.")
        order = order_of(rater)
        if not position.isdigit() or not 1 <= int(position) <= len(order):
            raise _Refused(400, "Bad position.")
        if not _PAIR.match(pair_id) or pair_id not in images:
            raise _Refused(404, "No such pair.")
        database.record(rater.id, pair_id, value)
        following = next_position(rater, after=int(position))
        target = f"/r/{token}/done" if following is None else f"/r/{token}/p/{following}"
        return RedirectResponse(target, status_code=303)

    @app.get("/r/{token}/done")
    def done(token: str) -> HTMLResponse:
        rater = rater_for(token)
        count, total = len(database.answers_of(rater.id)), len(pair_ids)
        remaining = next_position(rater)
        more = ("" if remaining is None else
                f"<p><a href=\"/r/{token}/p/{remaining}\">{total - count} pairs still "
                "unanswered</a></p>")
        body = (f"<main class=\"message\"><h1>Thank you</h1><p>You answered {count} of "
                f"{total} pairs.</p>{more}<p><a href=\"/r/{token}/p/1\">Review your "
                "answers</a> (a new answer replaces the old one).</p></main>")
        return HTMLResponse(_page("Reader study: done", body))

    @app.get("/admin/{token}")
    def admin(token: str, request: Request) -> HTMLResponse:
        rater_for(token, role="admin")
        base = str(request.base_url).rstrip("/")
        rows = "".join(
            f"<tr><td>{html.escape(rater.name)}</td><td>{count} / {len(pair_ids)}</td>"
            f"<td>{html.escape(last or '-')}</td>"
            f"<td><code>{html.escape(base)}/r/{html.escape(rater.token)}</code></td></tr>"
            for rater, count, last in database.progress())
        body = ("<main class=\"message admin\"><h1>Reader study: administration</h1>"
                f"<p>{len(pair_ids)} pairs.</p><table><tr><th>rater</th><th>answered</th>"
                f"<th>last answer (UTC)</th><th>private link</th></tr>{rows}</table>"
                f"<p><a href=\"/admin/{token}/answers.csv\">Export answers with the key "
                "(CSV)</a></p></main>")
        return HTMLResponse(_page("Reader study: administration", body))

    @app.get("/admin/{token}/answers.csv")
    def export(token: str) -> Response:
        rater_for(token, role="admin")
        key = load_key(study)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["rater", "pair", "answer", "answered_at", "revisions", "dataset",
                         "case", "channel", "slice", "left_ratio", "right_ratio",
                         "less_compressed"])
        for row in database.all_answers():
            entry = key[row["pair"]]
            writer.writerow([row["rater"], row["pair"], row["answer"], row["answered_at"],
                             row["revisions"], entry["dataset"], entry["case"],
                             entry["channel"], entry["slice"], entry["left"]["ratio"],
                             entry["right"]["ratio"], entry["less_compressed"]])
        return Response(buffer.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": "attachment; filename=answers.csv"})

    return app


def _constant_time_equal(given: str, expected: str) -> bool:
    import hmac

    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def _check_origin(request: Request) -> None:
    """Browsers send Origin on POSTs: it must be this server (defence besides the form token)."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
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
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Refused(413, "Request too large.")
    try:
        parsed = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                          max_num_fields=len(_FIELDS) + 1)
    except (UnicodeDecodeError, ValueError):
        raise _Refused(400, "Malformed form.") from None
    if any(len(values) != 1 for values in parsed.values()):
        raise _Refused(400, "Each field must appear once.")
    return {name: values[0] for name, values in parsed.items()}


def _button(value: str, label: str, *, chosen: bool) -> str:
    keys = " / ".join(f"<kbd>{key}</kbd>" for key in _KEYS[value])
    css = ' class="chosen"' if chosen else ""
    return (f'<button type="submit" name="answer" value="{value}" id="answer-{value}"{css}>'
            f'{label}<span class="keys">{keys}</span></button>')


def _rating_page(token: str, rater: Rater, pair_id: str, number: int, total: int,
                 answered: int, current: str | None) -> str:
    buttons = "".join(_button(value, label, chosen=value == current)
                      for value, label in _LABELS.items())
    previous = (f"<a href=\"/r/{token}/p/{number - 1}\">&larr; previous</a>" if number > 1
                else "<span></span>")
    following = (f"<a href=\"/r/{token}/p/{number + 1}\">next &rarr;</a>" if number < total
                 else "<span></span>")
    body = (
        "<header><span class=\"title\">Reader study</span>"
        f"<span class=\"progress\" id=\"progress\">{number} / {total}</span>"
        f"<span class=\"answered\">{answered} answered</span></header>"
        "<main class=\"rating\">"
        "<p class=\"question\">Which image shows the anatomy with better quality?</p>"
        f"<figure><img id=\"pair\" src=\"/r/{token}/img/{pair_id}.png\" "
        "alt=\"two versions of one CT or MR slice, side by side\">"
        "<figcaption><span>left</span><span>right</span></figcaption></figure>"
        f"<form method=\"post\" action=\"/r/{token}/answer\" id=\"answer-form\">"
        f"<input type=\"hidden\" name=\"pair\" value=\"{pair_id}\">"
        f"<input type=\"hidden\" name=\"position\" value=\"{number}\">"
        f"<input type=\"hidden\" name=\"form_token\" value=\"{html.escape(rater.form_token)}\">"
        f"<div class=\"buttons\">{buttons}</div></form>"
        f"<nav>{previous}<span class=\"hint\">You can stop at any time: this link brings you "
        f"back where you left off.</span>{following}</nav></main>")
    return _page(f"Reader study {number} / {total}", body, script=True)
