"""Where compress_volume's memory goes: resident memory and Python/numpy allocations per phase.

Runs compress_volume in this process on the synthetic CT of memory.py, saved uncompressed
(.nii, so that reading is not the bottleneck), with workers=2 and Target('ratio', 20, 'equal')
as the CLI run does. medlossy.compression's phase functions are wrapped (not changed) to mark
the phase; a thread samples /proc/self/status (RssAnon = private memory, RssFile = pages of
mapped files, here the slice buffer) every 0.05 s, and tracemalloc records the peak of traced
allocations (numpy arrays, bytes, Python objects) per phase.

With --slice-errors, ErrorTally.add is replaced (in this process only) by the same sums
taken one slice at a time, to show what the float64 temporaries of phase 4 cost.

    .venv/bin/python bench/memory_phases.py [--slices 1000] [--slice-errors]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import threading
import time
import tracemalloc

import _common
import memory
import nibabel as nib

import medlossy.compression as compression
from medlossy.compression import Target, compress_volume
from medlossy.io import read_volume
from medlossy.metrics import ErrorTally

MIB = 2**20


def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as file:
        for line in file:
            name = line.split(":", 1)[0]
            if name in ("VmRSS", "RssAnon", "RssFile"):
                values[name] = int(line.split()[1]) * 1024
    return values


class Phases(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.phase = "imports"
        self.peaks: dict[str, dict[str, int]] = {}
        self.stop = threading.Event()

    def mark(self, phase: str) -> None:
        self.sample()
        self.peaks.setdefault(self.phase, {})["traced_peak"] = max(
            self.peaks.get(self.phase, {}).get("traced_peak", 0),
            tracemalloc.get_traced_memory()[1])
        tracemalloc.reset_peak()
        self.phase = phase

    def sample(self) -> None:
        status = _status()
        peak = self.peaks.setdefault(self.phase, {})
        for key, value in status.items():
            peak[key] = max(peak.get(key, 0), value)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.05)


def wrap(phases: Phases, name: str, phase: str, *, context: bool = False) -> None:
    original = getattr(compression, name)
    if context:
        @contextlib.contextmanager
        def wrapped(*args, **kwargs):
            phases.mark(f"{phase}: buffer + fill")
            with original(*args, **kwargs) as encoder:
                yield encoder
    else:
        def wrapped(*args, **kwargs):
            phases.mark(phase)
            return original(*args, **kwargs)
    setattr(compression, name, wrapped)


def _add_slice_by_slice(self: ErrorTally, reference, test) -> None:
    """ErrorTally.add's sums, one slice at a time (float64 temporaries of one slice)."""
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
    if reference.ndim < 3:
        return _ORIGINAL_ADD(self, reference, test)
    for index in range(reference.shape[0]):
        _ORIGINAL_ADD(self, reference[index], test[index])
    return None


_ORIGINAL_ADD = ErrorTally.add


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--slice-errors", action="store_true",
                        help="measure the errors one slice at a time (what-if)")
    arguments = parser.parse_args()
    if arguments.slice_errors:
        ErrorTally.add = _add_slice_by_slice
    source = memory.synthetic_ct(arguments.slices)
    plain = source.with_name(source.name.removesuffix(".gz"))
    if not plain.exists():
        nib.save(nib.load(source), plain)
    raw = 512 * 512 * arguments.slices * 2
    tracemalloc.start()
    phases = Phases()
    phases.start()
    for name, phase in (("_scan", "1 scan (read 1)"), ("search", "3 encode passes"),
                        ("_measure_errors", "4 decode + compare (read 3)"),
                        ("write_store", "5 write store")):
        wrap(phases, name, phase)
    wrap(phases, "slice_encoder", "2 slice buffer + pool, fill (read 2)", context=True)
    store = _common.OUT / "memory" / "phases.zarr"
    shutil.rmtree(store, ignore_errors=True)
    volume = read_volume(plain, "OTHER", lazy=True)  # as the CLI reads it
    phases.mark("0 before compress")
    started = time.perf_counter()
    attributes = compress_volume(volume, store, Target("ratio", 20, "equal"), workers=2,
                                 source=str(plain))
    seconds = time.perf_counter() - started
    phases.mark("6 after compress")
    phases.stop.set()
    phases.join()
    rows = []
    for phase, peak in sorted(phases.peaks.items()):
        rows.append([phase, f"{peak.get('VmRSS', 0) / MIB:.0f}",
                     f"{peak.get('RssAnon', 0) / MIB:.0f}", f"{peak.get('RssFile', 0) / MIB:.0f}",
                     f"{peak.get('traced_peak', 0) / MIB:.0f}",
                     f"{peak.get('VmRSS', 0) / raw:.2f}x"])
    table = _common.table(["phase (in order)", "peak RSS MiB", "peak RssAnon MiB",
                           "peak RssFile MiB", "tracemalloc peak MiB", "RSS / raw"], rows)
    streams = attributes["achieved"]["stored_bytes"]
    variant = " (what-if: errors measured slice by slice)" if arguments.slice_errors else ""
    markdown = "\n\n".join([
        f"### Where compress_volume's memory goes (in-process, per phase){variant}",
        f"512x512x{arguments.slices} int16 from uncompressed .nii (raw {raw / MIB:.0f} MiB), "
        f"workers=2, Target('ratio', 20, 'equal'): {attributes['achieved']['encode_passes']} "
        f"passes, {streams / MIB:.1f} MiB of codestreams per pass, {seconds:.0f} s. Peaks are "
        "per phase; RssFile is mostly the memory-mapped slice buffer (a file under $TMPDIR, "
        "so its pages are page cache that the kernel can write back and drop).",
        table,
    ])
    _common.save("memory_phases" + ("_slice_errors" if arguments.slice_errors else ""),
                 {"slices": arguments.slices, "raw_bytes": raw,
                  "slice_errors": arguments.slice_errors, "machine": _common.machine(),
                  "seconds": seconds, "peaks": phases.peaks,
                  "achieved": attributes["achieved"]}, markdown)


if __name__ == "__main__":
    main()
