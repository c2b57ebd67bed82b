"""Training patch supply from stores (medlossy bench loader) vs nnU-Net's blosc2 data.

Usage (writes bench/results/loader.{json,md}; stores are cached under bench/out/loader/):
    .venv/bin/python bench/loader.py [--seconds 10] [--workers 2] [--slices 200]
        [--only 'CT C x200'] [--codecs jpeg2k] [--variants 'full slice,level 1']
        [--no-blosc2] [--profile 10] [--results loader] [--decode-cache MB]

Data flow: two real-looking CTs -> medlossy stores at x20 (``compress_volume``, the rate
control of ``medlossy compress``), JPEG 2000 and HTJ2K, each written untiled and with
``--tile 256`` and ``--tile 128`` -> patch supply of 64x160x160 patches with
``medlossy.loading.measure_supply`` (DataLoader, ``--workers`` processes) for
  full slice: the untiled store, every slice of the patch decoded whole at level 0,
  tiled N:    the store written with ``--tile N``, a patch decoding only the tiles it touches,
  level 1:    the untiled store, each slice decoded at half resolution straight from the
              codestream (for low-resolution configurations; patch counted in level-1 voxels),
and nnU-Net 2.8's own blosc2 preprocessed format (``nnUNetDatasetBlosc2.save_case`` with
``comp_blosc2_params`` for the patch, float32 z-scored data + int16 seg), read patch by patch
through its mmap'd arrays the way its loader does. Storage and the store's own PSNR (peak
4096) are reported beside each. ``--profile N`` also reads N patches in this process under
cProfile with the CPU clock and reports the share of their CPU time spent decoding slices.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import shutil
import time
from pathlib import Path

import _common
import memory
import numpy as np

from medlossy.compression import Target, compress_volume
from medlossy.io import read_volume
from medlossy.loading import StorePatchDataset, set_decode_cache
from medlossy.loading.supply import measure_supply
from medlossy.store import SliceStore

PATCH = (64, 160, 160)
RATIO = 20.0
OUT = _common.OUT / "loader"
#: (label, resolution level, tile side or None) per store codec.
VARIANTS = (("full slice", 0, None), ("level 1 (half in-plane)", 1, None),
            ("tiled 256", 0, 256), ("tiled 128", 0, 128))


def _volumes(slices: int) -> dict[str, tuple[str, object]]:
    found = {}
    description, volume = _common.demo_cts()["CT B"]
    found["CT B"] = (description + " (real)", volume)
    path = memory.synthetic_ct(slices)
    volume = read_volume(path, "CT")
    volume.array = np.asarray(volume.array)
    found["CT C x200"] = (f"CT C's 20 real 512x512 slices interpolated to {slices} slices "
                          "(+10 HU noise), 0.98x0.98 mm", volume)
    return found


def store(name: str, volume, codec_name: str, tile: int | None, folder: Path) -> Path:
    """The x20 store ``medlossy compress --codec CODEC [--tile N]`` writes (cached)."""
    suffix = "" if tile is None else f"_t{tile}"
    path = folder / f"{name.replace(' ', '_')}_{codec_name}{suffix}_0000.zarr"
    if not path.exists():
        compress_volume(volume, path, Target("ratio", RATIO), codec_name=codec_name,
                        workers=2, tile=tile)
    return path


class BloscVolume:
    """nnU-Net's preprocessed case (blosc2, mmap) read box by box like its data loader."""

    def __init__(self, folder: Path, identifier: str, template) -> None:
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

        data, seg, _, _ = nnUNetDatasetBlosc2(str(folder), [identifier]).load_case(identifier)
        self.data, self.seg = data, seg
        self.shape = tuple(data.shape[1:])
        self.codec, self.store = template.codec, template.store
        self.source_shape, self.axial_axis = template.source_shape, template.axial_axis

    def read(self, start, size, threads=None) -> np.ndarray:
        box = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
        return np.asarray(self.data[(0, *box)])


