"""Training patch supply from stores (medlossy bench loader) vs nnU-Net's blosc2 data.

Usage (writes bench/results/loader.{json,md}; stores are cached under bench/out/loader/):
    .venv/bin/python bench/loader.py [--seconds 10] [--workers 2] [--slices 200]

Data flow: two real-looking CTs -> stores at x20 (JPEG 2000 through medlossy's rate control;
HTJ2K with a quantisation step bisected to x20) -> patch supply of 64x160x160 patches with
``medlossy.loading.measure_supply`` (DataLoader, ``--workers`` processes) for
  full-slice: every slice of the patch decoded whole at level 0 (the store as medlossy writes
              it today),
  tiled:      slices stored as 128x128 / 256x256 tile codestreams (each its own chunk, rate
              control per tile), a patch decodes only the tiles it touches (what-if: not a
              store medlossy writes; PSNR at the same ratio reported beside it),
  level 1:    each slice decoded at half resolution straight from the codestream (for
              low-resolution configurations; patch counted in level-1 voxels),
and nnU-Net 2.8's own blosc2 preprocessed format (``nnUNetDatasetBlosc2.save_case`` with
``comp_blosc2_params`` for the patch, float32 z-scored data + int16 seg), read patch by patch
through its mmap'd arrays the way its loader does. Storage is reported beside each.

Until the HTJ2K codec lands in medlossy's registry, this script registers a minimal HTJ2K slice
codec (imagecodecs/OpenJPH) of its own so that stores and the loader can use it.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from pathlib import Path

import _common
import imagecodecs
import memory
import numpy as np

from medlossy.checksums import crc32
from medlossy.codecs import Setting, SliceCodec, codec_names, get_codec
from medlossy.codecs.base import register
from medlossy.codecs.intensity import plan_mapping
from medlossy.compression import Target, compress_volume
from medlossy.io import read_volume
from medlossy.loading import StorePatchDataset
from medlossy.loading.decoders import decode_slice
from medlossy.loading.supply import measure_supply
from medlossy.store import StoreLayout, write_store

PATCH = (64, 160, 160)
RATIO = 20.0
OUT = _common.OUT / "loader"

if "htj2k" not in codec_names():
    @register
    class _BenchHtj2k(SliceCodec):
        """Minimal HTJ2K slice codec for this benchmark (OpenJPH through imagecodecs)."""

        name = "htj2k"
        quality_range = (1e-5, 1.0)

        def encode(self, image, setting):
            return imagecodecs.htj2k_encode(np.ascontiguousarray(image), level=setting.value)

        def decode(self, data):
            return imagecodecs.htj2k_decode(data)

        def store_codec(self, *args):
            from imagecodecs.numcodecs import Htj2k
            return Htj2k()

        def describe(self, setting):
            return {"name": self.name, "encoder": f"OpenJPH via imagecodecs "
                                                  f"{imagecodecs.__version__}"}


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


def jpeg2k_store(name: str, volume, folder: Path) -> Path:
    path = folder / f"{name.replace(' ', '_')}_jpeg2k_0000.zarr"
    if not path.exists():
        compress_volume(volume, path, Target("ratio", RATIO), workers=2)
    return path


def htj2k_store(name: str, volume, folder: Path) -> Path:
    """HTJ2K slices at one quantisation step, bisected until the store is at x20."""
    path = folder / f"{name.replace(' ', '_')}_htj2k_0000.zarr"
    if path.exists():
        return path
    slices = _common.slices_first(volume).astype(np.int16)
    raw = slices.size * 2
    low, high = -16.0, 0.0  # log2 of the step
    for _ in range(18):
        step = 2 ** ((low + high) / 2)
        streams = [imagecodecs.htj2k_encode(plane, level=step) for plane in slices]
        ratio = raw / sum(map(len, streams))
        low, high = ((low + high) / 2, high) if ratio < RATIO else (low, (low + high) / 2)
        if abs(ratio / RATIO - 1) < 0.005:
            break
    mapping = plan_mapping(float(slices.min()), float(slices.max()), np.dtype(np.int16), True)
    layout = StoreLayout(*slices.shape, mapping)
    attributes = {
        "format_version": 2, "software": "bench/loader.py", "modality": "CT",
        "source": {"file": name},
        "geometry": {"shape": list(volume.shape), "axial_axis": volume.axial_axis,
                     "affine": volume.affine.tolist(), "spacing": list(volume.spacing)},
        "intensity": mapping.to_dict(), "codec": {"name": "htj2k", "step": step},
        "chunk_crc32": [crc32(s) for s in streams],
        "achieved": {"ratio": round(ratio, 3)},
    }
    write_store(path, layout, get_codec("htj2k"), streams, attributes)
    return path


class TiledVolume:
    """What-if: every slice stored as tile x tile codestreams; a box decodes only its tiles."""

    def __init__(self, slices: np.ndarray, tile: int, encode, template) -> None:
        self.tile, self.slices_shape = tile, slices.shape
        self.shape = slices.shape
        self.codec, self.store, self.mapping = template.codec, template.store, template.mapping
        self.source_shape, self.axial_axis = template.source_shape, template.axial_axis
        rows, columns = slices.shape[1:]
        self.grid = (-(-rows // tile), -(-columns // tile))
        self.streams: dict[tuple[int, int, int], bytes] = {}
        for z in range(slices.shape[0]):
            for ty in range(self.grid[0]):
                for tx in range(self.grid[1]):
                    block = slices[z, ty * tile:(ty + 1) * tile, tx * tile:(tx + 1) * tile]
                    block = np.pad(block, [(0, tile - block.shape[0]),
                                           (0, tile - block.shape[1])], mode="edge")
                    self.streams[z, ty, tx] = encode(np.ascontiguousarray(block))
        self.bytes = sum(map(len, self.streams.values()))

    def decoded(self) -> np.ndarray:
        return self.read((0, 0, 0), self.slices_shape)

    def read(self, start, size, threads=None) -> np.ndarray:
        t = self.tile
        y0, x0 = start[1] // t, start[2] // t
        y1, x1 = (start[1] + size[1] - 1) // t, (start[2] + size[2] - 1) // t
        region = np.empty((size[0], (y1 - y0 + 1) * t, (x1 - x0 + 1) * t), np.float32)
        for k, z in enumerate(range(start[0], start[0] + size[0])):
            for ty in range(y0, y1 + 1):
                for tx in range(x0, x1 + 1):
                    region[k, (ty - y0) * t:(ty - y0 + 1) * t, (tx - x0) * t:(tx - x0 + 1) * t] = \
                        self.codec.decode(self.streams[z, ty, tx])
        oy, ox = start[1] - y0 * t, start[2] - x0 * t
        return region[:, oy:oy + size[1], ox:ox + size[2]]


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


def _tile_encoder(codec_name: str, step: float | None):
    """JPEG 2000 tiles at x20 each (OpenJPEG's per-codestream ratio); HTJ2K tiles at the
    whole-slice store's quantisation step."""
    if codec_name == "jpeg2k":
        codec = get_codec("jpeg2k")
        return lambda block: codec.encode(block, Setting("ratio", RATIO))
    return lambda block: imagecodecs.htj2k_encode(block, level=step)


def supply(dataset, workers: int, seconds: float) -> dict:
    return measure_supply(dataset, workers=workers, seconds=seconds)


def _row(name: str, codec: str, label: str, run: dict, psnr: float | None,
         level: int) -> list:
    per_cpu = run["mvox_per_cpu_s"] or 0.0
    return [name, codec, label, f"x{run['ratio']:.2f}",
            "lossless" if codec.startswith("nnU-Net") else "-" if psnr is None else f"{psnr:.2f}",
            "x".join(map(str, run["patch"])), run["mvox_per_s"], per_cpu,
            round(2 * per_cpu, 1), round(2 * per_cpu * 4**level, 1), run["patches"],
            run["load_average"][0]]


def _swap(dataset: StorePatchDataset, volume) -> StorePatchDataset:
    dataset.volumes = {name: [volume] for name in dataset.names}
    return dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--only", default=None, help="CT B or 'CT C x200'")
    arguments = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows, document = [], {"machine": _common.machine(), "patch": list(PATCH), "runs": []}
    for name, (description, volume) in _volumes(arguments.slices).items():
        if arguments.only and name != arguments.only:
            continue
        patch = tuple(min(p, n) for p, n in zip(PATCH, _common.slices_first(volume).shape,
                                                strict=True))
        raw = math.prod(volume.shape) * 2
        slices = _common.slices_first(volume).astype(np.int16)
        for codec_name, make in (("jpeg2k", jpeg2k_store), ("htj2k", htj2k_store)):
            path = make(name, volume, OUT)
            stored = _common.tree_bytes(path)
            variants = [("full slice", 0, None), ("level 1 (half in-plane)", 1, None),
                        ("tiled 256", 0, 256), ("tiled 128", 0, 128)]
            for label, level, tile in variants:
                if tile is not None and any(n % tile for n in slices.shape[1:]):
                    continue  # padded edge tiles would skew the ratio: whole tiles only
                _common.progress(f"{name} {codec_name} {label}")
                dataset = StorePatchDataset(path, patch if level == 0 else
                                            (patch[0], patch[1] // 2, patch[2] // 2),
                                            samples=10**9, level=level)
                bytes_, psnr = stored, None
                template = dataset.volumes[dataset.names[0]][0]
                if level == 0 and tile is None:
                    decoded = np.stack([decode_slice(template.codec, template.store.codestream(i))
                                        for i in range(template.shape[0])])
                    psnr = _common.psnr(slices, decoded)
                if tile is not None:
                    step = template.store.attributes["codec"].get("step")
                    tiled = TiledVolume(slices, tile, _tile_encoder(codec_name, step), template)
                    bytes_, psnr = tiled.bytes, _common.psnr(slices, tiled.decoded())
                    _swap(dataset, tiled)
                result = supply(dataset, arguments.workers, arguments.seconds)
                run = {**result, "volume": name, "description": description,
                       "codec": codec_name, "variant": label, "ratio": round(raw / bytes_, 2),
                       "stored_bytes": bytes_,
                       "psnr_db": None if psnr is None else round(psnr, 2)}
                document["runs"].append(run)
                rows.append(_row(name, codec_name, label, run, psnr, level))
        folder = OUT / f"blosc2_{name.replace(' ', '_')}"
        if folder.exists() and not list(folder.glob("*.b2nd")):
            shutil.rmtree(folder)
        bytes_ = blosc2_case(volume, folder, "case")
        template = StorePatchDataset(jpeg2k_store(name, volume, OUT), patch, samples=10**9)
        blosc = BloscVolume(folder, "case", template.volumes[template.names[0]][0])
        _common.progress(f"{name} blosc2")
        result = supply(_swap(template, blosc), arguments.workers, arguments.seconds)
        run = {**result, "volume": name, "codec": "nnU-Net blosc2 (float32, zstd 8)",
               "variant": "chunks for the patch", "ratio": round(raw / bytes_, 2),
               "stored_bytes": bytes_, "psnr_db": None}
        document["runs"].append(run)
        rows.append(_row(name, "nnU-Net blosc2", "float32 data + int16 seg", run, None, 0))
    markdown = "\n".join([
        f"Patch supply, {arguments.workers} DataLoader worker processes, {arguments.seconds:g} "
        "s per run after the first patch; ratio against 16-bit raw; Mvox/s wall clock and per "
        "CPU second (workers included); x2 cores = the CPU-time estimate for 2 idle cores; "
        "level-1 patches also in full-resolution voxels (x4); load = 1-minute load average "
        "at the end of the run (2 cores).", "",
        _common.table(["volume", "codec", "variant", "ratio", "PSNR dB", "patch",
                       "Mvox/s wall", "Mvox/CPU-s", "x2 cores", "full-res equiv. x2 cores",
                       "patches", "load"], rows)])
    _common.save("loader", document, markdown)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
