"""medlossy.orphans: a process started by medlossy dies with its owner, kill -9 included."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

# An owner that starts a child, which starts a grandchild watching the owner (a forkserver
# chain: the grandchild's parent is not the owner), then prints the pids and waits.
_CHAIN = """
import os, subprocess, sys, time
owner = os.getpid()
grandchild = ("import os, sys, time; from medlossy.orphans import die_with_parent; "
              "die_with_parent(int(sys.argv[1])); print(os.getpid(), flush=True); time.sleep(60)")
middle = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', sys.argv[1], "
          "sys.argv[2]], stdout=sys.stdout); p.wait()")
subprocess.Popen([sys.executable, "-c", middle, grandchild, str(owner)], stdout=sys.stdout)
time.sleep(60)
"""

# An owner that starts an external program through guarded_command.
_GUARDED = """
import subprocess, sys, time
from medlossy.orphans import guarded_command
process = subprocess.Popen(guarded_command(["sleep", "60"]))
print(process.pid, flush=True)
time.sleep(60)
"""


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def _owner_killed_then(script: str) -> tuple[int, bool]:
    """Start ``script``, read the pid it prints, SIGKILL the owner: is that pid gone soon?"""
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(SOURCE)},
                             start_new_session=True)
    try:
        pid = int(owner.stdout.readline())
        assert _running(pid)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 3
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return pid, not _running(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what is left of the test's group
            os.killpg(owner.pid, signal.SIGKILL)


def test_a_worker_dies_with_its_owner_across_a_chain() -> None:
    pid, gone = _owner_killed_then(_CHAIN)
    assert gone, f"grandchild {pid} outlived its owner"


def test_an_external_command_dies_with_its_parent() -> None:
    pid, gone = _owner_killed_then(_GUARDED)
    assert gone, f"guarded command {pid} outlived its parent"
