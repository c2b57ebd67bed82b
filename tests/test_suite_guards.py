"""The suite's own guards (tests/conftest.py, pyproject.toml): a test that forks while other
threads run fails by name (a fork pool of nnU-Net's, beside zarr's and tqdm's threads, hung
`make test` for 19 minutes), and a test that hangs fails after the timeout, naming itself."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

HERE = Path(__file__).parent
FORK_BESIDE_A_THREAD = """
import os, threading

def test_forks_beside_a_thread():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="like-zarr-io")
    thread.start()
    try:
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
    finally:
        stop.set()
        thread.join()

def test_forks_alone():
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
"""
HANGS = """
import threading

def test_waits_for_a_lock_nobody_releases():
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()
"""


def _run(pytester: pytest.Pytester, source: str, *options: str) -> pytest.RunResult:
    pytester.makeconftest((HERE / "conftest.py").read_text())
    pytester.makepyfile(source)
    # The project's pytest settings (timeout and its method), with this folder as the root.
    return pytester.runpytest_subprocess("-c", str(HERE.parent / "pyproject.toml"),
                                         "--rootdir", str(pytester.path), "-p", "no:cacheprovider",
                                         *options, str(pytester.path))


def test_a_fork_beside_another_thread_fails_that_test(pytester: pytest.Pytester) -> None:
    result = _run(pytester, FORK_BESIDE_A_THREAD)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_forks_beside_a_thread*",
                                 "forked 1 time(s) while threads ?'like-zarr-io'? were alive*",
                                 "*in test_forks_beside_a_thread*"])


def test_a_hanging_test_fails_by_name_and_the_suite_goes_on(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_timeout")
    result = _run(pytester, HANGS + "\ndef test_after():\n    pass\n", "-o", "timeout=2")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["timeout method: signal",
                                 "*Failed: Timeout (>2.0s) from pytest-timeout*",
                                 "*FAILED*::test_waits_for_a_lock_nobody_releases*"])
