"""``medlossy reader make | serve | analyze``: one thin function per command."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import socket
import sys
from pathlib import Path

from medlossy.cli.types import positive_int
from medlossy.errors import MedlossyError
from medlossy.reader_study.designs import DEFAULT_DESIGN, DESIGNS, FLICKER_MS, FLICKER_MS_RANGE
from medlossy.terminal import colours

DEFAULT_RATIOS = "1,2,5,10,20,50"
DEFAULT_DB = "answers.sqlite"
#: Seconds a client has to send a whole request (a page request or a 1 KiB answer).
REQUEST_TIMEOUT_S = 10.0
#: Seconds an idle connection is kept open after a response (uvicorn's default).
KEEP_ALIVE_S = 5


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        message = f"not a comma-separated list of numbers: {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _require(*modules: str) -> None:
    """The web app and the images need the ``reader`` extra; say so in one line."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MedlossyError(None, f"the reader study needs {', '.join(missing)}: "
                                  "pip install 'medlossy[reader]'")


def _database_url(arguments: argparse.Namespace) -> str:
    return arguments.db or f"sqlite:///{Path(arguments.study) / DEFAULT_DB}"


def _study_folder(study: str) -> None:
    """``serve`` and ``analyze`` need a folder made by ``reader make``: say so in one line."""
    if not (Path(study) / "pairs.json").is_file():
        raise MedlossyError(study, "not a reader study folder (make one with "
                                   "`medlossy reader make`)")


