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


def test_scratch_of_a_dead_process_is_removed_by_the_next_run(tmp_path: Path,
                                                              monkeypatch) -> None:
    import tempfile

    from medlossy import orphans

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f"medlossy-scratch-{int(dead.stdout)}-abcd1234"
    (stale / "slices-x").mkdir(parents=True)
    (stale / "slices-x" / "slices.raw").write_bytes(b"scan" * 100)
    living = tmp_path / f"medlossy-scratch-{os.getpid()}-living00"
    living.mkdir()
    other = tmp_path / f"medlossy-scratch-{int(dead.stdout)}-report"  # not one of ours
    other.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(orphans, "_scratch", None)
    scratch = orphans.private_scratch()
    assert scratch.parent == tmp_path and scratch.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        sorted([scratch.name, living.name, other.name])
    assert orphans.private_scratch() == scratch  # one per process


@pytest.mark.parametrize("memfd", [True, False])
def test_two_workers_share_the_slices_and_leave_no_file(tmp_path: Path, monkeypatch,
                                                        memfd: bool) -> None:
    import tempfile

    import numpy as np

    from medlossy import orphans
    from medlossy.codecs import get_codec
    from medlossy.codecs.base import Setting
    from medlossy.codecs.pool import slice_encoder

    if not memfd:  # as where there is none (macOS): a file in the private scratch folder
        monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(orphans, "_scratch", None)
    codec = get_codec("jpeg2k")
    data = np.random.default_rng(0).normal(1000, 200, (4, 32, 32)).astype(np.int16)
    streams = []
    for workers in (2, 1):
        with slice_encoder(codec, data.shape, "int16", workers=workers) as encoder:
            encoder.slices[:] = data
            files = [p for p in tmp_path.rglob("*") if p.is_file()]
            assert len(files) == (1 if workers == 2 and not memfd else 0), files
            streams.append(encoder.encode_all(Setting("ratio", 10.0)))
    assert streams[0] == streams[1]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
