"""End to end in headless Chromium: a rater opens the private link, answers every pair with
the keyboard and the buttons, stops and resumes, and every answer reaches the database; the
viewer windows, zooms, pans, magnifies and scrolls both sides in step, from the 16-bit stack.

Uses Debian's chromium (installed here with apt-get when missing and running as root) through
Playwright; Playwright's own browser download is never used. The viewer test keeps a
screenshot of every step in a folder it prints (MEDLOSSY_SCREENSHOTS=DIR to choose it); set
MEDLOSSY_SCREENSHOT=PATH to save the rating page as shown (docs/reader-study.png is made
that way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_reader_app import new_database, running_server
from test_reader_designs import FLICKER_MS, make_design_study
from test_reader_pairs import demo_study

from medlossy.reader_study.pairs import load_key, load_pairs
from medlossy.reader_study.stacks import read_stack

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq",
                                                    "chromium"]):
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=900,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (subprocess.SubprocessError, OSError):
            return None
    return shutil.which("chromium")


@contextmanager
def launched_chromium() -> Iterator:
    """Debian's Chromium driven by Playwright (the test skips without either)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium: not installed and apt-get could not install it")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser():
    with launched_chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return demo_study(tmp_path_factory)


def test_a_rater_completes_a_session_in_the_browser(browser, study, tmp_path):
    database, (rater, _), _ = new_database(study, tmp_path)
    total = len(load_pairs(study))
    keys = ["1", "ArrowRight", "2", "ArrowLeft", " ", "3", "ArrowDown"]
    with running_server(study, database) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and
                errors.append(message.text))
        begin(page, f"{base}/r/{rater.token}")
        assert page.locator("#progress").inner_text() == f"1 / {total}"
        page.wait_for_selector("#viewer[data-slice]")
        assert not page.locator("#pair").is_visible()  # the viewer replaced the composite
        if os.environ.get("MEDLOSSY_SCREENSHOT"):
            page.goto(f"{base}/r/{rater.token}/p/12")
            page.wait_for_selector("#viewer[data-slice]")
            page.screenshot(path=os.environ["MEDLOSSY_SCREENSHOT"])
            begin(page, f"{base}/r/{rater.token}")
        for step in range(total):
            assert page.locator("#progress").inner_text() == f"{step + 1} / {total}"
            if step == 4:  # stop: close the tab, open the link again later
                page.close()
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                begin(page, f"{base}/r/{rater.token}")
                assert page.locator("#progress").inner_text() == f"{step + 1} / {total}"
            with page.expect_navigation():
                if step % 4 == 3:
                    page.locator("#answer-right").click()
                else:
                    page.keyboard.press(keys[step % len(keys)])
        assert "Thank you" in page.locator("h1").inner_text()
        assert f"You answered {total} of {total} pairs" in page.content()
        assert errors == []
        page.close()
    answers = database.all_answers()
    assert len(answers) == total
    assert {a["answer"] for a in answers} == {"left", "right", "undecided"}
    assert {a["pair"] for a in answers} == {p["id"] for p in load_pairs(study)}


def begin(page, link: str) -> None:
    """Open a rater's link (its start page) and follow its Begin (or Continue) link."""
    page.goto(link)
    with page.expect_navigation():
        page.locator("#begin").click()


def _wait_until(page, expression: str, timeout: float = 10.0) -> None:
    """Poll ``expression`` in the page (``wait_for_function`` evaluates its predicate with
    eval, which the page's CSP refuses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
        time.sleep(0.02)


def _state(page) -> dict[str, float | str]:
    """The viewer's state as last drawn, once the frames asked for so far are drawn."""
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => "
                  "requestAnimationFrame(done)))")
    data = page.locator("#viewer").evaluate("viewer => Object.assign({}, viewer.dataset)")
    return {k: (v if k in ("preset", "magnifier") else float(v)) for k, v in data.items()}