def blosc2_case(volume, folder: Path, identifier: str) -> int:
    """Write the case as nnU-Net 2.8 preprocesses it; returns its bytes on disk."""
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import (
        comp_blosc2_params,
        nnUNetDatasetBlosc2,
    )

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{identifier}.b2nd"
    if not target.exists():
        hounsfield = _common.slices_first(volume)
        image = hounsfield.astype(np.float32)[None]
        image = (image - image.mean()) / image.std()  # nnU-Net stores normalised float32
        seg = (hounsfield > 300).astype(np.int16)[None]  # stand-in label map (bone/contrast)
        blocks, chunks = comp_blosc2_params(image.shape, PATCH, image.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, PATCH, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(image, seg, {}, str(folder / identifier), chunks=chunks,
                                      blocks=blocks, chunks_seg=chunks_seg,
                                      blocks_seg=blocks_seg, codec=blosc2.Codec.ZSTD, clevel=8)
    return sum(p.stat().st_size for p in folder.glob(f"{identifier}*.b2nd"))


def supply(dataset, workers: int, seconds: float) -> dict:
    return measure_supply(dataset, workers=workers, seconds=seconds)


def decode_share(dataset: StorePatchDataset, patches: int) -> dict:
    """CPU seconds of ``patches`` patch reads in this process and the shares spent in
    ``decode_slice`` (all of a slice's decoding) and in the decoding library's call itself
    (imagecodecs' or libopenjp2's), from cProfile on the CPU clock."""
    profile = cProfile.Profile(time.process_time)
    profile.runcall(lambda: [dataset[index] for index in range(1, patches + 1)])
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, _)
    total = sum(entry[3] for key, entry in stats.items() if key[2] == "__getitem__"
                and key[0].endswith("dataset.py"))
    slices = sum(entry[3] for key, entry in stats.items() if key[2] == "decode_slice")
    # imagecodecs' Cython functions are not profiled apart from their caller: the library
    # time is the codec's decode method's own time, or glymur's binding of opj_decode
    library = sum(entry[2] for key, entry in stats.items() if key[2] == "decode" and (
        key[0].endswith("openjp2.py") or os.path.join("medlossy", "codecs") in key[0]))
    return {"patches": patches, "cpu_seconds": round(total, 3),
            "decode_slice_share": round(slices / total, 3),
            "library_decode_share": round(library / total, 3)}


def _row(name: str, codec: str, label: str, run: dict, psnr: float | None,
         level: int) -> list:
    per_cpu = run["mvox_per_cpu_s"] or 0.0
    return [name, codec, label, f"x{run['ratio']:.2f}",
            "lossless" if codec.startswith("nnU-Net") else "-" if psnr is None else f"{psnr:.2f}",
            "x".join(map(str, run["patch"])), run["mvox_per_s"], per_cpu,
            round(2 * per_cpu, 1), round(2 * per_cpu * 4**level, 1), run["patches"],
            f"{run['load_before']:.2f} / {run['load_average'][0]:.2f}",
            _shares(run.get("profile"))]


def _shares(profile: dict | None) -> str:
    if profile is None:
        return "-"
    per_patch = 1000 * profile["cpu_seconds"] / profile["patches"]
    return (f"{profile['decode_slice_share']:.0%} / {profile['library_decode_share']:.0%} "
            f"({per_patch:.0f} ms)")