def _check_port(host: str, port: int) -> None:
    """Bind and release ``host:port`` as uvicorn will (SO_REUSEADDR), so a port in use is
    refused before raters are created and their links printed."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        raise MedlossyError(None, f"cannot listen on {host} port {port}: "
                                  f"{error.strerror or error}") from None


def _rater_count(count: int) -> str:
    return f"{count} rater{'' if count == 1 else 's'}"


def _private() -> None:
    """Every file this process creates (study folder, database, -wal, -shm, report) is
    0600 / 0700: the key and the answers unblind the study."""
    os.umask(0o077)


def make(arguments: argparse.Namespace) -> None:
    _require("PIL")
    _private()
    from medlossy.reader_study.pairs import PairSettings, make_pairs
    from medlossy.reader_study.windows import parse_window

    flicker = DESIGNS[arguments.design].flicker
    if arguments.flicker_ms is not None and not flicker:
        raise MedlossyError(None, f"--flicker-ms is for the flicker design, not "
                                  f"{arguments.design}")
    if arguments.stores is not None and not Path(arguments.stores).is_dir():
        raise MedlossyError(arguments.stores, "no such folder (--stores)")
    flicker_ms = FLICKER_MS if arguments.flicker_ms is None else arguments.flicker_ms
    settings = PairSettings(ratios=arguments.ratios, per_pair=arguments.per_pair,
                            window=parse_window(arguments.window), seed=arguments.seed,
                            max_images=arguments.max_images, stack=arguments.stack,
                            design=arguments.design, flicker_ms=flicker_ms)
    study = make_pairs(arguments.input, arguments.out, settings, stores=arguments.stores,
                       workers=arguments.workers, show_progress=not arguments.quiet)
    if not arguments.quiet:
        print(f"{arguments.out}: {study['pairs']} pairs from {', '.join(study['datasets'])} "
              f"({len(study['ratio_pairs'])} ratio pairs x {study['per_pair']} per dataset), "
              f"design {study['design']}, window {study['window']}; "
              f"key in {Path(arguments.out) / 'key.json'}",
              file=sys.stderr)


def serve(arguments: argparse.Namespace) -> None:
    _require("fastapi", "uvicorn")
    import uvicorn

    from medlossy.reader_study.app import create_app, public_base
    from medlossy.reader_study.db import Database
    from medlossy.reader_study.pairs import load_pairs, study_design, study_seed
    from medlossy.reader_study.server import deadline_protocol

    if arguments.raters < 1:
        raise MedlossyError(None, f"--raters must be at least 1, got {arguments.raters}")
    _study_folder(arguments.study)
    _private()
    public_base(arguments.public_url)  # a bad URL is refused before anything is created
    _check_port(arguments.host, arguments.port)
    database = Database(_database_url(arguments))
    issued = database.setup([pair["id"] for pair in load_pairs(arguments.study)],
                            arguments.raters, study_seed=study_seed(arguments.study),
                            design=study_design(arguments.study)[0])
    app = create_app(arguments.study, database, public_url=arguments.public_url,
                     session_cookie=arguments.session_cookie)
    base = _base(arguments)
    print(f"Reader study: {len(database.pair_ids())} pairs, "
          f"{_rater_count(len(database.raters('rater')))}.")
    _print_links(issued, base)
    if not _loopback(arguments.host) and not (arguments.public_url or "").startswith("https:"):
        print("note: links travel in plain HTTP; put the server behind an HTTPS proxy and "
              "pass --public-url https://...", file=sys.stderr)
    sys.stdout.flush()
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="warning",
                server_header=False, date_header=False, proxy_headers=False,
                http=deadline_protocol(arguments.request_timeout),
                timeout_keep_alive=KEEP_ALIVE_S, use_colors=colours(sys.stderr))


def _base(arguments: argparse.Namespace) -> str:
    shown_host = f"[{arguments.host}]" if ":" in arguments.host else arguments.host
    return (arguments.public_url or f"http://{shown_host}:{arguments.port}").rstrip("/")


def _print_links(issued: dict[str, str], base: str) -> None:
    """The private links of raters created now: shown once, the database keeps hashes only."""
    if not issued:
        print("No new raters: their links were printed when they were created; "
              "`medlossy reader link STUDY NAME` issues a new one.")
        return
    print("Private links (shown only now: keep them secret and safe):")
    for name, token in issued.items():
        kind = "admin (progress, export)" if name == "admin" else name
        path = "admin" if name == "admin" else "r"
        print(f"  {kind}: {base}/{path}/{token}")


def link(arguments: argparse.Namespace) -> None:
    from medlossy.reader_study.db import Database

    _private()
    database = Database(_database_url(arguments))
    token = database.reissue(arguments.name)
    print(f"New private link for {arguments.name} (the old one and its sessions no longer "
          "work):")
    path = "admin" if arguments.name == "admin" else "r"
    print(f"  {_base(arguments)}/{path}/{token}")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def analyze(arguments: argparse.Namespace) -> None:
    _require("sklearn", "krippendorff", "statsmodels")
    _study_folder(arguments.study)
    _private()
    from medlossy.reader_study.analysis import analyze_study, result_lines
    from medlossy.reader_study.db import Database, sqlite_path

    url = _database_url(arguments)
    if not sqlite_path(url).is_file():  # opening it would create an empty one
        raise MedlossyError(arguments.study, f"no answers yet (no database {sqlite_path(url)})")
    database = Database(url)
    out = Path(arguments.out or Path(arguments.study) / "report")
    result = analyze_study(arguments.study, database, out,
                           include_identical=arguments.include_identical)
    print(f"{out}: {result['answers']} answers from {_rater_count(result['raters'])}; "
          f"{', '.join(sorted(result['files']))}")
    print("\n".join(result_lines(result)))


def add_reader_parser(subparsers) -> None:
    """The ``reader`` command group, on the main parser's subparsers."""
    reader = subparsers.add_parser(
        "reader", help="reader study: blinded pairs, a web app for raters, analysis",
        description="The study's reader study: make blinded image pairs, serve them to raters "
                    "in the browser, analyse the answers.")
    sub = reader.add_subparsers(dest="reader_command", required=True, metavar="READER_COMMAND")

    make_parser = sub.add_parser(
        "make", help="make the blinded pairs from nnU-Net raw dataset(s)",
        description="Every pair of the ratios, N random axial slices per pair and dataset, "
                    "both images from the same slice, the less compressed one randomly left or "
                    "right, one composite PNG per pair; the key stays in OUT/key.json.")
    make_parser.add_argument("input", help="an nnU-Net raw dataset folder, or a folder of them")
    make_parser.add_argument("--out", required=True, help="study folder to create")
    make_parser.add_argument("--ratios", type=_ratios, default=_ratios(DEFAULT_RATIOS),
                             help=f"comma-separated, 1 = lossless (default: {DEFAULT_RATIOS})")
    make_parser.add_argument("--per-pair", type=int, default=10,
                             help="slices per ratio pair per dataset (default: 10)")
    make_parser.add_argument("--window", default="abdomen",
                             help="CT window shown first: abdomen, soft-tissue, liver, brain, "
                                  "lung, bone, auto or WIDTH/LEVEL (default: abdomen); MR "
                                  "always uses auto")
    make_parser.add_argument("--seed", type=int, default=0,
                             help="random seed of the pairs and of each rater's order "
                                  "(default: 0)")
    make_parser.add_argument("--stack", type=int, default=2,
                             help="slices on each side of a pair's slice that raters can "
                                  "scroll through (0 to 10; default: 2)")
    make_parser.add_argument("--design", choices=list(DESIGNS), default=DEFAULT_DESIGN,
                             help="side-by-side: every pair of the ratios, which is better?; "
                                  "flicker: the least compressed ratio and another alternate "
                                  "in one viewport, is there a flicker?; 2afc: the least "
                                  "compressed ratio and another side by side, which is "
                                  f"compressed? (default: {DEFAULT_DESIGN})")
    make_parser.add_argument("--flicker-ms", type=int, default=None,
                             help="flicker: how long each image stays on screen, "
                                  f"{FLICKER_MS_RANGE[0]} to {FLICKER_MS_RANGE[1]} ms "
                                  f"(default: {FLICKER_MS})")
    make_parser.add_argument("--stores", default=None,
                             help="reuse stores of an earlier run (e.g. a study output folder)")
    make_parser.add_argument("--max-images", type=int, default=None,
                             help="draw slices from at most this many images per dataset "
                                  "(chosen at random; default: all)")
    make_parser.add_argument("--workers", type=positive_int, default=None,
                             help="processes for compression (default: all cores)")
    make_parser.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    make_parser.set_defaults(handler=make)

    serve_parser = sub.add_parser("serve", help="serve the pairs to raters in the browser")
    serve_parser.add_argument("study", help="folder made by `medlossy reader make`")
    serve_parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    serve_parser.add_argument("--host", default="127.0.0.1",
                              help="address to listen on (default: 127.0.0.1)")
    serve_parser.add_argument("--db", default=None,
                              help=f"database URL (default: sqlite:///STUDY/{DEFAULT_DB})")
    serve_parser.add_argument("--raters", type=int, default=2,
                              help="raters to have links for (default: 2; more can be added "
                                   "later, never removed)")
    serve_parser.add_argument("--public-url", default=None,
                              help="the address raters use, behind a reverse proxy (e.g. "
                                   "https://reader.example.org/study): links, redirects and "
                                   "the Origin check use it instead of the Host header")
    serve_parser.add_argument("--session-cookie", action="store_true",
                              help="exchange the link's token for a session cookie on the "
                                   "first visit and redirect to token-free URLs")
    serve_parser.add_argument("--request-timeout", type=_seconds, default=REQUEST_TIMEOUT_S,
                              metavar="SECONDS",
                              help="close a connection whose request has not arrived whole "
                                   "this long after it opened or began; idle kept-alive "
                                   f"connections close after {KEEP_ALIVE_S} s")
    serve_parser.set_defaults(handler=serve)

    link_parser = sub.add_parser(
        "link", help="issue a new private link for a rater (or the admin)",
        description="The database keeps only hashes of the tokens, so a lost link cannot be "
                    "shown again: this issues a new one; the old link stops working, the "
                    "rater's answers are kept.")
    link_parser.add_argument("study", help="folder made by `medlossy reader make`")
    link_parser.add_argument("name", help="rater1, rater2, ... or admin")
    link_parser.add_argument("--db", default=None,
                             help=f"database URL (default: sqlite:///STUDY/{DEFAULT_DB})")
    link_parser.add_argument("--public-url", default=None, help="as given to serve")
    link_parser.add_argument("--host", default="127.0.0.1", help="as given to serve")
    link_parser.add_argument("--port", type=int, default=8000, help="as given to serve")
    link_parser.set_defaults(handler=link)

    analyze_parser = sub.add_parser(
        "analyze", help="score the answers, plot, export CSV",
        description="Mean score per ratio pair with 95% intervals (raters and images random), "
                    "the ratio and PSNR at 50% detection, a Bradley-Terry quality scale and "
                    "rater agreement, printed and written to the report folder.")
    analyze_parser.add_argument("study", help="folder made by `medlossy reader make`")
    analyze_parser.add_argument("--out", default=None, help="report folder (default: STUDY/report)")
    analyze_parser.add_argument("--db", default=None,
                                help=f"database URL (default: sqlite:///STUDY/{DEFAULT_DB})")
    analyze_parser.add_argument("--include-identical", action="store_true",
                                help="score pairs whose two images are pixel-identical too "
                                     "(left out by default, and counted)")
    analyze_parser.set_defaults(handler=analyze)
