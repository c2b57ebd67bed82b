"""Peak memory of `medlossy compress` and `medlossy decompress` on a large synthetic CT.

The volume: 512x512xN int16, made from the 20 real slices of CT C (DICOM) linearly
interpolated along z to N slices, plus Gaussian noise (sigma 10 HU), saved as .nii.gz under
bench/out/. Each command runs in a subprocess under `/usr/bin/time -v` while a sampler reads
/proc every 0.1 s for the whole process tree (the CLI, its forkserver and pool workers):

- peak RSS of the CLI process itself (GNU time's "Maximum resident set size"; its RssAnon and
  RssFile split at the sampled peak), which counts pages of the memory-mapped slice buffer;
- peak of the summed PSS over the tree (shared pages divided among the processes mapping them:
  the memory the job really occupies) and of the summed RSS (counts shared pages per process).

Everything is divided by the raw int16 size (N x 512 x 512 x 2 bytes).

    .venv/bin/python bench/memory.py [--slices 1000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common
import nibabel as nib
import numpy as np

SIDE = 512
NOISE_HU = 10.0


def synthetic_ct(slices: int) -> Path:
    """512x512xN int16 CT-like volume from CT C's slices (cached under bench/out/)."""
    path = _common.OUT / "memory" / f"synthetic_ct_512x512x{slices}.nii.gz"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    _, volume = _common.demo_cts()["CT C"]
    source = _common.slices_first(volume).astype(np.float32)  # (20, 512, 512)
    rng = np.random.default_rng(0)
    array = np.empty((SIDE, SIDE, slices), dtype=np.int16)  # NIfTI i, j, k: k is axial
    positions = np.linspace(0, len(source) - 1, slices)
    for k, position in enumerate(positions):
        low = int(np.floor(position))
        high = min(low + 1, len(source) - 1)
        weight = position - low
        plane = (1 - weight) * source[low] + weight * source[high]
        plane += rng.normal(0.0, NOISE_HU, plane.shape).astype(np.float32)
        array[:, :, k] = np.clip(np.rint(plane), -1024, 3071)
    affine = np.diag([0.9765625, 0.9765625, 2.0 * (len(source) - 1) / (slices - 1), 1.0])
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    temporary = path.with_name("partial-" + path.name)
    nib.save(image, temporary)
    temporary.rename(path)
    return path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _descendants(root: int) -> list[int]:
    tree, found, stack = _children(), [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


def _kib(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    values = {}
    try:
        with open(path) as file:
            for line in file:
                name = line.split(":", 1)[0]
                if name in keys:
                    values[name] = int(line.split()[1])
    except OSError:
        pass
    return values


class Sampler(threading.Thread):
    """Polls the process tree under ``root`` and keeps the peaks (KiB)."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop = threading.Event()
        self.peak_pss = self.peak_rss = self.peak_main_rss = 0
        self.main_split: dict[str, int] = {}
        self.peak_processes = 0

    def run(self) -> None:
        while not self.stop.is_set():
            pss = rss = 0
            pids = _descendants(self.root)
            for pid in pids:
                rollup = _kib(f"/proc/{pid}/smaps_rollup", ("Pss", "Rss"))
                pss += rollup.get("Pss", 0)
                rss += rollup.get("Rss", 0)
            # The CLI is the only child of /usr/bin/time.
            for pid in _children().get(self.root, [])[:1]:
                status = _kib(f"/proc/{pid}/status", ("VmRSS", "RssAnon", "RssFile",
                                                      "RssShmem"))
                if status.get("VmRSS", 0) > self.peak_main_rss:
                    self.peak_main_rss = status["VmRSS"]
                    self.main_split = status
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, len(pids))
            self.stop.wait(self.interval)


def measure(command: list[str]) -> dict:
    """Run ``command`` under /usr/bin/time -v with the sampler; peaks in bytes."""
    started = time.perf_counter()
    process = subprocess.Popen(["/usr/bin/time", "-v", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    sampler = Sampler(process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stdout}\n{stderr[-2000:]}")
    maxrss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    return {
        "command": command,
        "wall_seconds": wall,
        "time_v_max_rss_bytes": maxrss * 1024,
        "sampled_main_rss_bytes": sampler.peak_main_rss * 1024,
        "sampled_main_split_kib": sampler.main_split,
        "sampled_tree_pss_bytes": sampler.peak_pss * 1024,
        "sampled_tree_rss_bytes": sampler.peak_rss * 1024,
        "max_processes": sampler.peak_processes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    arguments = parser.parse_args()
    info = _common.machine()
    generated = time.perf_counter()
    source = synthetic_ct(arguments.slices)
    generated = time.perf_counter() - generated
    raw = SIDE * SIDE * arguments.slices * 2
    cli = str(Path(sys.executable).with_name("medlossy"))
    store = _common.OUT / "memory" / "synthetic.zarr"
    decoded = _common.OUT / "memory" / "decoded.nii.gz"
    commands = {
        "compress": [cli, "compress", str(source), str(store), "--ratio", "20",
                     "--allocation", "equal", "--workers", str(arguments.workers), "--quiet",
                     "--force"],
        "decompress": [cli, "decompress", str(store), str(decoded), "--workers",
                       str(arguments.workers), "--quiet", "--force"],
    }
    results: dict[str, list[dict]] = {"compress": [], "decompress": []}
    for _ in range(arguments.repeats):
        for name, command in commands.items():
            if name == "compress":
                shutil.rmtree(store, ignore_errors=True)
            else:
                decoded.unlink(missing_ok=True)
            result = measure(command)
            results[name].append(result)
            _common.progress(f"  {name}: {result['wall_seconds']:.1f} s, RSS "
                             f"{result['time_v_max_rss_bytes'] / raw:.2f}x raw, tree PSS "
                             f"{result['sampled_tree_pss_bytes'] / raw:.2f}x raw")
    attributes = json.loads((store / ".zattrs").read_text())["medlossy"]
    achieved = attributes["achieved"]
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "wall_seconds_best": min(r["wall_seconds"] for r in runs),
            "max_rss_bytes": max(r["time_v_max_rss_bytes"] for r in runs),
            "tree_pss_bytes": max(r["sampled_tree_pss_bytes"] for r in runs),
            "tree_rss_bytes": max(r["sampled_tree_rss_bytes"] for r in runs),
        }
    mib = 2**20
    rows = []
    for name, s in summary.items():
        split = results[name][-1]["sampled_main_split_kib"]
        rows.append([name, f"{s['wall_seconds_best']:.1f}", f"{s['max_rss_bytes'] / mib:.0f}",
                     f"**{s['max_rss_bytes'] / raw:.2f}x**",
                     f"{split.get('RssAnon', 0) / 1024:.0f} / {split.get('RssFile', 0) / 1024:.0f}"
                     f" / {split.get('RssShmem', 0) / 1024:.0f}",
                     f"{s['tree_pss_bytes'] / mib:.0f} ({s['tree_pss_bytes'] / raw:.2f}x)",
                     f"{s['tree_rss_bytes'] / mib:.0f} ({s['tree_rss_bytes'] / raw:.2f}x)"])
    table = _common.table(
        ["command", "wall s", "peak RSS of CLI MiB", "RSS / raw",
         "CLI RssAnon / RssFile / RssShmem MiB at peak", "tree PSS MiB (/ raw)",
         "tree RSS MiB (/ raw)"], rows)
    markdown = "\n\n".join([
        "## Peak memory of the CLI on a large synthetic CT",
        f"Synthetic CT: 512x512x{arguments.slices} int16 (raw {raw / mib:.0f} MiB, "
        f"{source.stat().st_size / mib:.0f} MiB as .nii.gz), CT C's 20 slices interpolated "
        f"along z plus {NOISE_HU:g} HU noise. Store: x{achieved['ratio']:.3f}, "
        f"{achieved['encode_passes']} encode passes, PSNR {achieved['psnr_db']:.2f} dB. "
        f"Runs per command: {arguments.repeats}; workers: {arguments.workers}.",
        "```\n" + "\n".join(" ".join(c) for c in commands.values()) + "\n```",
        table,
        _common.machine_markdown(info),
    ])
    _common.save("memory", {"machine": info, "slices": arguments.slices, "raw_bytes": raw,
                            "source_bytes": source.stat().st_size,
                            "generation_seconds": generated, "store_achieved": achieved,
                            "runs": results, "summary": summary}, markdown)


if __name__ == "__main__":
    main()