def _swap(dataset: StorePatchDataset, volume) -> StorePatchDataset:
    dataset.volumes = {name: [volume] for name in dataset.names}
    return dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--only", default=None, help="CT B or 'CT C x200'")
    parser.add_argument("--codecs", default="jpeg2k,htj2k", help="comma-separated")
    parser.add_argument("--variants", default=None,
                        help="comma-separated label prefixes ('full slice,level 1'); all")
    parser.add_argument("--blosc2", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N patches in-process for the decode share")
    parser.add_argument("--results", default="loader", help="bench/results/NAME.json")
    parser.add_argument("--decode-cache", type=float, default=0.0, metavar="MB",
                        help="each worker keeps up to MB of decoded slices/tiles")
    arguments = parser.parse_args()
    set_decode_cache(arguments.decode_cache)  # the DataLoader's workers inherit it
    variants = [v for v in VARIANTS if arguments.variants is None or any(
        v[0].startswith(p.strip()) for p in arguments.variants.split(","))]
    OUT.mkdir(parents=True, exist_ok=True)
    rows, document = [], {"machine": _common.machine(), "patch": list(PATCH), "runs": []}
    for name, (description, volume) in _volumes(arguments.slices).items():
        if arguments.only and name != arguments.only:
            continue
        patch = tuple(min(p, n) for p, n in zip(PATCH, _common.slices_first(volume).shape,
                                                strict=True))
        raw = math.prod(volume.shape) * 2
        for codec_name in arguments.codecs.split(","):
            for label, level, tile in variants:
                if tile is not None and tile >= max(volume.slice_shape()):
                    continue  # one tile would be the whole slice: the untiled store
                path = store(name, volume, codec_name, tile, OUT)
                attributes = SliceStore(path).attributes
                _common.progress(f"{name} {codec_name} {label}")
                dataset = StorePatchDataset(path, patch if level == 0 else
                                            (patch[0], patch[1] // 2, patch[2] // 2),
                                            samples=10**9, level=level)
                load_before = os.getloadavg()[0]
                result = supply(dataset, arguments.workers, arguments.seconds)
                bytes_ = _common.tree_bytes(path)
                psnr = attributes["achieved"]["psnr_db"] if level == 0 else None
                run = {**result, "volume": name, "description": description,
                       "codec": codec_name, "variant": label, "tile": attributes.get("tile"),
                       "ratio": round(raw / bytes_, 2), "stored_bytes": bytes_,
                       "psnr_db": psnr, "load_before": load_before}
                if arguments.profile:
                    run["profile"] = decode_share(dataset, arguments.profile)
                    _common.progress(f"  profile: {run['profile']}")
                document["runs"].append(run)
                rows.append(_row(name, codec_name, label, run, psnr, level))
        if not arguments.blosc2:
            continue
        folder = OUT / f"blosc2_{name.replace(' ', '_')}"
        if folder.exists() and not list(folder.glob("*.b2nd")):
            shutil.rmtree(folder)
        bytes_ = blosc2_case(volume, folder, "case")
        template = StorePatchDataset(store(name, volume, "jpeg2k", None, OUT), patch,
                                     samples=10**9)
        blosc = BloscVolume(folder, "case", template.volumes[template.names[0]][0])
        _common.progress(f"{name} blosc2")
        load_before = os.getloadavg()[0]
        result = supply(_swap(template, blosc), arguments.workers, arguments.seconds)
        run = {**result, "volume": name, "codec": "nnU-Net blosc2 (float32, zstd 8)",
               "variant": "chunks for the patch", "ratio": round(raw / bytes_, 2),
               "stored_bytes": bytes_, "psnr_db": None, "load_before": load_before}
        document["runs"].append(run)
        rows.append(_row(name, "nnU-Net blosc2", "float32 data + int16 seg", run, None, 0))
    markdown = "\n".join([
        f"Patch supply, {arguments.workers} DataLoader worker processes, {arguments.seconds:g} "
        "s per run after the first patch; ratio against 16-bit raw; Mvox/s wall clock and per "
        "CPU second (workers included); x2 cores = the CPU-time estimate for 2 idle cores; "
        "level-1 patches also in full-resolution voxels (x4); load = 1-minute load average "
        f"at the start / end of the run (2 cores); decode cache {arguments.decode_cache:g} MB "
        "per worker; decode share (with --profile): CPU share "
        "of in-process patch reads spent decoding slices / in the library's decode call, "
        "and CPU ms per patch.", "",
        _common.table(["volume", "codec", "variant", "ratio", "PSNR dB", "patch",
                       "Mvox/s wall", "Mvox/CPU-s", "x2 cores", "full-res equiv. x2 cores",
                       "patches", "load start / end", "decode share"], rows)])
    _common.save(arguments.results, document, markdown)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