def _check_lens_ring(page, x: float, y: float) -> None:
    """The magnifier's green ring circles the disc around the pointer (canvas pixels), on
    both sides, whatever the zoom: green at the disc's edge, nowhere twice as far out."""
    for side in ("left", "right"):
        scale = page.locator(f"#view-{side}").evaluate(
            "canvas => canvas.width / canvas.clientWidth")
        cx, cy, radius = x * scale, y * scale, 80 * scale  # the viewer's LENS
        assert _green(page, side, cx + radius, cy) and _green(page, side, cx - radius, cy)
        assert not _green(page, side, cx + 2 * radius, cy)
        assert not _green(page, side, cx - 2 * radius, cy)


def _green(page, side: str, x: float, y: float) -> bool:
    """Any of the five pixels of row y around x is the ring's green (grey images are not)."""
    return page.locator(f"#view-{side}").evaluate(
        "(canvas, at) => Array.from(canvas.getContext('2d').getImageData(at[0] - 2, at[1], 5, "
        "1).data).some((value, i, data) => i % 4 === 1 && value > 150 && data[i - 1] < 150)",
        [int(x), int(y)])


def _grey(page, side: str, x: float, y: float) -> int:
    """The grey level drawn at canvas pixel (x, y) of one side."""
    return page.locator(f"#view-{side}").evaluate(
        "(canvas, at) => canvas.getContext('2d').getImageData(at[0], at[1], 1, 1).data[0]",
        [int(x), int(y)])


def _expected(header, codes: np.ndarray, state: dict, side: int, row: int, column: int) -> int:
    value = codes[side, int(state["slice"]), row, column] * header.slope + header.intercept
    low = state["level"] - state["width"] / 2
    return int(np.clip(np.round((value - low) * 255 / state["width"]), 0, 255))


def _check_pixels(page, header, codes: np.ndarray) -> None:
    """At the centre of each canvas, the drawn grey is the windowed 16-bit value (the image
    pixel under it: the canvas centre is image point (columns / 2, rows / 2) - pan)."""
    state = _state(page)
    canvas = page.locator("#view-left").evaluate("c => [c.width, c.height]")
    scale = min(canvas[0] / header.columns, canvas[1] / header.rows) * state["zoom"]
    assert scale >= 2, "zoom in first: nearest-neighbour pixels"
    column = int(header.columns / 2 - state["panX"])
    row = int(header.rows / 2 - state["panY"])
    x = canvas[0] / 2 + (column + 0.5 - header.columns / 2 + state["panX"]) * scale
    y = canvas[1] / 2 + (row + 0.5 - header.rows / 2 + state["panY"]) * scale
    for index, side in enumerate(("left", "right")):
        expected = _expected(header, codes, state, index, row, column)
        assert abs(_grey(page, side, x, y) - expected) <= 1, (side, state)


def _measures(page, name: str) -> list[float]:
    return page.evaluate("name => performance.getEntriesByName(name, 'measure')"
                         ".map(entry => entry.duration)", name)


