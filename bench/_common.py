"""Shared helpers for the benchmarks: machine description, timing, demo CTs, result files."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
OUT = BENCH / "out"  # gitignored: stores, slices, synthetic volumes
CT_PEAK = 4096.0  # the study's PSNR peak r for CT
REPEATS = 3  # every timing is the best of this many runs (the machine may be shared)


def _first_line(path: str, prefix: str) -> str:
    try:
        with open(path) as file:
            for line in file:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _command_output(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    return (result.stdout + result.stderr).strip()


def machine() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import imagecodecs
    import nibabel
    import numcodecs
    import openjpeg
    import zarr
    from openjpeg.utils import get_openjpeg_version

    import medlossy

    os_name = "unknown"
    if Path("/etc/os-release").exists():
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    memory_kib = _first_line("/proc/meminfo", "MemTotal").split()[0]
    opj = "not installed"
    if shutil.which("opj_compress"):
        for line in _command_output(["opj_compress", "-h"]).splitlines():
            if "compiled against openjp2 library" in line:
                opj = line.strip().split()[-1].rstrip(".")
    commit = _command_output(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"])
    return {
        "nproc": int(_command_output(["nproc"]) or 0),
        "cpu_model": _first_line("/proc/cpuinfo", "model name"),
        "memory_gib": round(int(memory_kib) / 2**20, 1) if memory_kib.isdigit() else None,
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "imagecodecs": imagecodecs.__version__,
        "imagecodecs_openjpeg": imagecodecs.jpeg2k_version(),
        "pylibjpeg_openjpeg": openjpeg.__version__,
        "pylibjpeg_openjpeg_openjpeg": ".".join(map(str, get_openjpeg_version())),
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "nibabel": nibabel.__version__,
        "medlossy": medlossy.__version__,
        "medlossy_commit": commit,
        "opj_tools_libopenjp2": opj,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_markdown(info: dict[str, Any]) -> str:
    return (f"Machine: {info['cpu_model']}, nproc {info['nproc']}, {info['memory_gib']} GiB, "
            f"{info['os']}, Python {info['python']}, numpy {info['numpy']}, imagecodecs "
            f"{info['imagecodecs']} ({info['imagecodecs_openjpeg']}), pylibjpeg-openjpeg "
            f"{info['pylibjpeg_openjpeg']} (OpenJPEG {info['pylibjpeg_openjpeg_openjpeg']}), "
            f"zarr {info['zarr']}; load average at start {info['load_average_at_start']}.")


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as file:
        values = [int(v) for v in file.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(seconds: float = 0.5) -> float:
    """How many cores other processes keep busy (measured while this process sleeps)."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(total1 - total0, 1)


def wait_for_quiet(limit: float = 0.25, max_wait: float = 90.0) -> float:
    """Wait (up to ``max_wait`` s) until other processes use under ``limit`` cores; the machine
    is shared. Returns the busy cores last measured, which the results record."""
    deadline = time.monotonic() + max_wait
    busy = busy_cores()
    while busy > limit and time.monotonic() < deadline:
        time.sleep(2.0)
        busy = busy_cores()
    return round(busy, 2)


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its waited-for child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_of(function: Callable[[], Any], repeats: int = REPEATS,
            setup: Callable[[], Any] | None = None) -> tuple[float, list[float], Any]:
    """(best seconds, every run's seconds, the last run's result); ``setup`` runs untimed."""
    timing = timed(function, repeats, setup)
    return timing["wall_best"], timing["wall_all"], timing["result"]


def timed(function: Callable[[], Any], repeats: int = REPEATS,
          setup: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Wall and CPU seconds (this process + children it waits for) of ``repeats`` runs.

    On a shared machine the CPU time of single-threaded work is what an idle core would take
    (minus cache effects); wall time is what a user waits.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        if setup is not None:
            setup()
        cpu = _cpu_seconds()
        started = time.perf_counter()
        result = function()
        walls.append(time.perf_counter() - started)
        cpus.append(_cpu_seconds() - cpu)
    return {"wall_best": min(walls), "wall_all": walls, "cpu_best": min(cpus), "cpu_all": cpus,
            "result": result}


def tree_bytes(path: Path) -> int:
    """Every byte of every file under ``path`` (recomputed here, not read from the store)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = CT_PEAK) -> float:
    """10 log10(r^2 / MSE) over all voxels, in float64; inf when identical."""
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
    squared = 0.0
    for index in range(reference.shape[0]):  # per plane: no volume-sized float64 temporary
        difference = reference[index].astype(np.float64) - test[index].astype(np.float64)
        squared += float(np.sum(difference * difference))
    mse = squared / reference.size
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def demo_cts() -> dict[str, tuple[str, Any]]:
    """name -> (description, Volume) for the three real demo CTs, read fully into memory."""
    from medlossy.data.demo import demo_reference_files
    from medlossy.io import read_volume

    reference = demo_reference_files()
    found = {}
    for name, relative in (("CT A", "example_ct.nii.gz"),
                           ("CT B", "aorta_report/example_ct.nii.gz"),
                           ("CT C", "example_ct_dicom")):
        volume = read_volume(reference / relative, "CT")
        volume.array = np.asarray(volume.array)
        spacing = "x".join(f"{s:g}" for s in volume.spacing)
        shape = "x".join(map(str, volume.shape))
        found[name] = (f"{name}: {relative}, {shape} {volume.array.dtype}, {spacing} mm", volume)
    return found


def slices_first(volume: Any) -> np.ndarray:
    """The volume's voxels as (axial slices, rows, columns), a view where possible."""
    return np.moveaxis(np.asarray(volume.array), volume.axial_axis, 0)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def save(name: str, document: dict[str, Any], markdown: str) -> None:
    """Write bench/results/<name>.json and print the Markdown section to stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(markdown)
    sys.stdout.flush()


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
