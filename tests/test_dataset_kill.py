"""A sweep killed with SIGKILL in the middle resumes to a complete, verified result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_dataset_validation import write_synthetic_dataset

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
