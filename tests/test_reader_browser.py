"""End to end in headless Chromium: a rater opens the private link, answers every pair with
the keyboard and the buttons, stops and resumes, and every answer reaches the database.

Uses Debian's chromium (installed here with apt-get when missing and running as root) through
Playwright; Playwright's own browser download is never used. Set MEDLOSSY_SCREENSHOT=PATH to
save the rating page as shown (docs/reader-study.png is made that way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_reader_app import new_database, running_server
from test_reader_pairs import demo_study

from medlossy.reader_study.pairs import load_pairs

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


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium: not installed and apt-get could not install it")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


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
        page.goto(f"{base}/r/{rater.token}")
        assert page.locator("#progress").inner_text() == f"1 / {total}"
        assert page.locator("#pair").evaluate("image => image.naturalWidth") > 0
        if os.environ.get("MEDLOSSY_SCREENSHOT"):
            page.goto(f"{base}/r/{rater.token}/p/12")
            page.screenshot(path=os.environ["MEDLOSSY_SCREENSHOT"])
            page.goto(f"{base}/r/{rater.token}")
        for step in range(total):
            assert page.locator("#progress").inner_text() == f"{step + 1} / {total}"
            if step == 4:  # stop: close the tab, open the link again later
                page.close()
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(f"{base}/r/{rater.token}")
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