@pytest.fixture
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MEDLOSSY_SCREENSHOTS") or
                  tmp_path_factory.mktemp("reader-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_viewer_windows_zooms_and_scrolls_both_sides_in_step(browser, study, tmp_path,
                                                                  screenshots, capsys):
    database, (rater, _), _ = new_database(study, tmp_path)
    key = load_key(study)
    with running_server(study, database) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and
                errors.append(message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))
        ct = next(n for n in range(1, 13) if key[_pair_at(page, base, rater, n)]["modality"]
                  == "CT")
        opened = time.monotonic()
        page.goto(f"{base}/r/{rater.token}/p/{ct}")
        page.wait_for_selector("#viewer[data-slice]")
        pair_id = page.locator("input[name=pair]").get_attribute("value")
        header, codes = read_stack(study / "stacks" / f"{pair_id}.bin")
        assert not page.locator("#pair").is_visible()  # the 8-bit PNG is not what is shown
        state = _state(page)
        assert state["slice"] == header.centre and state["zoom"] == 1
        assert (state["width"], state["level"]) == header.windows[0]
        shots = []

        def shot(name: str) -> None:
            path = screenshots / f"{len(shots) + 1:02d}-{name}.png"
            page.screenshot(path=path)
            shots.append(path)
        shot("first-view")
        page.keyboard.press("+")  # zoom: keys
        page.keyboard.press("=")
        assert _state(page)["zoom"] == 4
        _check_pixels(page, header, codes)
        shot("zoom-4x")
        for key_name, index in (("5", 2), ("6", 3), ("7", 4), ("4", 1)):  # presets by key
            page.keyboard.press(key_name)
            state = _state(page)
            assert (state["width"], state["level"]) == header.windows[index]
            _check_pixels(page, header, codes)
        page.locator("#preset-5").click()  # ... and by button: lung
        assert _state(page)["preset"] == "lung"
        _check_pixels(page, header, codes)
        shot("lung-window")
        page.keyboard.press("Shift+ArrowRight")  # window by keys; no answer is sent
        page.keyboard.press("Shift+ArrowUp")
        state = _state(page)
        assert state["width"] > header.windows[2][0] and state["level"] > header.windows[2][1]
        assert state["preset"] == "custom" and database.all_answers() == []
        _check_pixels(page, header, codes)
        page.locator("#preset-4").click()
        box = page.locator("#view-left").bounding_box()
        centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.move(*centre)
        page.mouse.wheel(0, 120)  # scrolling: wheel and keys, both sides one slice
        _wait_until(page, f"document.getElementById('viewer').dataset.slice == "
                          f"{header.centre + 1}")
        _check_pixels(page, header, codes)
        shot("next-slice")
        page.keyboard.press("PageUp")
        page.keyboard.press("PageUp")
        assert _state(page)["slice"] == header.centre - 1
        _check_pixels(page, header, codes)
        page.keyboard.press("j")
        assert _state(page)["slice"] == header.centre
        page.mouse.down()  # drag: pan, the same on both sides
        page.mouse.move(centre[0] + 60, centre[1] + 30, steps=4)
        page.mouse.up()
        state = _state(page)
        assert state["panX"] > 0 and state["panY"] > 0
        _check_pixels(page, header, codes)
        shot("panned")
        before = state["width"]
        page.mouse.move(*centre)
        page.mouse.down(button="right")  # right-drag: window width (horizontal)
        page.mouse.move(centre[0] + 80, centre[1], steps=4)
        page.mouse.up(button="right")
        assert _state(page)["width"] > before
        _check_pixels(page, header, codes)
        page.keyboard.press("m")  # magnifier, drawn on both sides at the same place
        page.mouse.move(centre[0] - 40, centre[1] - 40)
        page.mouse.move(centre[0] - 30, centre[1] - 30)
        assert _state(page)["magnifier"] == "on"
        assert _state(page)["zoom"] == 4
        shot("magnifier")
        _check_lens_ring(page, centre[0] - 30 - box["x"], centre[1] - 30 - box["y"])
        for _ in range(4):
            page.locator("#zoom-in").click()
        assert _state(page)["zoom"] == 8  # at most 8x
        page.keyboard.press("0")
        state = _state(page)
        assert (state["zoom"], state["panX"], state["slice"]) == (1, 0, header.centre)
        first_view = _measures(page, "medlossy-first-view")
        renders = _measures(page, "medlossy-render")
        assert len(first_view) == 1 and len(renders) >= 15
        with page.expect_navigation():
            page.keyboard.press("1")
        waited_ms = (time.monotonic() - opened) * 1000
        assert errors == []
        page.close()
    (answer,) = database.all_answers()
    assert answer["pair"] == pair_id and 0 < answer["response_ms"] < waited_ms
    with capsys.disabled():
        print(f"\nviewer screenshots: {screenshots} ({len(shots)}); first view "
              f"{first_view[0]:.0f} ms, renders median {np.median(renders):.1f} ms, max "
              f"{max(renders):.1f} ms ({len(renders)})", file=sys.stderr)


