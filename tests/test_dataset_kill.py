"""A sweep killed with SIGKILL in the middle resumes to a complete, verified result, and
leaves no process behind (before: its forkserver and encoder workers lived on, 8 processes
three seconds after the kill, some for 40 minutes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_dataset_validation import write_synthetic_dataset

SOURCE = Path(__file__).resolve().parents[1] / "src"

CASES = {"k_a": 1, "k_b": 2, "k_c": 3, "k_d": 4}
RATIOS = "1,5,20"
TASKS = len(CASES) * 3


def _parts(out: Path) -> list[Path]:
    """Finished part files (a temporary one is hidden: .NAME.partial-XXXX.json)."""
    return sorted(p for p in out.glob("parts/*/*.json") if not p.name.startswith("."))


def _writing(out: Path) -> bool:
    return any(".partial-" in p.name for p in out.rglob(".*"))


@pytest.mark.slow
def test_kill_9_then_rerun_completes_the_sweep(tmp_path: Path, cli) -> None:
    source = write_synthetic_dataset(tmp_path / "Dataset710_Kill", CASES, shape=(96, 80, 16))
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "medlossy.cli.main", "dataset", "compress", str(source),
               "--ratios", RATIOS, "--out", str(out), "--quiet", "--workers", "1"]
    with (tmp_path / "stderr.txt").open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log,
                                   start_new_session=True)
        try:
            # Kill while an output is being written if we catch one, else late in the sweep;
            # either way some but not all tasks are finished.
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
                assert time.monotonic() < deadline, "no task finished in time"
                done = len(_parts(out))
                if 1 <= done < TASKS and (_writing(out) or done >= TASKS - 3):
                    break
                time.sleep(0.002)
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the CLI, its forkserver and its worker
            process.wait()
    assert process.returncode == -signal.SIGKILL
    survivors = {path: path.stat().st_mtime_ns for path in _parts(out)}
    assert 1 <= len(survivors) < TASKS
    assert not (out / "manifest.csv").exists()

    code, _, stderr = cli("dataset", "compress", source, "--ratios", RATIOS, "--out", out,
                          "--quiet", "--workers", "2")
    assert code == 0, stderr
    code, _, stderr = cli("dataset", "verify", out)
    assert code == 0, stderr
    leftovers = [str(p) for p in out.rglob("*") if ".partial-" in p.name or ".old-" in p.name]
    assert leftovers == []
    manifest = pd.read_csv(out / "manifest.csv")
    keys = list(zip(manifest["case"], manifest["channel"], manifest["ratio_target"],
                    strict=True))
    assert len(keys) == len(set(keys)) == TASKS
    assert set(keys) == {(case, 0, ratio) for case in CASES for ratio in (1.0, 5.0, 20.0)}
    # Work finished before the kill was kept, not redone.
    assert {path: path.stat().st_mtime_ns for path in survivors} == survivors


# ---------------------------------------------------------------------------------------------
# Workers die with the process that started them
# ---------------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(b")", 1)[1].split()[1]), []).append(int(entry))
    return children


def _descendants(pid: int) -> set[int]:
    children, found, todo = _children(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child nobody reaped is gone for our purpose)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def _kill_9_leaves_no_process(command: list[str], ready, log: Path, workers: int) -> None:
    """Run ``command``; once ``ready()`` and its workers run, SIGKILL it (it alone) and
    check that every process it started is gone within 30 s (a worker still importing when
    its parent dies watches for that only once it runs: seconds on a loaded machine)."""
    environment = {**os.environ, "PYTHONPATH": str(SOURCE)}
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                   env=environment, start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the workers never started"
            seen |= _descendants(process.pid)
            if ready() and len([p for p in seen if _running(p)]) > workers:
                break  # the workers and the forkserver (and the resource tracker) run
            time.sleep(0.02)
        seen |= _descendants(process.pid)
        os.kill(process.pid, signal.SIGKILL)  # the CLI only: not its process group
        process.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_running(p) for p in seen):
            time.sleep(0.1)
        survivors = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                     for pid in seen if _running(pid)}
        assert survivors == {}, f"alive 30 s after kill -9 of their parent: {survivors}"
    finally:
        for pid in seen:  # never leave a test's processes behind, whatever happened
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_kill_9_of_dataset_compress_leaves_no_worker(tmp_path: Path) -> None:
    source = write_synthetic_dataset(tmp_path / "Dataset711_Orphans", CASES,
                                     shape=(96, 80, 16))
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "medlossy.cli.main", "dataset", "compress", str(source),
               "--ratios", RATIOS, "--out", str(out), "--quiet", "--workers", "2"]
    _kill_9_leaves_no_process(command, lambda: len(_parts(out)) >= 1,
                              tmp_path / "stderr.txt", workers=2)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_kill_9_of_compress_leaves_no_encoder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volume = (rng.normal(40, 300, (160, 144, 48))).astype(np.int16)  # noisy: slow to fit
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1])), source)
    command = [sys.executable, "-m", "medlossy.cli.main", "compress", str(source),
               str(tmp_path / "ct.zarr"), "--ratio", "20", "--quiet", "--workers", "2"]
    _kill_9_leaves_no_process(command, lambda: True, tmp_path / "stderr.txt", workers=2)
    assert not (tmp_path / "ct.zarr").exists()


def _kill_9_while_encoding(command: list[str], environment: dict[str, str]) -> None:
    """Run ``command``, SIGKILL it (it alone) once its encoder workers run, and wait until
    every process it started has gone."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=environment, start_new_session=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len([p for p in seen if _running(p)]) <= 2:  # workers, forkserver, tracker
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the workers never started"
            seen |= _descendants(process.pid)
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_running(p) for p in seen):
            time.sleep(0.1)
    finally:
        for pid in seen:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        process.stderr.close()


@pytest.fixture
def short_tmpdir() -> Path:
    """A TMPDIR of its own, short like /tmp: a forkserver's socket path must fit 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="tmpdir-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_kill_9_of_compress_leaves_no_copy_of_the_scan_in_temporary_space(
        tmp_path: Path, short_tmpdir: Path) -> None:
    rng = np.random.default_rng(1)
    volume = (rng.normal(40, 300, (64, 64, 16))).astype(np.int16)
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1])), source)
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "medlossy.cli.main", "compress", str(source),
               str(out / "ct.zarr"), "--ratio", "20", "--quiet", "--workers", "2"]
    environment = {**os.environ, "PYTHONPATH": str(SOURCE), "TMPDIR": str(short_tmpdir)}
    _kill_9_while_encoding(command, environment)
    left = [p for p in short_tmpdir.rglob("*") if not p.is_dir()]
    assert [p for p in left if p.stat().st_size > 0] == []  # no slices, nothing of the scan
    assert [p.name for p in short_tmpdir.iterdir() if p.stat().st_mode & 0o077] == []
    completed = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert list(short_tmpdir.iterdir()) == []  # the killed run's folder removed, its own too
    assert [p.name for p in out.iterdir()] == ["ct.zarr"]
