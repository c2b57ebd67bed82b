"""Reader viewer render times in headless Chromium, for 512 x 512 CT (issue 24, item 7).

Data flow: a synthetic 512 x 512 x 16 CT (int16 HU: body, organs, bone, noise) as an
nnU-Net raw dataset -> ``medlossy reader make`` (ratios 1 and 10, ``--stack 2``: five
slices per side) -> the reader app on loopback (uvicorn in a thread, as ``reader serve``) ->
Debian's chromium through Playwright, along two paths, each in a browser started for it
(empty cache, nothing compiled yet):

- a rater's: the private link (its start page, ``--read-s`` seconds on it, as a rater
  reads it: its practice viewer draws meanwhile), Begin, the first pair, then every other
  pair's page in turn, where a fixed script plays: wheel scrolling, window presets, zoom,
  pan drags, window (right-)drags, magnifier moves;
- ``--cold`` more times each, alternated, one fresh browser each: the link (start page,
  Begin, the first pair's first view) and a pair's link opened directly (the first page such
  a browser ever sees from the app is a pair: no start page before it).

The numbers are the page's own ``performance`` measures: ``medlossy-first-view``
(navigation start to the first frame drawn: page, the stack's part 1 with the pair's own
slice, window, draw) and ``medlossy-render`` (input event to its frame drawn), per action.
Each first view is waited for by the page's request for part 2 of its stack (asked for right
after that frame), seen from outside the page: evaluating anything in the page before that
would compile Playwright's own injected script (31 ms in a fresh browser, 9-12 ms on later
pages, traced) ahead of the frame and count it in the first view.
Medians, 95th percentiles and maxima on stdout (a Markdown table; the first view's rows say
which path), everything in ``--out`` JSON with the machine and the load.

    PYTHONPATH=src .venv/bin/python bench/reader_view.py [--pairs 6] [--cold 3] [--out x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
#: How long a pair's first view is waited for before the run is given up.
FIRST_VIEW_WAIT_S = 60
#: The first view's rows, by path (see the module's docstring).
START = "start page: link opened to page loaded (fresh browser)"
FIRST_PAIR = "first view: the rater's first pair (link, start page, Begin; fresh browser)"
FIRST_PAIR_REDIRECTED = ("first view: the rater's first pair (the link redirected to it, no "
                         "start page; fresh browser)")
LATER_PAIRS = "first view: the rater's later pairs"
DIRECT = "first view: direct pair link (fresh browser each, no start page)"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def make_ct(dataset: Path, slices: int = 16, size: int = 512) -> None:
    """A 512 x 512 CT with the structure windows care about (fat, organs, bone, air)."""
    import nibabel as nib

    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": 1,
        "file_ending": ".nii.gz"}))
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:slices, 0:size, 0:size].astype(np.float32)
    centre = size / 2
    body = ((x - centre) / 220) ** 2 + ((y - centre) / 170) ** 2 < 1
    organ = ((x - centre + 80) / 70) ** 2 + ((y - centre + 20) / 55 + z / 40) ** 2 < 1
    bone = ((x - centre) / 28) ** 2 + ((y - centre - 100) / 28) ** 2 < 1
    lung = ((x - centre - 110) / 60) ** 2 + ((y - centre + 40) / 70) ** 2 < 1
    values = np.full(x.shape, -1000.0, dtype=np.float32)
    values[body] = -90 + 10 * np.sin(x[body] / 7)
    values[organ & body] = 55
    values[lung & body] = -800
    values[bone] = 700 + 200 * np.cos(y[bone] / 5)
    values += body * rng.normal(0, 12, values.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(np.round(values).astype(np.int16).transpose(2, 1, 0),
                             np.diag([-0.7, -0.7, 2.5, 1.0])),
             dataset / "imagesTr" / "bench_001_0000.nii.gz")


def start_app(study: Path, database):
    """The app as ``reader serve`` runs it, on a free loopback port, in a thread."""
    import socket

    import uvicorn

    from medlossy.reader_study.app import create_app
    from medlossy.reader_study.server import deadline_protocol

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(study, database), host="127.0.0.1",
                                           port=port, log_level="warning",
                                           http=deadline_protocol(10.0)))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{port}"


def _take(page, name: str = "medlossy-render") -> list[float]:
    durations = page.evaluate("name => performance.getEntriesByName(name, 'measure')"
                              ".map(entry => entry.duration)", name)
    page.evaluate("name => performance.clearMeasures(name)", name)
    return durations


def _settle(page) -> None:
    """Wait two animation frames, so that every requested frame has been drawn."""
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => "
                  "requestAnimationFrame(done)))")


def _first_view(page, parts: list[str], navigate) -> dict[str, list[float]]:
    """Run ``navigate`` (a navigation to a pair's page), wait for its first view without
    touching the page (``parts``: the part-2 requests seen so far), read its timings."""
    count, deadline = len(parts), time.monotonic() + FIRST_VIEW_WAIT_S
    navigate()
    while len(parts) == count:
        if time.monotonic() > deadline:
            raise SystemExit(f"reader_view: {page.url}: no first view within "
                             f"{FIRST_VIEW_WAIT_S} s (its stack's part 1 not loaded?)")
        page.wait_for_timeout(5)
    page.wait_for_selector("#viewer[data-slice]")
    return {"first view": _take(page, "medlossy-first-view"),
            # Where the first view's time goes: the page itself, the stack's part 1 (its
            # header and the pair's own slice: what the first view waits for).
            "first view: page received": [page.evaluate(
                "performance.getEntriesByType('navigation')[0].responseEnd")],
            "first view: stack part 1 received": [page.evaluate(
                "performance.getEntriesByType('resource').find(e => e.name.includes("
                "'/stack/')).responseEnd")]}


def _watch_parts(page) -> list[str]:
    """The page's requests for part 2 of a stack, as the browser sends them."""
    parts: list[str] = []
    page.on("request", lambda request: request.url.endswith("?part=2") and
            parts.append(request.url))
    return parts


def open_link(page, link: str, read_s: float) -> dict[str, list[float]]:
    """A rater opens their link: the start page, ``read_s`` seconds reading it, then Begin
    to the first pair (an app without a start page redirects the link to that pair)."""
    parts = _watch_parts(page)
    times: dict[str, list[float]] = {}

    def navigate() -> None:
        page.goto(link)
        if "/p/" not in page.url:  # the start page
            times[START] = [page.evaluate(
                "performance.getEntriesByType('navigation')[0].loadEventEnd")]
            time.sleep(read_s)  # outside the page: nothing evaluated in it meanwhile
            page.locator("#begin").click()
    times |= _first_view(page, parts, navigate)
    return times


def play(page, url: str, parts: list[str]) -> dict[str, list[float]]:
    """Open one pair and play the script; the render times per action."""
    times = _first_view(page, parts, lambda: page.goto(url))
    times |= play_script(page)
    return times


def play_script(page) -> dict[str, list[float]]:
    """The fixed script on the pair shown; the render times per action."""
    times: dict[str, list[float]] = {}
    box = page.locator("#view-left").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    _take(page)

    def action(name: str, steps) -> None:
        for step in steps:
            step()
            _settle(page)
        times[name] = _take(page)
    action("scroll (wheel)", [lambda d=d: page.mouse.wheel(0, d) for d in (120,) * 2 +
                              (-120,) * 4 + (120,) * 2])
    action("scroll (keys)", [lambda k=k: page.keyboard.press(k) for k in
                             ("PageDown", "PageUp", "j", "k")])
    action("window preset", [lambda k=k: page.keyboard.press(k) for k in "56744"])
    action("zoom", [lambda k=k: page.keyboard.press(k) for k in "++--+"])
    action("pan (drag)", [page.mouse.down] + [lambda i=i: page.mouse.move(x + 8 * i, y + 5 * i)
                                               for i in range(1, 9)] + [page.mouse.up])
    action("window (right-drag)", [lambda: page.mouse.down(button="right")] +
           [lambda i=i: page.mouse.move(x + 8 * i, y - 4 * i) for i in range(1, 9)] +
           [lambda: page.mouse.up(button="right")])
    page.keyboard.press("m")
    _settle(page)
    _take(page)
    action("magnifier (move)", [lambda i=i: page.mouse.move(x - 6 * i, y - 6 * i)
                                for i in range(1, 9)])
    return times


def summary(values: list[float]) -> dict[str, object]:
    """n, median, p95 and max, and every value in the order taken (pair by pair: the first
    is the first page a fresh browser opens, assets not yet cached)."""
    array = np.asarray(values)
    return {"n": int(array.size), "median_ms": round(float(np.median(array)), 1),
            "p95_ms": round(float(np.percentile(array, 95)), 1),
            "max_ms": round(float(array.max()), 1),
            "values_ms": [round(float(value), 1) for value in array]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6, help="pairs opened (default: 6)")
    parser.add_argument("--cold", type=int, default=3,
                        help="fresh browsers opening the link (start page, Begin), and as "
                             "many opening a pair's link directly, alternated (default: 3)")
    parser.add_argument("--read-s", type=float, default=2.0,
                        help="seconds a rater spends on the start page before Begin "
                             "(default: 2)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    arguments = parser.parse_args()
    sys.path.insert(0, str(BENCH))
    from _common import busy_cores, machine
    from playwright.sync_api import sync_playwright

    from medlossy.cli.main import main as cli_main
    from medlossy.reader_study.db import Database
    from medlossy.reader_study.pairs import load_pairs

    scratch = Path(tempfile.mkdtemp(prefix="medlossy-reader-view-"))
    try:
        make_ct(scratch / "Dataset901_BenchCT")
        code = cli_main(["reader", "make", str(scratch / "Dataset901_BenchCT"), "--out",
                         str(scratch / "rs"), "--ratios", "1,10", "--per-pair",
                         str(arguments.pairs), "--quiet", "--workers", "2"])
        if code:
            raise SystemExit(code)
        study = scratch / "rs"
        database = Database(f"sqlite:///{scratch / 'answers.sqlite'}")
        token = database.setup([p["id"] for p in load_pairs(study)], 1)["rater1"]
        busy, before = busy_cores(), machine()  # the load before the browsers run
        server, base = start_app(study, database)
        times: dict[str, list[float]] = {}
        executable = shutil.which("chromium") or shutil.which("chromium-browser")
        link = f"{base}/r/{token}"
        with sync_playwright() as playwright:
            # A rater's path, in a browser that never saw the study.
            browser = playwright.chromium.launch(executable_path=executable, args=ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            opened = open_link(page, link, arguments.read_s)
            start_page = START in opened
            first = FIRST_PAIR if start_page else FIRST_PAIR_REDIRECTED
            for name, values in opened.items():
                times.setdefault({"first view": first}.get(name, name), []).extend(values)
            for name, values in play_script(page).items():
                times.setdefault(name, []).extend(values)
            parts = _watch_parts(page)
            for position in range(2, arguments.pairs + 1):
                for name, values in play(page, f"{link}/p/{position}", parts).items():
                    label = {"first view": LATER_PAIRS}.get(name, name)
                    times.setdefault(label, []).extend(values)
            browser.close()
            # Both cold paths again, alternated, each in a fresh browser: the link (its
            # start page, Begin, the first pair) and a pair's link opened directly.
            for position in range(1, arguments.cold + 1):
                for direct in (False, True):
                    browser = playwright.chromium.launch(executable_path=executable,
                                                         args=ARGS)
                    fresh = browser.new_page(viewport={"width": 1600, "height": 1000})
                    if direct:  # the pairs in turn (a study of --pairs pairs)
                        url = f"{link}/p/{(position - 1) % arguments.pairs + 1}"
                        cold = _first_view(fresh, _watch_parts(fresh),
                                           partial(fresh.goto, url))
                        times.setdefault(DIRECT, []).extend(cold["first view"])
                    else:
                        opened = open_link(fresh, link, arguments.read_s)
                        times[first].extend(opened["first view"])
                        if START in opened:
                            times[START].extend(opened[START])
                    browser.close()
        server.should_exit = True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results = {"machine": before, "busy_cores_before": round(busy, 2),
               "chromium": executable, "slice": [512, 512], "stack_slices": 5,
               "viewport": [1600, 1000], "pairs": arguments.pairs, "cold": arguments.cold,
               "read_s": arguments.read_s,
               "start_page": start_page,
               "actions": {name: summary(values) for name, values in times.items()}}
    print("| action | n | median ms | p95 ms | max ms |\n|---|---|---|---|---|")
    for name, row in results["actions"].items():
        print(f"| {name} | {row['n']} | {row['median_ms']} | {row['p95_ms']} | "
              f"{row['max_ms']} |")
    print(f"load average at start {results['machine']['load_average_at_start']}, busy cores "
          f"before {results['busy_cores_before']}, nproc {results['machine']['nproc']}",
          file=sys.stderr)
    if arguments.out:
        arguments.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
