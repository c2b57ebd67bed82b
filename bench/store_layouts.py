"""Store layouts side by side: Zarr 2 one file per slice, Zarr 2 tiled, Zarr 3 sharded.

Usage (writes bench/results/store_layouts.{json,md}; stores under bench/out/store_layouts/):
    .venv/bin/python bench/store_layouts.py [--slices 64] [--ratios 1,2,5,10,20,50,70,100]
        [--tile 128] [--shard-slices 64] [--patches 6] [--supply-seconds 8]
    .venv/bin/python bench/store_layouts.py --supply-only [--supply-rounds 6] [--workers 0]
        (the loader's supply again on the x20 stores of the last run, more rounds:
        bench/results/store_layouts_supply.{json,md})

Data flow: a CT-like 512x512xN int16 volume (CT C's 20 real slices interpolated to N slices,
+10 HU noise: synthetic, bench/memory.py) -> at every ratio, the stores ``medlossy compress``
writes in each layout (``compress_volume_ratios``: one shared encode where the layout
allows) -> per store: files (and the count for a 500-slice volume, from the layout), bytes,
achieved ratio and its error against the target, encode time per layout -> random
64x160x160 patches read with ``medlossy.loading.StoreVolume`` (bytes read counted and set
against the bytes of the chunks the patch touches: the read amplification; a fresh store per
patch, so every shard index is read too), the same patch through stock zarr with a counting
store -> the loader's patch supply (``measure_supply``) for the tiled layouts at x20,
alternating v2 and v3 runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import _common
import memory
import numpy as np

from medlossy.compression import compress_volume_ratios
from medlossy.io import read_volume
from medlossy.loading import StorePatchDataset
from medlossy.loading.supply import measure_supply
from medlossy.loading.volume import StoreVolume
from medlossy.store import SliceStore
from medlossy.store.slice_store import StoreLayout

OUT = _common.OUT / "store_layouts"
PATCH = (64, 160, 160)
#: The volume the file counts are given for (the issue's 512x512x500 CT).
FULL_SLICES = 500


#: ``--layouts`` keys (encoded in the order given).
LAYOUT_KEYS = ("v2-slice", "v2-tiled", "v3-sharded", "v3-tiled")


def layouts(tile: int, shard_slices: int, keys: list[str]) -> dict[str, dict]:
    """The chosen layouts: name -> ``compress_volume_ratios`` options."""
    every = {"v2-slice": ("v2 per slice", {}),
             "v2-tiled": (f"v2 tiled {tile}", {"tile": tile}),
             "v3-sharded": (f"v3 sharded ({shard_slices} slices/shard)",
                            {"zarr_format": 3, "shard_slices": shard_slices}),
             "v3-tiled": (f"v3 sharded, tiled {tile}",
                          {"zarr_format": 3, "tile": tile, "shard_slices": shard_slices})}
    return dict(every[key] for key in keys)


def files_for(slices: int, options: dict) -> int:
    """Files of a 512 x 512 x ``slices`` store in a layout (metadata files included)."""
    layout = StoreLayout(slices, 512, 512, None, 1, options.get("tile"),
                         options.get("zarr_format", 2), options.get("shard_slices"))
    if layout.zarr_format == 2:
        return layout.chunks + 3  # .zgroup, .zattrs, 0/.zarray
    return -(-slices // layout.shard_depth) + 2  # zarr.json, 0/zarr.json


class CountingStore(SliceStore):
    """A store that counts the bytes it reads."""

    read_bytes = 0

    def read_range(self, file: Path, offset: int, length: int) -> bytes:
        data = super().read_range(file, offset, length)
        CountingStore.read_bytes += len(data)
        return data


def touched_bytes(store: SliceStore, start, size) -> int:
    grid = store.grid
    tiles = grid.touched(slice(start[1], start[1] + size[1]),
                         slice(start[2], start[2] + size[2]))
    return sum(len(store.codestream(z * grid.per_slice + t))
               for z in range(start[0], start[0] + size[0]) for t in tiles)


def patch_reads(path: Path, starts: list[tuple[int, int, int]], patch) -> dict:
    """Patches read with a fresh ``StoreVolume`` each (shard indexes read every time)."""
    import medlossy.loading.volume as loading_volume

    loading_volume.SliceStore = CountingStore
    try:
        seconds, amplification = [], []
        for start in starts:
            CountingStore.read_bytes = 0
            began = time.perf_counter()
            StoreVolume(path).read(start, patch)
            seconds.append(time.perf_counter() - began)
            amplification.append(CountingStore.read_bytes / touched_bytes(SliceStore(path),
                                                                          start, patch))
    finally:
        loading_volume.SliceStore = SliceStore
    voxels = math.prod(patch)
    return {"patch_mvox_per_s": round(voxels / statistics.median(seconds) / 1e6, 2),
            "read_amplification": round(max(amplification), 3)}


def stock_amplification(path: Path, start, patch) -> float:
    """Bytes stock zarr reads for one patch over the bytes of the chunks it touches."""
    import zarr
    from zarr.storage import LocalStore, WrapperStore

    import medlossy.codecs.zarr3  # noqa: F401  (what the entry points load when installed)

    class Counting(WrapperStore):
        read = 0

        async def get(self, key, prototype, byte_range=None):
            value = await self._store.get(key, prototype, byte_range)
            if value is not None and not key.endswith((".zarray", ".zattrs", ".zgroup",
                                                       "zarr.json")):
                Counting.read += len(value)
            return value

    array = zarr.open_group(Counting(LocalStore(str(path), read_only=True)), mode="r")["0"]
    array[tuple(slice(s, s + n) for s, n in zip(start, patch, strict=True))]
    return round(Counting.read / touched_bytes(SliceStore(path), start, patch), 3)


def supply(paths: dict[str, Path], patch, seconds: float, rounds: int,
           workers: int = 1) -> dict[str, list]:
    """Patch supply of each store, runs alternating between them."""
    runs: dict[str, list] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            dataset = StorePatchDataset(path, patch, samples=10**9)
            result = measure_supply(dataset, workers=workers, seconds=seconds)
            runs[name].append({key: result[key] for key in (
                "mvox_per_s", "mvox_per_cpu_s", "patches", "load_average")})
    return runs


def supply_only(arguments: argparse.Namespace) -> None:
    """The loader's supply on the x20 stores of the last run, v2 and v3 alternating."""
    pairs = {name: OUT / folder / "r20.zarr" for name, folder in (
        ("v2 per slice", "v2_per_slice"),
        (f"v3 sharded ({arguments.shard_slices} slices/shard)",
         f"v3_sharded_({arguments.shard_slices}_slices_shard)"),
        (f"v2 tiled {arguments.tile}", f"v2_tiled_{arguments.tile}"),
        (f"v3 sharded, tiled {arguments.tile}", f"v3_sharded_tiled_{arguments.tile}"))}
    slices = SliceStore(next(iter(pairs.values()))).slices
    patch = (min(PATCH[0], slices), *PATCH[1:])
    document = {"machine": _common.machine(), "patch": patch, "workers": arguments.workers,
                "seconds": arguments.supply_seconds, "supply": supply(
                    pairs, patch, arguments.supply_seconds, arguments.supply_rounds,
                    arguments.workers)}
    rows = []
    for name, runs in document["supply"].items():
        wall = [r["mvox_per_s"] for r in runs]
        cpu = [r["mvox_per_cpu_s"] for r in runs]
        rows.append([name, f"{statistics.median(wall):.2f}", f"{statistics.median(cpu):.2f}",
                     " / ".join(f"{v:.2f}" for v in cpu),
                     f"{min(r['load_average'][0] for r in runs):.1f}-"
                     f"{max(r['load_average'][0] for r in runs):.1f}"])
    markdown = "\n".join([
        _common.machine_markdown(document["machine"]), "",
        f"Loader supply at x20 ({'x'.join(map(str, patch))} patches, "
        f"{arguments.workers} DataLoader workers (0: in the main process), "
        f"{arguments.supply_seconds:g} s per run, {arguments.supply_rounds} rounds, the four "
        "stores alternating within each round):", "",
        _common.table(["layout", "Mvox/s wall (median)", "Mvox/CPU-s (median)",
                       "Mvox/CPU-s per run", "load"], rows)])
    _common.save("store_layouts_supply", document, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--ratios", default="1,2,5,10,20,50,70,100")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--shard-slices", type=int, default=64)
    parser.add_argument("--patches", type=int, default=6)
    parser.add_argument("--supply-seconds", type=float, default=8.0)
    parser.add_argument("--supply-rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2,
                        help="encode processes; with --supply-only, DataLoader workers")
    parser.add_argument("--supply-only", action="store_true")
    parser.add_argument("--layouts", default=",".join(LAYOUT_KEYS),
                        help=f"comma-separated, of {', '.join(LAYOUT_KEYS)}")
    arguments = parser.parse_args()
    if arguments.supply_only:
        supply_only(arguments)
        return
    ratios = [float(r) for r in arguments.ratios.split(",")]
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    volume = read_volume(memory.synthetic_ct(arguments.slices), "CT")
    volume.array = np.asarray(volume.array)
    patch = tuple(min(p, n) for p, n in zip(PATCH, _common.slices_first(volume).shape,
                                            strict=True))
    rng = np.random.default_rng(0)
    starts = [tuple(int(rng.integers(0, n - p + 1)) for p, n in zip(
        patch, _common.slices_first(volume).shape, strict=True))
        for _ in range(arguments.patches)]
    document = {"machine": _common.machine(), "slices": arguments.slices, "patch": patch,
                "ratios": ratios, "layouts": {}, "stores": []}
    rows = []
    chosen = layouts(arguments.tile, arguments.shard_slices, arguments.layouts.split(","))
    for name, options in chosen.items():
        _common.progress(f"encoding: {name}")
        folder = OUT / name.replace(" ", "_").replace("/", "_").replace(",", "")
        outputs = {r: folder / f"r{r:g}.zarr" for r in ratios}
        began = time.perf_counter()
        written = compress_volume_ratios(volume, outputs, workers=arguments.workers,
                                         **options)
        encode = time.perf_counter() - began
        document["layouts"][name] = {"options": options, "encode_seconds": round(encode, 1),
                                     "files_500_slices": files_for(FULL_SLICES, options)}
        for ratio in ratios:
            path, achieved = outputs[ratio], written[ratio]["achieved"]
            files = sum(1 for p in path.rglob("*") if p.is_file())
            reads = patch_reads(path, starts, patch)
            stock = stock_amplification(path, starts[0], patch)
            error = 100 * (achieved["ratio"] / ratio - 1) if ratio > 1 else None
            store = {"layout": name, "ratio": ratio, "files": files,
                     "stored_bytes": achieved["stored_bytes"], "achieved": achieved["ratio"],
                     "ratio_error_percent": error, "psnr_db": achieved["psnr_db"], **reads,
                     "stock_zarr_read_amplification": stock}
            document["stores"].append(store)
            rows.append([name, f"x{ratio:g}", files, achieved["stored_bytes"],
                         f"x{achieved['ratio']:.3f}",
                         "lossless" if error is None else f"{error:+.2f}%",
                         reads["patch_mvox_per_s"], reads["read_amplification"], stock])
        # A long run (500 slices: hours) keeps what it measured if it is stopped.
        _common.RESULTS.mkdir(parents=True, exist_ok=True)
        (_common.RESULTS / "store_layouts.partial.json").write_text(
            json.dumps(document, indent=2, default=str) + "\n")
    tiled = {name: OUT / name.replace(" ", "_").replace("/", "_").replace(",", "")
             / "r20.zarr" for name in chosen if "tiled" in name}
    _common.progress("patch supply")
    document["supply"] = supply(tiled, patch, arguments.supply_seconds,
                                arguments.supply_rounds)
    summary = [[name, info["files_500_slices"], info["encode_seconds"],
                round(arguments.slices * 512 * 512 * len(ratios) / info["encode_seconds"] / 1e6,
                      2)] for name, info in document["layouts"].items()]
    supply_rows = [[name, " / ".join(f"{r['mvox_per_s']:.2f}" for r in runs),
                    " / ".join(f"{r['mvox_per_cpu_s']:.2f}" for r in runs),
                    " / ".join(f"{r['load_average'][0]:.1f}" for r in runs)]
                   for name, runs in document["supply"].items()]
    markdown = "\n".join([
        _common.machine_markdown(document["machine"]), "",
        f"Volume: 512 x 512 x {arguments.slices} int16, CT-like (synthetic: CT C's real "
        "slices interpolated, +10 HU noise); JPEG 2000; ratio against 16-bit raw, every "
        f"stored byte counted. Patches {'x'.join(map(str, patch))}, {arguments.patches} "
        "random positions, one thread, a fresh store per patch (indexes read every time).",
        "", _common.table(["layout", f"files at 512x512x{FULL_SLICES}",
                           f"encode s ({len(ratios)} ratios)", "encode Mvox/s"], summary),
        "", _common.table(["layout", "ratio", "files", "bytes", "achieved", "ratio error",
                           "patch Mvox/s", "read ampl. (medlossy, worst)",
                           "read ampl. (stock zarr)"], rows),
        "", f"Loader supply at x20, {arguments.supply_seconds:g} s per run, 1 worker, runs "
            "alternating (each run's figure, then the next):", "",
        _common.table(["layout", "Mvox/s wall", "Mvox/CPU-s", "load at end"], supply_rows)])
    _common.save("store_layouts", document, markdown)
    (_common.RESULTS / "store_layouts.partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