def test_the_first_view_waits_for_the_pairs_own_slice_only(browser, study, tmp_path):
    """The page asks for its stack's part 1 (the header and the pair's own slice) once,
    preloaded from its head, for part 2 (the other slices) only once the first view is
    drawn, and never for the composite PNG; scrolling then reaches the other slices
    (issue 24, item 7). Before, the page fetched the composite beside the whole stack, from
    its last script, and the first view waited for nearly all of it."""
    database, (rater, _), _ = new_database(study, tmp_path)
    with running_server(study, database) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{base}/r/{rater.token}/p/3")
        page.wait_for_selector("#viewer[data-slice]")
        _wait_until(page, "performance.getEntriesByType('resource')"
                          ".some(entry => entry.name.endsWith('?part=2'))")
        parts = page.evaluate(
            "() => performance.getEntriesByType('resource')"
            ".filter(entry => entry.name.includes('/stack/'))"
            ".map(entry => [entry.name.split('?')[1], entry.startTime, entry.responseEnd])")
        (first_view,) = _measures(page, "medlossy-first-view")
        assert [part for part, _, _ in parts] == ["part=1", "part=2"]
        assert parts[0][2] <= first_view <= parts[1][1]  # part 2 asked for after the view
        stacks = [url.split("/stack/")[1] for url in requested if "/stack/" in url]
        assert [name.split("?")[1] for name in stacks] == ["part=1", "part=2"]
        assert page.evaluate(  # part 1 is the head's preload, taken over by the script
            "() => performance.getEntriesByType('resource').find(entry => "
            "entry.name.endsWith('?part=1')).initiatorType") == "link"
        assert not [url for url in requested if "/img/" in url]
        centre = int(_state(page)["slice"])
        page.keyboard.press("PageDown" if centre == 0 else "PageUp")
        assert _state(page)["slice"] != centre  # drawn from part 2
        assert errors == []
        page.close()


def _pair_at(page, base: str, rater, position: int) -> str:
    page.goto(f"{base}/r/{rater.token}/p/{position}")
    return page.locator("input[name=pair]").get_attribute("value")


def test_without_its_stack_the_page_shows_the_composite_image(browser, study, tmp_path):
    database, (rater, _), _ = new_database(study, tmp_path)
    with running_server(study, database) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.route("**/stack/*", lambda route: route.fulfill(status=404, body=""))
        page.goto(f"{base}/r/{rater.token}/p/1")
        _wait_until(page, "document.getElementById('pair').naturalWidth > 0")
        assert page.locator("#pair").is_visible()
        with page.expect_navigation():
            page.keyboard.press("3")
        page.close()
    (answer,) = database.all_answers()
    assert answer["answer"] == "right" and answer["response_ms"] is not None


def test_the_viewer_shows_mr_with_percentile_presets(browser, study, tmp_path):
    database, (rater, _), _ = new_database(study, tmp_path)
    key = load_key(study)
    with running_server(study, database) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        mr = next(n for n in range(1, 13) if key[_pair_at(page, base, rater, n)]["modality"]
                  == "MR")
        page.goto(f"{base}/r/{rater.token}/p/{mr}")
        page.wait_for_selector("#viewer[data-slice]")
        pair_id = page.locator("input[name=pair]").get_attribute("value")
        header, codes = read_stack(study / "stacks" / f"{pair_id}.bin")
        assert page.locator("#preset-4").inner_text() == "0.5-99.5 %"
        for preset in ("+", "+", "7", "5"):
            page.keyboard.press(preset)
        state = _state(page)
        assert (state["width"], state["level"]) == header.windows[2]
        _check_pixels(page, header, codes)
        page.close()


def _flicker_sample(page, x: int, y: int) -> tuple[int, int]:
    """(phase shown, grey at canvas pixel (x, y)), read in one task so that they match."""
    return tuple(page.evaluate(
        "at => { const canvas = document.getElementById('view-flicker');"
        " const grey = canvas.getContext('2d').getImageData(at[0], at[1], 1, 1).data[0];"
        " return [Number(document.getElementById('viewer').dataset.phase), grey]; }",
        [x, y]))


@contextmanager
def _design_page(browser, tmp_path_factory, tmp_path: Path, design: str):
    """A rater's first page of a ``design`` study, served, waited for its viewer; yields
    (study, database, pair count, page, the page's errors)."""
    study = make_design_study(tmp_path_factory, design)
    database, (rater, _), _ = new_database(study, tmp_path)
    with running_server(study, database) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        begin(page, f"{base}/r/{rater.token}")
        page.wait_for_selector("#viewer[data-slice]")
        yield study, database, len(load_pairs(study)), page, errors


