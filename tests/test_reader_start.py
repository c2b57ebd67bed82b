"""The rater's start page in headless Chromium: what a link opens first (the task, the keys,
the progress, Begin), how it resumes, that it works without script, and that it leaves the
pair pages' stylesheet and scripts in the browser's cache, so the first pair's page does not
fetch them cold (issue 24, item 7: a fresh browser's first view).

Each test opens its own browser context (``new_page``/``new_context``): an empty cache, as a
rater's browser that never saw the study.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_reader_app import new_database, running_server
from test_reader_browser import _state, _wait_until, launched_chromium
from test_reader_pairs import demo_study

from medlossy.reader_study.pairs import load_pairs

_ASSETS = ("rater.css", "rater.js", "viewer.js")
_VIEWPORT = {"width": 1280, "height": 860}


@pytest.fixture(scope="module")
def chromium():
    with launched_chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return demo_study(tmp_path_factory)


def _assets(page) -> dict[str, int]:
    """Bytes transferred per stylesheet and script of the page (0: taken from the cache)."""
    return page.evaluate(
        "() => Object.fromEntries(performance.getEntriesByType('resource')"
        ".filter(entry => entry.name.includes('/static/'))"
        ".map(entry => [entry.name.split('/static/')[1].split('?')[0], entry.transferSize]))")


def test_the_link_opens_the_start_page_and_begin_reaches_pair_1(chromium, study, tmp_path):
    """The start page says what is asked, how to answer and look, how many pairs; Begin goes
    to the rater's first pair. Before, the link went straight to that pair."""
    database, (rater, _), _ = new_database(study, tmp_path)
    total = len(load_pairs(study))
    with running_server(study, database) as base:
        page = chromium.new_page(viewport=_VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{base}/r/{rater.token}")
        assert page.locator("h1").inner_text() == "Reader study"
        text = page.locator("main").inner_text()
        for expected in ("Which image shows the anatomy with better quality?", "Left better",
                         "Cannot decide", "window presets", "magnifier",
                         f"{total} pairs to answer."):
            assert expected in text, expected
        assert page.locator("#begin").inner_text() == "Begin"
        # Begin in sight without scrolling on a laptop screen (it was at y = 1026 of 768).
        page.set_viewport_size({"width": 1366, "height": 768})
        box = page.locator("#begin").bounding_box()
        assert box is not None and box["y"] + box["height"] <= 768, box
        with page.expect_navigation():
            page.locator("#begin").click()
        assert page.url == f"{base}/r/{rater.token}/p/1"
        assert page.locator("#progress").inner_text() == f"1 / {total}"
        page.wait_for_selector("#viewer[data-slice]")
        assert errors == []
        page.close()


def test_the_start_page_leaves_the_pair_pages_assets_cached(chromium, study, tmp_path):
    """In a browser that never saw the study, the start page fetches the stylesheet and both
    scripts; the first pair's page then takes all three from the cache (0 bytes), so its
    first view waits for the page and its stack only."""
    database, (rater, _), _ = new_database(study, tmp_path)
    with running_server(study, database) as base:
        page = chromium.new_page(viewport=_VIEWPORT)
        page.goto(f"{base}/r/{rater.token}")
        page.wait_for_load_state("load")
        fetched = _assets(page)
        assert sorted(fetched) == sorted(_ASSETS) and all(fetched.values()), fetched
        with page.expect_navigation():
            page.locator("#begin").click()
        page.wait_for_selector("#viewer[data-slice]")
        assert _assets(page) == dict.fromkeys(_ASSETS, 0)
        page.close()


def test_a_returning_rater_sees_their_progress_and_continues(chromium, study, tmp_path):
    database, (rater, _), _ = new_database(study, tmp_path)
    total = len(load_pairs(study))
    with running_server(study, database) as base:
        page = chromium.new_page(viewport=_VIEWPORT)
        page.goto(f"{base}/r/{rater.token}/p/1")
        for _ in range(2):  # answer two pairs, then leave
            page.wait_for_selector("#viewer[data-slice]")
            with page.expect_navigation():
                page.keyboard.press("1")
        page.close()
        page = chromium.new_page(viewport=_VIEWPORT)
        page.goto(f"{base}/r/{rater.token}")
        assert page.locator("#status").inner_text() == f"You have answered 2 of {total} pairs."
        assert page.locator("#begin").inner_text() == "Continue with pair 3"
        with page.expect_navigation():
            page.locator("#begin").click()
        assert page.locator("#progress").inner_text() == f"3 / {total}"
        page.close()
    assert len(database.all_answers()) == 2


def _practice_pixels(page, side: str) -> int:
    """The sum of one practice side's drawn grey levels (changes with window and slice)."""
    return page.locator(f"#practice #view-{side}").evaluate(
        "canvas => canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height)"
        ".data.reduce((sum, value, i) => i % 4 === 0 ? sum + value : sum, 0)")


def test_the_start_page_has_a_practice_viewer(chromium, study, tmp_path):
    """The start page shows the viewer on a test pattern made in the page (no request for
    study data): presets change its pixels, keys scroll its slices, the two sides differ;
    Begin stays in sight on a laptop screen. Before, the page had no viewer to try."""
    database, (rater, _), _ = new_database(study, tmp_path)
    with running_server(study, database) as base:
        page = chromium.new_page(viewport={"width": 1366, "height": 768})
        errors: list[str] = []
        requests: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(f"{base}/r/{rater.token}")
        _wait_until(page, "!!document.querySelector('#practice #viewer[data-slice]')")
        assert page.locator("#practice-section").is_visible()
        box = page.locator("#begin").bounding_box()
        assert box is not None and box["y"] + box["height"] <= 768, box
        page.locator("#practice-section").scroll_into_view_if_needed()
        state = _state(page)
        assert (state["slice"], state["preset"]) == (2, "study")
        study_window = _practice_pixels(page, "left")
        assert _practice_pixels(page, "right") != study_window  # the coarsened side
        page.keyboard.press("7")  # the brain preset
        assert _state(page)["preset"] == "brain"
        assert _practice_pixels(page, "left") != study_window
        brain = _practice_pixels(page, "left")
        page.keyboard.press("j")
        _wait_until(page, "document.querySelector('#practice #viewer').dataset.slice === '3'")
        assert _state(page)["slice"] == 3 and "loading" not in _state(page)
        assert _practice_pixels(page, "left") != brain  # another slice
        page.evaluate("window.scrollTo(0, 0)")
        page.keyboard.press("PageDown")  # scrolls the page, not the practice's slices
        _wait_until(page, "window.scrollY > 0")
        assert _state(page)["slice"] == 3
        assert not [url for url in requests if "/stack/" in url or "/img/" in url]
        assert errors == []
        page.close()


def test_without_script_the_start_page_leads_to_the_pairs(chromium, study, tmp_path):
    database, (rater, _), _ = new_database(study, tmp_path)
    with running_server(study, database) as base:
        context = chromium.new_context(java_script_enabled=False, viewport=_VIEWPORT)
        page = context.new_page()
        page.goto(f"{base}/r/{rater.token}")
        assert not page.locator("#practice-section").is_visible()  # no practice viewer
        assert page.locator("#viewer").count() == 0
        with page.expect_navigation():
            page.locator("#begin").click()
        assert page.url.endswith("/p/1")
        page.wait_for_load_state("load")
        assert page.locator("#pair").is_visible()  # the composite, as without script
        with page.expect_navigation():
            page.locator("#answer-left").click()
        assert page.url.endswith("/p/2")
        context.close()
    assert [a["answer"] for a in database.all_answers()] == ["left"]
