"""Rate-distortion and speed of every codec on one volume: ``medlossy bench codecs``.

Data flow: a volume (read once) -> for each codec offering a ratio mode and each target
ratio: ``compress_volume`` into a temporary store (the search, verification and error
measurement a user's compress runs) -> ``read_store`` of that store, timed -> one row per
(codec, ratio): achieved ratio, PSNR, maximum error, encode passes, and speeds -> a tidy
table (CSV, Markdown) and a figure (PSNR against ratio; encode and decode Mvox/s).

Speeds, in Mvox/s of the volume: ``compress`` = voxels / the whole compress (the ratio search
included: what a user waits for), ``encode/pass`` = voxels x passes / encode seconds (one
encode of the volume, verification included), ``decode`` = voxels / ``read_store``. With
one worker (the default) everything runs in this process, so the CPU seconds beside them do
not depend on what else the machine runs.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medlossy.codecs import codec_names, get_codec
from medlossy.compression import Target, compress_volume
from medlossy.decompression import read_store
from medlossy.errors import MedlossyError
from medlossy.volume import Volume

#: The issue's ratios: the study's range, coarse enough to run every codec in minutes.
DEFAULT_RATIOS = (5.0, 10.0, 20.0, 50.0, 100.0)


def ratio_codecs() -> list[str]:
    """Installed codecs that offer a ratio target, in registry order."""
    names = []
    for name in codec_names():
        try:
            codec = get_codec(name)
        except ValueError:
            continue
        if "ratio" in codec.modes:
            names.append(name)
    return names


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def bench_one(volume: Volume, codec: str, ratio: float, scratch: Path, *, workers: int = 1,
              source: str = "<volume>") -> dict[str, Any]:
    """Compress ``volume`` at ``ratio`` with ``codec``, decode it, and time both."""
    store = scratch / f"{codec}_x{ratio:g}.zarr"
    voxels = math.prod(volume.shape)
    wall, cpu = _clock()
    attributes = compress_volume(volume, store, Target("ratio", ratio), codec_name=codec,
                                 workers=workers, source=source)
    compress_wall, compress_cpu = (a - b for a, b in zip(_clock(), (wall, cpu), strict=True))
    wall, cpu = _clock()
    read_store(store, workers=workers)
    decode_wall, decode_cpu = (a - b for a, b in zip(_clock(), (wall, cpu), strict=True))
    shutil.rmtree(store)
    achieved = attributes["achieved"]
    mvox = voxels / 1e6
    return {
        "codec": codec,
        "ratio_target": ratio,
        "ratio": achieved["ratio"],
        "reached": achieved["target_reached"],
        "psnr_db": achieved["psnr_db"],
        "max_abs_error": achieved["max_abs_error"],
        "setting": attributes["codec"]["setting"]["mode"],
        "passes": achieved["encode_passes"],
        "compress_s": round(compress_wall, 3),
        "compress_mvox_s": round(mvox / compress_wall, 2),
        "compress_mvox_cpu_s": round(mvox / max(compress_cpu, 1e-9), 2),
        "encode_pass_mvox_s": round(mvox * achieved["encode_passes"]
                                    / attributes["timing"]["encode_seconds"], 2),
        "decode_s": round(decode_wall, 3),
        "decode_mvox_s": round(mvox / decode_wall, 2),
        "decode_mvox_cpu_s": round(mvox / max(decode_cpu, 1e-9), 2),
    }


def bench_codecs(volume: Volume, ratios: Sequence[float] = DEFAULT_RATIOS,
                 codecs: Sequence[str] | None = None, *, workers: int = 1,
                 source: str = "<volume>", progress=None) -> pd.DataFrame:
    """One row per (codec, ratio); ``progress(row)`` is called after each."""
    codecs = list(codecs) if codecs is not None else ratio_codecs()
    for name in codecs:
        if "ratio" not in get_codec(name).modes:
            raise MedlossyError(None, f"codec {name!r} has no ratio mode to benchmark")
    rows = []
    with tempfile.TemporaryDirectory(prefix="medlossy-bench-") as scratch:
        for name in codecs:
            for ratio in ratios:
                try:
                    row = bench_one(volume, name, float(ratio), Path(scratch),
                                    workers=workers, source=source)
                except MedlossyError as error:  # out of this codec's reach on this volume
                    row = {"codec": name, "ratio_target": float(ratio), "ratio": math.nan,
                           "reached": False, "psnr_db": math.nan, "refused": error.problem}
                rows.append(row)
                if progress is not None:
                    progress(row)
    return pd.DataFrame(rows)


def rd_table(results: pd.DataFrame) -> pd.DataFrame:
    """PSNR (dB) per codec (rows) and target ratio (columns); achieved ratio off by more
    than 1% or not reached shown in brackets, a ratio the codec cannot reach as such."""
    def cell(row: pd.Series) -> str:
        if math.isnan(row.ratio):
            return "out of reach"
        text = f"{row.psnr_db:.2f}" if row.psnr_db is not None else "inf"
        return text if row.reached else f"{text} (x{row.ratio:.3g})"

    table = results.assign(cell=results.apply(cell, axis=1)).pivot(
        index="codec", columns="ratio_target", values="cell")
    table.columns = [f"x{c:g}" for c in table.columns]
    return table.reset_index()


def speed_table(results: pd.DataFrame) -> pd.DataFrame:
    """Median speeds per codec over the ratios (Mvox/s; per CPU second in brackets)."""
    grouped = results.groupby("codec", sort=False).median(numeric_only=True)
    return pd.DataFrame({
        "codec": grouped.index,
        "encode Mvox/s (one pass)": grouped.encode_pass_mvox_s.round(2).values,
        "compress Mvox/s (search)": [f"{w:.2f} ({c:.2f})" for w, c in
                                     zip(grouped.compress_mvox_s, grouped.compress_mvox_cpu_s,
                                         strict=True)],
        "passes": grouped.passes.values,
        "decode Mvox/s": [f"{w:.2f} ({c:.2f})" for w, c in
                          zip(grouped.decode_mvox_s, grouped.decode_mvox_cpu_s, strict=True)],
    })


def plot(results: pd.DataFrame, path: str | os.PathLike[str], title: str) -> None:
    """PSNR against achieved ratio per codec, and median encode/decode speeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rd, speed) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in results.groupby("codec", sort=False):
        rd.plot(rows.ratio, rows.psnr_db, marker="o", label=name)
    rd.set_xscale("log")
    rd.set_xlabel("ratio (raw 16-bit / stored bytes)")
    rd.set_ylabel("PSNR (dB)")
    rd.grid(True, which="both", alpha=0.3)
    rd.legend()
    medians = results.groupby("codec", sort=False).median(numeric_only=True)
    positions = range(len(medians))
    speed.bar([p - 0.2 for p in positions], medians.encode_pass_mvox_s, 0.4,
              label="encode (one pass)")
    speed.bar([p + 0.2 for p in positions], medians.decode_mvox_s, 0.4, label="decode")
    speed.set_xticks(list(positions), medians.index)
    speed.set_yscale("log")
    speed.set_ylabel("Mvox/s (median over ratios)")
    speed.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