def test_a_flicker_study_alternates_one_viewport_and_is_answered_by_keys(
        browser, tmp_path_factory, tmp_path, screenshots, capsys):
    with _design_page(browser, tmp_path_factory, tmp_path, "flicker") as (
            flicker, database, total, page, errors):
        assert page.locator("canvas").count() == 1 and page.locator("#view-left").count() == 0
        pair_id = page.locator("input[name=pair]").get_attribute("value")
        header, codes = read_stack(flicker / "stacks" / f"{pair_id}.bin")
        # Alternates at the study's rate: about 1000 / FLICKER_MS switches a second.
        _wait_until(page, "Number(document.getElementById('viewer').dataset.flips) >= 1")
        flips = float(_state(page)["flips"])
        time.sleep(1.5)
        rate = (float(_state(page)["flips"]) - flips) / 1.5
        assert 0.5 * 1000 / FLICKER_MS <= rate <= 1.2 * 1000 / FLICKER_MS, rate
        with capsys.disabled():
            print(f"\nflicker: {rate:.2f} switches/s at {FLICKER_MS} ms per image; "
                  f"screenshots in {screenshots}")
        # Window, zoom and scrolling apply to the flicker viewport as to the two panes.
        for key_name in ("+", "+", "j", "5"):
            page.keyboard.press(key_name)
        state = _state(page)
        assert state["zoom"] == 4
        assert state["slice"] == min(header.centre + 1, header.slices - 1)
        assert (state["width"], state["level"]) == header.windows[2]
        canvas = page.locator("#view-flicker").evaluate("c => [c.width, c.height]")
        scale = min(canvas[0] / header.columns, canvas[1] / header.rows) * state["zoom"]
        column, row = header.columns // 2, header.rows // 2
        x = int(canvas[0] / 2 + (column + 0.5 - header.columns / 2) * scale)
        y = int(canvas[1] / 2 + (row + 0.5 - header.rows / 2) * scale)
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:  # both phases, each its plane
            phase, grey = _flicker_sample(page, x, y)
            assert abs(grey - _expected(header, codes, state, phase, row, column)) <= 1
            if phase not in seen:
                seen[phase] = grey
                page.screenshot(path=screenshots / f"flicker-phase-{phase}.png")
            time.sleep(FLICKER_MS / 3000)
        assert set(seen) == {0, 1}
        assert "flicker 150 ms" in page.locator("#readout").inner_text()
        for step in range(total):
            with page.expect_navigation():
                page.keyboard.press(("y", "n", "1", "3")[step % 4])
            if step < total - 1:
                page.wait_for_selector("#viewer[data-flips]")
        assert "Thank you" in page.locator("h1").inner_text()
        assert errors == []
        page.close()
    answers = database.all_answers()
    assert len(answers) == total and {a["design"] for a in answers} == {"flicker"}
    assert Counter(a["answer"] for a in answers) == {"seen": total // 2, "unseen": total // 2}


def test_a_2afc_study_is_answered_left_or_right_by_keys(browser, tmp_path_factory, tmp_path,
                                                        screenshots):
    with _design_page(browser, tmp_path_factory, tmp_path, "2afc") as (
            _, database, total, page, errors):
        assert page.locator("#view-left").count() == 1 and page.locator("#view-right").count()
        page.keyboard.press("+")
        assert _state(page)["zoom"] == 2 and "flips" not in _state(page)
        page.screenshot(path=screenshots / "2afc.png")
        page.keyboard.press("2")  # no third answer in a forced choice: nothing happens
        page.keyboard.press(" ")
        time.sleep(0.3)
        assert page.locator("#progress").inner_text() == f"1 / {total}"
        for step in range(total):
            with page.expect_navigation():
                page.keyboard.press(("1", "ArrowRight", "ArrowLeft", "3")[step % 4])
        assert "Thank you" in page.locator("h1").inner_text()
        assert errors == []
        page.close()
    answers = database.all_answers()
    assert len(answers) == total and {a["design"] for a in answers} == {"2afc"}
    assert Counter(a["answer"] for a in answers) == {"left": total // 2, "right": total // 2}


def _part(number: int, handle):
    """A route handler applying ``handle(route)`` to part ``number`` of a stack only."""
    def route(route):
        if route.request.url.endswith(f"?part={number}"):
            handle(route)
        else:
            route.continue_()
    return route


def _cut(fraction: float):
    """Serves a part's first ``fraction`` of bytes only (a connection cut short)."""
    from playwright.sync_api import Error

    def handle(route):
        try:
            body = route.fetch().body()
            route.fulfill(status=200, body=body[:int(len(body) * fraction)],
                          headers={"content-type": "application/octet-stream"})
        except Error:
            # the page was closed while this part was in flight (the next pair's, after the
            # answer): Playwright would raise it in whatever the next test asks the browser
            pass
    return handle


def _not_found(route) -> None:
    route.fulfill(status=404, body="")


def _open_with(browser, base: str, rater, position: int, handler):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route("**/stack/*", handler)
    page.goto(f"{base}/r/{rater.token}/p/{position}")
    return page, errors


@pytest.mark.parametrize("failure", ["404", "cut"])
def test_a_failed_part_2_keeps_the_first_view_and_the_slices_that_arrived(
        browser, study, tmp_path, failure):
    """Part 2 (the other slices) fails after the first view: the viewer stays where it is,
    says once that the other slices could not be loaded, and scrolls only through the
    slices that arrived; the pair is answered as usual. Before, the composite PNG was put
    above the working viewer (pushing it below the fold) with no message, and scrolling
    went on to black slices."""
    database, (rater, _), _ = new_database(study, tmp_path)
    handler = _part(2, _not_found if failure == "404" else _cut(3 / 8))
    with running_server(study, database) as base:
        page, errors = _open_with(browser, base, rater, 3, handler)
        page.wait_for_selector("#viewer-note")
        pair_id = page.locator("input[name=pair]").get_attribute("value")
        header, codes = read_stack(study / "stacks" / f"{pair_id}.bin")
        assert page.locator("#pair").count() == 0
        assert page.locator("#viewer").evaluate("v => v === v.parentNode.firstElementChild")
        assert page.locator("#view-left").bounding_box()["y"] < 300  # not pushed down
        note = page.locator("#viewer-note").inner_text()
        assert "could not be loaded" in note and "can still be read" in note
        # Part 2 holds the other slices nearest first, each left then right: 3/8 of 4
        # slices is one whole slice (the nearer of the two neighbours, lower first).
        arrived = {header.centre} if failure == "404" else {
            header.centre, header.centre - 1 if header.centre > 0 else header.centre + 1}
        seen = {int(_state(page)["slice"])}
        for key_name in ["PageDown"] * header.slices + ["PageUp"] * header.slices:
            page.keyboard.press(key_name)
            state = _state(page)
            seen.add(int(state["slice"]))
            assert "loading" not in state
        assert seen == arrived
        page.keyboard.press("+")
        page.keyboard.press("+")
        _check_pixels(page, header, codes)
        assert page.locator("#viewer-note").count() == 1 and errors == []
        with page.expect_navigation():
            page.keyboard.press("3")
        page.close()
    (answer,) = database.all_answers()
    assert answer["pair"] == pair_id and answer["answer"] == "right"


def test_a_slice_still_arriving_keeps_the_one_shown_and_says_it_is_loading(
        browser, study, tmp_path):
    """Scrolling to a slice of part 2 before it arrives keeps the slice on screen (drawn,
    zoomable) with "loading slice N" in the readout, and draws the new one when it comes.
    Before, both sides went black while the readout still named the old slice."""
    database, (rater, _), _ = new_database(study, tmp_path)
    held: list = []
    with running_server(study, database) as base:
        page, errors = _open_with(browser, base, rater, 3, _part(2, held.append))
        page.wait_for_selector("#viewer[data-slice]")
        pair_id = page.locator("input[name=pair]").get_attribute("value")
        header, codes = read_stack(study / "stacks" / f"{pair_id}.bin")
        deadline = time.monotonic() + 10
        while not held:
            assert time.monotonic() < deadline, "part 2 never asked for"
            page.wait_for_timeout(20)
        step, target = (("PageDown", header.centre + 1) if header.centre == 0 else
                        ("PageUp", header.centre - 1))
        page.keyboard.press("+")
        page.keyboard.press("+")
        page.keyboard.press(step)
        state = _state(page)
        assert state["slice"] == header.centre and state["loading"] == target
        assert f"loading slice {target + 1}" in page.locator("#readout").inner_text()
        _check_pixels(page, header, codes)  # the slice shown is still drawn
        held[0].continue_()
        _wait_until(page, f"document.getElementById('viewer').dataset.slice == {target}")
        state = _state(page)
        assert "loading" not in state
        assert "loading" not in page.locator("#readout").inner_text()
        _check_pixels(page, header, codes)
        assert errors == []
        page.close()


@pytest.mark.parametrize("failure", ["404", "cut"])
def test_a_failed_part_1_shows_the_composite_without_an_empty_viewer(browser, study,
                                                                      tmp_path, failure):
    """Part 1 fails or is cut short, so there is no first view: the composite PNG, as
    without script, and no viewer (before, a cut part 1 left the toolbar and two black
    canvases above the PNG)."""
    database, (rater, _), _ = new_database(study, tmp_path)
    handler = _part(1, _not_found if failure == "404" else _cut(3 / 4))
    with running_server(study, database) as base:
        page, errors = _open_with(browser, base, rater, 1, handler)
        _wait_until(page, "!!document.getElementById('pair') && "
                          "document.getElementById('pair').naturalWidth > 0")
        assert page.locator("#viewer").count() == 0 and page.locator("canvas").count() == 0
        with page.expect_navigation():
            page.keyboard.press("1")
        assert errors == []
        page.close()
    (answer,) = database.all_answers()
    assert answer["answer"] == "left"


@pytest.mark.parametrize("part", [1, 2])
def test_a_flicker_pair_is_never_shown_side_by_side(browser, tmp_path_factory, tmp_path,
                                                    part):
    """A flicker pair whose stack fails before its first view (part 1) says it cannot be
    shown and cannot be answered (it stays unanswered and comes again); after it (part 2)
    the flicker stays, with its note, and is answered. Before, the side-by-side composite
    appeared (beside a caption saying the images alternate) and its answer was taken."""
    study = make_design_study(tmp_path_factory, "flicker")
    database, (rater, _), _ = new_database(study, tmp_path)
    with running_server(study, database) as base:
        page, errors = _open_with(browser, base, rater, 1, _part(part, _not_found))
        page.wait_for_selector("#viewer-note")
        time.sleep(0.3)
        assert page.locator("#pair").count() == 0 and page.locator("img").count() == 0
        if part == 1:
            assert "cannot be shown" in page.locator("#viewer-note").inner_text()
            assert page.locator("#viewer").count() == 0
            assert page.locator("#answer-seen").is_disabled()
            page.keyboard.press("y")
            page.locator("#answer-unseen").click(force=True)
            time.sleep(0.3)
            assert page.url.endswith("/p/1") and database.all_answers() == []
        else:
            assert page.locator("#view-flicker").count() == 1
            _wait_until(page, "Number(document.getElementById('viewer').dataset.flips) >= 1")
            with page.expect_navigation():
                page.keyboard.press("y")
            assert [a["answer"] for a in database.all_answers()] == ["seen"]
        assert errors == []
        page.close()


def test_without_script_a_flicker_pair_cannot_be_answered(browser, tmp_path_factory,
                                                          tmp_path):
    """Without JavaScript a flicker page shows no image (the composite is side by side, not
    a flicker), says why, and its answers are disabled; a 2AFC page, side by side like the
    composite, shows it and is answered. Neither fetches the stack (before, the head's
    preload fetched its part 1 for nothing)."""
    requested: list[str] = []
    for design, shown in (("flicker", False), ("2afc", True)):
        study = make_design_study(tmp_path_factory, design)
        (tmp_path / design).mkdir()
        database, (rater, _), _ = new_database(study, tmp_path / design)
        with running_server(study, database) as base:
            context = browser.new_context(java_script_enabled=False,
                                          viewport={"width": 1280, "height": 860})
            page = context.new_page()
            requested.clear()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{base}/r/{rater.token}/p/1")
            page.wait_for_load_state("load")
            assert (page.locator("#pair").count() == 1) == shown
            button = page.locator("#answer-form button").first
            assert button.is_disabled() != shown
            if shown:
                with page.expect_navigation():
                    button.click()
            else:
                assert "cannot be shown" in page.locator("figure").inner_text()
            assert not [url for url in requested if "/stack/" in url]
            context.close()
        assert len(database.all_answers()) == int(shown)
