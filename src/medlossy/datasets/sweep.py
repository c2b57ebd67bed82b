"""Compress a dataset at every ratio: stores, nnU-Net datasets, a manifest.

Layout of a sweep folder::

    sweep.json                       what was asked (source, ratios, dataset ids), bad cases
    stores/r20/CASE_0000.zarr        the storage artefact: its bytes are the footprint
    nnunet/Dataset812_AMOS_r20/      nnU-Net v2 raw dataset, images decoded to NIfTI
                                     (layout "nifti") or links to the stores (layout
                                     "stores": CASE_0000.mlstore, read by nnU-Net through
                                     ``medlossy.nnunet.store_io``), labels copied bit-exact,
                                     dataset.json
    parts/r20/CASE_0000.json         one finished task: metrics, checksums, its source file
    manifest.csv                     all parts, one row per case x channel x ratio

Parts and the manifest name stores and decoded images relative to the sweep folder, so a
copied or moved sweep checks and reuses its own files (see :func:`sweep_file`).

Every file appears atomically. A task counts as done only when its part file exists and the
store and decoded image still match the checksums it records and its source image is the
file it records (size, mtime, sha256), so a run killed at any moment (kill -9 included)
resumes where it stopped, never uses anything half-written, and redoes a changed source.
Tasks run in a process pool, or on a Dask cluster through its concurrent.futures executor.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.checksums import sha256_file
from medlossy.codecs import CodecError, get_codec
from medlossy.codecs.pool import default_workers
from medlossy.compression import (
    FAR_REACHING,
    RATIO_TOLERANCE,
    Target,
    check_tile,
    compress_volume,
    compress_volume_ratios,
    ratio_reach,
)
from medlossy.datasets.nnunet_raw import Case, RawDataset, value_span
from medlossy.datasets.validation import case_problem
from medlossy.decompression import read_store
from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.io.nifti import write_nifti
from medlossy.jsonfile import write_json
from medlossy.metrics import CT_DATA_RANGE
from medlossy.orphans import die_with_parent, worker_context
from medlossy.outputs import check_own_folder
from medlossy.store import SliceStore
from medlossy.store.link import LINK_ENDING, NNUNET_READER, is_store_link, write_store_link
from medlossy.store.remote import folder_only
from medlossy.store.slice_store import DEFAULT_ZARR_FORMAT, shard_depth
from medlossy.terminal import progress_bar
from medlossy.volume import Volume

STUDY_RATIOS = (1, 2, 5, 10, 20, 50, 70, 100)
#: nnU-Net's ids for one's own datasets: 500 and up (below: its pretrained models), < 1000.
CUSTOM_IDS = range(500, 1000)
#: What a sweep folder holds at its top (see the module docstring; prepared: crops, DICOM).
SWEEP_LAYOUT = ("sweep.json", "manifest.csv", "report.csv", "report.md", "stores", "nnunet",
                "parts", "prepared")
_DATASET_NAME = re.compile(r"Dataset(\d{3})_.+")
#: How a ratio's nnU-Net dataset holds its images: decoded NIfTI copies, or links to the
#: stores (no decoded copy; nnU-Net reads them with ``MedlossyStoreIO``).
LAYOUTS = ("nifti", "stores")


@dataclass(frozen=True)
class SweepTask:
    """Compress one channel of one case at one ratio and decode it for nnU-Net."""

    case: str
    split: str
    channel: int
    modality: str
    image: str
    ratio: float
    data_range: float
    store: str
    #: the dataset's image: the decoded NIfTI, or a store link (layout "stores")
    decoded: str
    part: str
    #: the sweep folder; parts record ``store`` and ``decoded`` relative to it
    root: str
    #: None: JPEG 2000, or lossless Blosc at ratio 1 for data JPEG 2000 cannot hold exactly.
    codec: str | None = None
    #: Side of the square tiles each slice is stored as (None: whole slices).
    tile: int | None = None
    #: Zarr format of the store (3: sharded) and its slices per shard (None: one shard).
    zarr_format: int = DEFAULT_ZARR_FORMAT
    shard_slices: int | None = None


def ratio_tag(ratio: float) -> str:
    return f"r{ratio:g}"


def finished_part(task: SweepTask) -> dict | None:
    """The recorded result of ``task`` if its outputs still match their checksums."""
    part = Path(task.part)
    if not part.exists():
        return None
    try:
        row = json.loads(part.read_text())
        store = SliceStore(task.store)
    except (json.JSONDecodeError, MedlossyError):
        return None
    if row.get("ratio_target") != task.ratio or store.verify():
        return None
    if task.codec is not None and row.get("codec") != task.codec:
        return None  # the sweep was rerun with another codec
    if row.get("tile") != task.tile:
        return None  # or with other tiles
    if (store.zarr_format, store.shard_slices) != _stored_as(task, store):
        return None  # or in another Zarr format or shard size
    if row.get("store_crc32") != _store_checksum(store):
        return None
    decoded = Path(task.decoded)
    if not decoded.exists() or sha256_file(decoded) != row.get("decoded_sha256"):
        return None
    if task.image and source_changed(row, Path(task.image)):
        return None
    return row


def source_identity(image: Path) -> dict:
    """What a part records of the image it compressed, to see later whether it changed:
    the file's place in its dataset (images folder and name), size, mtime and sha256."""
    stat = image.stat()
    return {"file": f"{image.parent.name}/{image.name}", "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(image)}


def source_changed(row: dict, image: Path) -> bool:
    """Whether ``image`` is no longer the file the part ``row`` was compressed from.
    Unknown counts as unchanged: parts written before sources were recorded, or a source
    that is gone (a sweep kept without its dataset). The sha256 is read only when the size
    is the same and the mtime is not (a copied or touched file)."""
    recorded = row.get("source")
    if not recorded or not image.is_file():
        return False
    stat = image.stat()
    if stat.st_size != recorded["bytes"]:
        return True
    return stat.st_mtime_ns != recorded["mtime_ns"] and \
        sha256_file(image) != recorded["sha256"]


def _stored_as(task: SweepTask, store: SliceStore) -> tuple[int, int | None]:
    """The Zarr format and slices per shard that ``task`` writes ``store`` in."""
    if task.zarr_format == 2:
        return 2, None
    return 3, shard_depth(store.slices, store.depth, task.shard_slices)


def _store_checksum(store: SliceStore) -> str:
    return hashlib.sha256(json.dumps(store.attributes["chunk_crc32"]).encode()).hexdigest()


def run_task(task: SweepTask) -> dict:
    """Do one task (or reuse its verified result); returns its manifest row."""
    done = finished_part(task)
    if done is not None:
        return {**done, "reused": True}
    source = source_identity(Path(task.image))  # before reading: what was compressed
    volume = read_volume(task.image, task.modality, lazy=True)
    target = Target("lossless") if task.ratio == 1 else Target("ratio", task.ratio)
    attributes = compress_volume(volume, task.store, target, codec_name=task.codec,
                                 data_range=task.data_range, workers=1, source=task.image,
                                 tile=task.tile, zarr_format=task.zarr_format,
                                 shard_slices=task.shard_slices)
    started = time.perf_counter()
    decoded = read_store(task.store, workers=1)
    decode_seconds = time.perf_counter() - started
    return _finish(task, attributes, decoded, decode_seconds,
                   attributes["timing"]["encode_seconds"], source)


def run_image(tasks: Sequence[SweepTask]) -> list[dict]:
    """Do every ratio of one image (one channel of one case) together: the image is read
    once and its lossy ratios cut from layered JPEG 2000 encodes (``compress_volume_ratios``)
    instead of one search each. Finished ratios are reused as ``run_task`` does."""
    rows, todo = [], []
    for task in tasks:
        done = finished_part(task)
        if done is not None:
            rows.append({**done, "reused": True})
        else:
            todo.append(task)
    if not todo:
        return rows
    if any(task.codec is not None for task in tasks):
        return rows + [run_task(task) for task in todo]
    first = todo[0]
    by_ratio = {task.ratio: task for task in tasks}
    source = source_identity(Path(first.image))
    volume = read_volume(first.image, first.modality, lazy=True)

    def finish(ratio: float, attributes: dict, decoded: Volume, decode_seconds: float) -> None:
        # The group's encode time, shared out, so that a report's sums stay true.
        share = attributes["timing"]["encode_seconds"] / len(tasks)
        rows.append(_finish(by_ratio[ratio], attributes, decoded, decode_seconds, share,
                            source))

    # Every ratio is encoded again even when only some are left to do, so that a redone
    # store is the one an uninterrupted run writes.
    compress_volume_ratios(volume, {task.ratio: task.store for task in tasks},
                           data_range=first.data_range, workers=1, on_store=finish,
                           keep={task.ratio for task in todo}, source=first.image,
                           tile=first.tile, zarr_format=first.zarr_format,
                           shard_slices=first.shard_slices)
    return rows


def _finish(task: SweepTask, attributes: dict, decoded: Volume, decode_seconds: float,
            encode_seconds: float, source: dict) -> dict:
    """Write the dataset's image (the decoded NIfTI, or a link to the store) and the part
    file of a compressed task; its manifest row."""
    if is_store_link(task.decoded):
        write_store_link(task.decoded, task.store)
    else:
        with atomic_output(task.decoded) as temporary:
            write_nifti(decoded, temporary)
    achieved = attributes["achieved"]
    row = {
        "case": task.case, "split": task.split, "channel": task.channel,
        "modality": task.modality, "ratio_target": task.ratio,
        "ratio_achieved": achieved["ratio"], "target_reached": achieved["target_reached"],
        "raw_bytes": achieved["raw_bytes"], "stored_bytes": achieved["stored_bytes"],
        "psnr_db": achieved["psnr_db"], "data_range": achieved["data_range"],
        "mse": achieved["mse"], "max_abs_error": achieved["max_abs_error"],
        "encode_seconds": round(encode_seconds, 4),
        "decode_seconds": round(decode_seconds, 4),
        "codec": attributes["codec"]["name"], "tile": task.tile,
        "store": Path(task.store).relative_to(task.root).as_posix(),
        "decoded": Path(task.decoded).relative_to(task.root).as_posix(),
        "store_crc32": _store_checksum(SliceStore(task.store)),
        "decoded_sha256": sha256_file(Path(task.decoded)),
        "source": source,
    }
    write_json(Path(task.part), row)
    return {**row, "reused": False}


def written_root(store: str) -> Path | None:
    """The sweep folder an absolute store path was written in (parts and manifests of
    earlier versions): a store is ROOT/stores/<ratio>/<image>.zarr. None: a relative path."""
    path = Path(store)
    if not path.is_absolute() or len(path.parts) < 4 or path.parents[1].name != "stores":
        return None
    return path.parents[2]


def sweep_file(out: Path, row: dict, column: str) -> Path:
    """Where the ``column`` (store, decoded) of a manifest row of the sweep folder ``out``
    is: relative paths are relative to ``out``; absolute ones (earlier versions) are rebased
    from the folder the sweep was written in onto ``out``, so a copied or moved sweep reads
    its own files. A path outside the sweep folder raises: it is never read."""
    path = Path(row[column])
    root = written_root(row["store"])
    if root is not None and path.is_relative_to(root):
        path = path.relative_to(root)
    if path.is_absolute() or ".." in path.parts:
        raise MedlossyError(path, f"outside the sweep folder {out} (manifest row of case "
                                  f"{row['case']}, ratio {row['ratio_target']:g}): not read")
    return Path(out) / path


def image_reach(task: SweepTask) -> tuple[float, float | None] | None:
    """``ratio_reach`` of a task's image with its codec (one encode at each end); None when
    the image cannot be compressed at all (its task reports why, or skips the case)."""
    try:
        volume = read_volume(task.image, task.modality, lazy=True)
        return ratio_reach(volume, task.codec, workers=1, source=task.image, tile=task.tile,
                           zarr_format=task.zarr_format, shard_slices=task.shard_slices)
    except MedlossyError:
        return None


def _further(codec: str) -> str:
    others = [name for name in FAR_REACHING if name != codec]
    return f" or use --codec {' or '.join(others)}" if others else ""


def _out_of_reach(plan: SweepPlan, executor: Executor) -> dict[float, str]:
    """Lossy ratios that the codec cannot reach on some image still to do, each with why
    (a store at every ratio or none: sweeps compare ratios)."""
    firsts: dict[str, SweepTask] = {}
    for task in plan.tasks():
        if task.ratio > 1 and finished_part(task) is None:
            firsts.setdefault(task.image, task)
    name = plan.codec or "jpeg2k"
    reasons: dict[float, str] = {}
    for image, reach in zip(firsts, executor.map(image_reach, firsts.values()), strict=True):
        if reach is None:
            continue
        highest, lowest = reach
        for ratio in plan.ratios:
            if ratio in reasons or ratio == 1:
                continue
            if ratio > highest * (1.0 + RATIO_TOLERANCE):
                reasons[ratio] = (f"{image}: ratio x{ratio:g} is out of the reach of "
                                  f"codec {name!r}: its coarsest setting gives "
                                  f"x{highest:.2f} here")
            elif lowest is not None and ratio < lowest * (1.0 - RATIO_TOLERANCE):
                reasons[ratio] = (f"{image}: ratio x{ratio:g} is out of the reach of "
                                  f"codec {name!r}: its finest lossy setting gives "
                                  f"x{lowest:.2f} here and it has no lossless mode")
    return reasons


def _channel_ranges(dataset: RawDataset, cases: Sequence[Case]) -> dict[int, float]:
    """PSNR peak per channel: 4096 for CT, max - min over the whole dataset for MR (the
    spans read to detect a plain folder's modality are not read again)."""
    ranges = {}
    for channel in dataset.channels:
        if dataset.channel_modality(channel) == "CT":
            ranges[channel] = CT_DATA_RANGE
            continue
        low, high = np.inf, -np.inf
        for case in cases:
            image = Path(case.images[channel]).absolute()
            span = dataset.value_spans.get(str(image)) or value_span(image)
            low, high = min(low, span[0]), max(high, span[1])
        ranges[channel] = float(high - low) or 1.0
    return ranges


def resolve_dataset_folder(path: str | Path) -> Path:
    """A dataset folder, or ``SWEEP/r20`` for the ratio-20 dataset of a sweep folder."""
    path = folder_only(path, "a dataset", "its cases are listed and its labels read whole; "
                                          "a sweep's stores at a URL train with source "
                                          "\"store\"")
    if path.is_dir():
        return path
    sweep_file = path.parent / "sweep.json"
    if sweep_file.exists():
        datasets = json.loads(sweep_file.read_text())["datasets"]
        if path.name in datasets:
            return path.parent / "nnunet" / datasets[path.name]
        raise MedlossyError(path, f"no such ratio in this sweep (has {', '.join(datasets)})")
    raise MedlossyError(path, "no such dataset folder")


def nnunet_dataset_name(dataset: RawDataset, ratio: float, dataset_id: int) -> str:
    base = dataset.name.split("_", 1)[1] if dataset.name.startswith("Dataset") else dataset.name
    return f"Dataset{dataset_id:03d}_{base}_{ratio_tag(ratio)}"


@dataclass(frozen=True)
class SweepPlan:
    dataset: RawDataset
    out: Path
    ratios: tuple[float, ...]
    base_id: int | None
    cases: tuple[Case, ...]
    bad: dict[str, str]
    ranges: dict[int, float]
    ids: dict[float, int] = field(default_factory=dict)
    #: the source as the user named it (before any cropping or DICOM conversion)
    origin: Path | None = None
    #: the codec of every lossy ratio (None: JPEG 2000); ratio 1 is stored by the default
    #: lossless choice (JPEG 2000, or Blosc for data it cannot hold exactly), since every
    #: lossless codec holds the same values and not every codec has a lossless mode
    codec: str | None = None
    #: every store's tile side (None: whole slices); see ``SweepTask.tile``
    tile: int | None = None
    #: every store's Zarr format and slices per shard; see ``SweepTask.zarr_format``
    zarr_format: int = DEFAULT_ZARR_FORMAT
    shard_slices: int | None = None
    #: how the nnU-Net datasets hold their images (see ``LAYOUTS``)
    layout: str = "nifti"

    @property
    def image_ending(self) -> str:
        """The ending of the nnU-Net datasets' images (their dataset.json file_ending)."""
        return LINK_ENDING if self.layout == "stores" else self.dataset.file_ending

    def codec_for(self, ratio: float) -> str | None:
        return None if ratio == 1 else self.codec

    def dataset_folder(self, ratio: float) -> Path:
        return self.out / "nnunet" / nnunet_dataset_name(self.dataset, ratio, self.ids[ratio])

    def tasks(self) -> list[SweepTask]:
        tasks = []
        for ratio in self.ratios:
            tag = ratio_tag(ratio)
            folder = self.dataset_folder(ratio)
            for case in self.cases:
                for channel, image in sorted(case.images.items()):
                    stem = f"{case.name}_{channel:04d}"
                    tasks.append(SweepTask(
                        case=case.name, split=case.split, channel=channel,
                        modality=self.dataset.channel_modality(channel), image=str(image),
                        ratio=float(ratio), data_range=self.ranges[channel],
                        store=str(self.out / "stores" / tag / f"{stem}.zarr"),
                        decoded=str(folder / f"images{case.split}" /
                                    f"{stem}{self.image_ending}"),
                        part=str(self.out / "parts" / tag / f"{stem}.json"),
                        root=str(self.out), codec=self.codec_for(ratio), tile=self.tile,
                        zarr_format=self.zarr_format, shard_slices=self.shard_slices))
        return tasks


def _read_sweep_json(out: Path) -> dict:
    try:
        return json.loads((out / "sweep.json").read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MedlossyError(out / "sweep.json", f"corrupt ({error})") from None


def check_sweep_folder(out: Path, origin: Path, swept: Path | None = None) -> None:
    """Refuse an ``out`` that holds another source's sweep (the two would merge: one report,
    two datasets under one nnU-Net id), or that holds files a sweep does not write.
    ``swept``: the dataset compressed, when prepared from ``origin``."""
    out = Path(out)
    earlier = _read_sweep_json(out)
    if not earlier:
        check_own_folder(out, SWEEP_LAYOUT, "a medlossy sweep folder")
        return
    recorded = earlier.get("input")
    if recorded is None:  # sweeps before "input" was recorded: their dataset root
        recorded = earlier.get("source", "")
        if Path(recorded).is_relative_to(out.absolute() / "prepared"):
            return  # cropped or converted from DICOM: the original source was not recorded
    # a study's sweeps of a cropped copy recorded the copy before they recorded its origin
    sources = {Path(path).absolute().resolve() for path in (origin, swept) if path is not None}
    if Path(recorded).resolve() not in sources:
        raise MedlossyError(out, f"holds the sweep of {recorded}, not of {origin}; a sweep "
                                 "folder holds one source: choose another --out")


def _ids_in_use(out: Path, own: set[str], registry: Path | None = None) -> set[int]:
    """nnU-Net ids already taken: in this sweep's nnunet/, in the folders nnU-Net uses
    ($nnUNet_raw, $nnUNet_preprocessed, $nnUNet_results) and in ``registry`` (where the
    datasets will be registered), except this sweep's own datasets."""
    folders = [out / "nnunet", *(Path(os.environ[name]) for name in
                                 ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
                                 if os.environ.get(name))]
    if registry is not None:
        folders.append(registry)
    taken = set()
    for folder in folders:
        if folder.is_dir():
            for entry in folder.iterdir():
                match = _DATASET_NAME.fullmatch(entry.name)
                if match and entry.name not in own:
                    taken.add(int(match.group(1)))
    return taken


def default_first_id(origin: Path) -> int:
    """Where a source's ids start when none is given: a hash of the source's path, so sweeps
    of different sources sharing one nnUNet_raw start far apart, and a rerun starts alike."""
    digest = hashlib.sha256(str(Path(origin).absolute()).encode()).digest()
    return CUSTOM_IDS.start + int.from_bytes(digest[:8], "big") % len(CUSTOM_IDS)


def _dataset_ids(out: Path, ratios: Sequence[float], base_id: int | None,
                 origin: Path, registry: Path | None = None) -> dict[float, int]:
    """nnU-Net id per ratio, in ratio order. The ids an earlier run of this sweep gave keep
    their ratio, so adding a ratio later renames (and redoes) nothing. An explicit
    ``base_id`` counts up from there; by default ids start at :func:`default_first_id` and
    skip every id already in use (wrapping within 500..999)."""
    earlier = _read_sweep_json(out)
    kept = {}
    if base_id is None or earlier.get("base_id") == base_id:
        kept = {tag: int(name.split("_", 1)[0].removeprefix("Dataset"))
                for tag, name in earlier.get("datasets", {}).items()}
    taken = set(kept.values())
    if base_id is None:
        taken |= _ids_in_use(out, set(earlier.get("datasets", {}).values()), registry)
        candidates = [CUSTOM_IDS.start + (default_first_id(origin) - CUSTOM_IDS.start + k)
                      % len(CUSTOM_IDS) for k in range(len(CUSTOM_IDS))]
    else:
        candidates = list(range(base_id, 1000))
    free = iter(c for c in candidates if c not in taken)
    ids = {}
    for ratio in sorted(ratios):
        if ratio_tag(ratio) in kept:
            ids[ratio] = kept[ratio_tag(ratio)]
            continue
        ids[ratio] = next(free, None)
        if ids[ratio] is None:
            raise MedlossyError(None, "no free nnU-Net dataset id left for ratio "
                                      f"{ratio:g} (pass another --base-id)")
    return ids


def plan_sweep(dataset: RawDataset, out: Path, ratios: Sequence[float], *,
               base_id: int | None = None, skip_bad: bool = False,
               origin: Path | None = None, codec: str | None = None,
               tile: int | None = None, layout: str = "nifti",
               registry: Path | None = None,
               zarr_format: int = DEFAULT_ZARR_FORMAT,
               shard_slices: int | None = None) -> SweepPlan:
    """Validate every case, then lay out what to do; bad cases stop here unless skipped.

    ``origin``: the source as the user named it, when ``dataset`` was prepared from it
    (cropped, converted from DICOM); ``out`` must be new or this origin's sweep.
    ``base_id``: the first ratio's nnU-Net id; default: derived from the origin, see
    :func:`_dataset_ids`. ``codec``: every ratio's codec (None: JPEG 2000). ``tile``:
    store every slice as square tiles of this side (jpeg2k, htj2k; each ratio is then
    searched on its own, and ratio 1 of data that needs Blosc is stored whole).
    ``layout``: how the nnU-Net datasets hold their images (see ``LAYOUTS``). ``registry``:
    the nnU-Net raw folder the datasets will be registered in (``registration``);
    default ids skip the ids taken there.
    ``zarr_format`` 3: sharded stores, ``shard_slices`` slices per shard (None: one).
    """
    if layout not in LAYOUTS:
        raise MedlossyError(None, f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not ratios or any(r < 1 for r in ratios):
        raise MedlossyError(None, f"ratios must be >= 1 (1 = lossless), got {list(ratios)}")
    if codec is not None:
        try:
            modes = get_codec(codec).modes
        except CodecError as error:
            raise MedlossyError(None, str(error)) from None
        if "ratio" not in modes and any(r > 1 for r in ratios):
            raise MedlossyError(None, f"codec {codec!r} has no ratio mode; use it for ratio 1 "
                                      "(lossless) only")
    if tile is not None:
        check_tile(get_codec(codec or "jpeg2k"), tile)
    if base_id is not None and (base_id < 1 or base_id + len(ratios) - 1 > 999):
        raise MedlossyError(None, f"dataset ids {base_id}..{base_id + len(ratios) - 1} are "
                                  "outside nnU-Net's 1..999")
    # Absolute paths: tasks may run in other processes or on Dask workers, and the manifest
    # and sweep.json must not depend on the directory the sweep was started from.
    dataset = replace(dataset, root=dataset.root.absolute())
    out = Path(out).absolute()
    origin = Path(origin or dataset.root).absolute()
    check_sweep_folder(out, origin, dataset.root)
    good, bad = [], {}
    for case in dataset.cases():
        problem = case_problem(dataset, case)
        if problem is None:
            good.append(case)
        elif skip_bad:
            bad[case.name] = problem
        else:
            raise MedlossyError(dataset.root, problem)
    if not good:
        raise MedlossyError(dataset.root, "no usable case")
    ranges = _channel_ranges(dataset, good)
    ratios = tuple(sorted({float(r) for r in ratios}))
    ids = _dataset_ids(out, ratios, base_id, origin, registry)
    if max(ids.values()) > 999:
        raise MedlossyError(None, f"dataset id {max(ids.values())} is outside nnU-Net's 1..999")
    return SweepPlan(dataset, out, ratios, base_id, tuple(good), bad, ranges, ids, origin,
                     codec, tile, zarr_format, shard_slices, layout)


@contextmanager
def _executor(workers: int, scheduler: str | None) -> Iterator[Executor]:
    if scheduler is not None:
        try:
            from distributed import Client
        except ImportError:
            raise MedlossyError(None, "--scheduler needs Dask: pip install "
                                      "'medlossy[dask]'") from None
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as error:
            raise MedlossyError(scheduler, f"cannot reach the Dask scheduler ({error})") from None
        with client, client.get_executor() as executor:
            yield executor
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=worker_context(),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as executor:
        yield executor


def _copy_exact(source: Path, destination: Path) -> None:
    if destination.exists() and sha256_file(destination) == sha256_file(source):
        return
    with atomic_output(destination) as temporary:
        shutil.copyfile(source, temporary)


def _stored_codecs(plan: SweepPlan, manifest: pd.DataFrame, ratio: float) -> str:
    """The codec(s) the stores of ``ratio`` really used, from the manifest: ratio 1 is
    Blosc where JPEG 2000 cannot hold the values exactly (more than 16 bits, floats)."""
    if not manifest.empty:
        used = manifest.loc[manifest["ratio_target"] == ratio, "codec"].dropna().unique()
        if len(used):
            return ", ".join(sorted(str(name) for name in used))
    return plan.codec_for(ratio) or "jpeg2k"


def _label_names(cases: Sequence[Case]) -> dict[str, int]:
    """nnU-Net's ``labels`` for a folder without dataset.json: the values its label files
    hold, 0 as background, the others ``label_<value>`` (empty when no case has a label)."""
    import nibabel as nib

    values: set[int] = set()
    for case in cases:
        if case.label is not None:
            values.update(np.unique(np.asarray(nib.load(case.label).dataobj)).astype(int).tolist())
    if not values:
        return {}
    return {"background": 0} | {f"label_{value}": value for value in sorted(values - {0})}


def _write_nnunet_metadata(plan: SweepPlan, bad: dict[str, str],
                           manifest: pd.DataFrame) -> None:
    """Labels (bit-exact copies) and dataset.json of every ratio's nnU-Net dataset; cases
    that failed are taken out of it again, so nnU-Net sees a consistent dataset."""
    training = [case for case in plan.cases if case.split == "Tr" and case.name not in bad]
    labels_found = {} if plan.dataset.metadata.get("labels") else _label_names(training)
    label_ending = plan.dataset.label_ending
    other_ending = plan.dataset.file_ending if plan.layout == "stores" else LINK_ENDING
    for ratio in plan.ratios:
        folder = plan.dataset_folder(ratio)
        for case in plan.cases:
            # the case's own channels only: a glob on its name would also match the files
            # of a case whose name extends it (p1 -> p1_b_0000)
            for channel in plan.dataset.channels:
                stem = folder / f"images{case.split}" / f"{case.name}_{channel:04d}"
                # the other layout's image of an earlier run: a sweep holds one layout
                Path(f"{stem}{other_ending}").unlink(missing_ok=True)
                if case.name in bad:
                    Path(f"{stem}{plan.image_ending}").unlink(missing_ok=True)
            if case.name in bad:
                (folder / "labelsTr" / f"{case.name}{label_ending}").unlink(missing_ok=True)
        for case in training:
            if case.label is not None:
                _copy_exact(case.label, folder / "labelsTr" / f"{case.name}{label_ending}")
        metadata = {key: value for key, value in plan.dataset.metadata.items()
                    if key not in ("numTraining", "name", "dataset",
                                   "overwrite_image_reader_writer")}
        metadata["labels"] = metadata.get("labels") or labels_found
        codecs = _stored_codecs(plan, manifest, ratio)
        metadata.update({
            "name": folder.name.split("_", 1)[1],
            "numTraining": sum(case.label is not None for case in training),
            "medlossy": {"source": str(plan.dataset.root), "ratio": ratio,
                         "codec": codecs, "lossless": ratio == 1,
                         # where training with [training] source = "store" reads the images
                         "stores": os.path.relpath(plan.out / "stores" / ratio_tag(ratio),
                                                   folder),
                         "note": f"images decoded from {'lossless' if ratio == 1 else 'lossy'} "
                                 f"{codecs} stores; labels exact"},
        })
        if plan.layout == "stores":
            metadata.update(_stores_entries(plan, training, label_ending))
            metadata["medlossy"].update(
                layout="stores", label_ending=label_ending,
                note=f"images: links to {'lossless' if ratio == 1 else 'lossy'} {codecs} "
                     f"stores, read by nnU-Net with {NNUNET_READER}; labels exact")
        write_json(folder / "dataset.json", metadata)


def _stores_entries(plan: SweepPlan, training: Sequence[Case], label_ending: str) -> dict:
    """dataset.json entries of a stores-only dataset: nnU-Net's reader by name, the links'
    file ending, and the training cases listed one by one (nnU-Net's "dataset" key), since
    nnU-Net would otherwise look for labels ending in the images' ending."""
    labelled = [case for case in training if case.label is not None]
    return {
        "file_ending": LINK_ENDING,
        "overwrite_image_reader_writer": NNUNET_READER,
        "dataset": {case.name: {
            "images": [f"imagesTr/{case.name}_{channel:04d}{LINK_ENDING}"
                       for channel in sorted(case.images)],
            "label": f"labelsTr/{case.name}{label_ending}"} for case in labelled},
    }


def _clean_partials(out: Path) -> None:
    """Remove temporaries of a killed run: they are never complete, never reused."""
    for leftover in out.rglob(".*.partial-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _write_sweep_json(plan: SweepPlan, bad: dict[str, str],
                      out_of_reach: dict[str, str]) -> None:
    write_json(plan.out / "sweep.json", {
        "source": str(plan.dataset.root), "input": str(plan.origin or plan.dataset.root),
        # where the sweep was written: "source" under it (a cropped or converted copy in
        # prepared/) moves with the folder
        "root": str(plan.out),
        "ratios": list(plan.ratios),
        "codec": plan.codec or "jpeg2k",
        "tile": plan.tile,
        "layout": plan.layout,
        "zarr_format": plan.zarr_format,
        "shard_slices": plan.shard_slices,
        "base_id": plan.base_id,
        "datasets": {ratio_tag(r): plan.dataset_folder(r).name for r in plan.ratios},
        "psnr_ranges": {str(c): r for c, r in plan.ranges.items()},
        "bad_cases": bad,
        "out_of_reach": out_of_reach,
    })


def run_sweep(plan: SweepPlan, *, workers: int | None = None, scheduler: str | None = None,
              skip_bad: bool = False, layered: bool = True, drop_out_of_reach: bool = False,
              show_progress: bool = False) -> pd.DataFrame:
    """Run every task of ``plan``; returns the manifest (also written to manifest.csv).

    ``layered`` (default): each image's ratios are done together, the lossy ones cut from
    layered JPEG 2000 encodes (about one search's encodes for all of them); otherwise each
    ratio is its own job with its own rate search, as before.

    A ratio out of the codec's reach on any image still to do stops the sweep before
    anything is written (one encode per image at the codec's coarsest setting finds it);
    with ``drop_out_of_reach`` (a study's grid of ratios over datasets of any size) such
    ratios are left out instead, and sweep.json says why under "out_of_reach".
    A task that fails (say, truncated voxel data) stops the sweep with an error naming the
    file, or with ``skip_bad`` marks its case bad and lets the rest complete.
    """
    workers = workers or default_workers()
    _note_changed_sources(plan)
    with _executor(workers, scheduler) as executor:
        unreachable = _out_of_reach(plan, executor)
        if unreachable and not drop_out_of_reach:
            ratio = max(unreachable)
            raise MedlossyError(None, f"{unreachable[ratio]}; drop that ratio"
                                      f"{_further(plan.codec or 'jpeg2k')}")
        plan = replace(plan, ratios=tuple(r for r in plan.ratios if r not in unreachable))
        return _run_jobs(plan, executor, skip_bad=skip_bad, layered=layered,
                         show_progress=show_progress,
                         out_of_reach={ratio_tag(r): why for r, why in unreachable.items()})


def _note_changed_sources(plan: SweepPlan) -> None:
    """One note per case whose source changed since its parts were written (they are
    redone: ``finished_part`` no longer accepts them)."""
    noted = set()
    for task in plan.tasks():
        part = Path(task.part)
        if task.case in noted or not part.exists():
            continue
        try:
            row = json.loads(part.read_text())
        except json.JSONDecodeError:
            continue
        if source_changed(row, Path(task.image)):
            noted.add(task.case)
            print(f"note: {task.case}: source changed since the last run; recompressing",
                  file=sys.stderr)


def _run_jobs(plan: SweepPlan, executor: Executor, *, skip_bad: bool, layered: bool,
              show_progress: bool, out_of_reach: dict[str, str]) -> pd.DataFrame:
    """``run_sweep`` once every ratio left is known to be in reach."""
    plan.out.mkdir(parents=True, exist_ok=True)
    _clean_partials(plan.out)
    bad = dict(plan.bad)
    _write_sweep_json(plan, bad, out_of_reach)
    if layered:  # one job per image: all its ratios from shared encodes
        images: dict[tuple[str, int], list[SweepTask]] = {}
        for task in plan.tasks():
            images.setdefault((task.case, task.channel), []).append(task)
        jobs = [(run_image, tasks) for tasks in images.values()]
    else:  # one job per image and ratio, each searching its own rate
        jobs = [(run_task, task) for task in plan.tasks()]
    futures = {executor.submit(function, argument): argument for function, argument in jobs}
    for future in progress_bar(as_completed(futures), total=len(futures), unit="image",
                               desc=f"{plan.dataset.name} sweep", show=show_progress):
        job = futures[future]
        task = job[0] if isinstance(job, list) else job
        try:
            future.result()
        except Exception as error:  # worker errors arrive as whatever the task raised
            ratio = "some ratio" if isinstance(job, list) else f"ratio {task.ratio:g}"
            problem = error.args[0] if isinstance(error, MedlossyError) else \
                f"{task.image}: failed at {ratio} ({type(error).__name__}: {error})"
            if not skip_bad:
                raise MedlossyError(None, str(problem)) from None
            bad[task.case] = f"case {task.case}: {problem}"
    _write_sweep_json(plan, bad, out_of_reach)
    manifest = write_manifest(plan.out, exclude=set(bad))
    _write_nnunet_metadata(plan, bad, manifest)
    return manifest


def write_manifest(out: Path, exclude: set[str] = frozenset()) -> pd.DataFrame:
    """Rebuild manifest.csv from the part files, so it always matches what is on disk."""
    # A part's "source" (see ``source_identity``) is for resuming and verifying only.
    rows = [_relative_paths({k: v for k, v in json.loads(p.read_text()).items() if k != "source"})
            for p in sorted((out / "parts").glob("*/*.json"))]
    manifest = pd.DataFrame([row for row in rows if row["case"] not in exclude])
    if not manifest.empty:
        manifest = manifest.sort_values(["ratio_target", "case", "channel"])
    with atomic_output(out / "manifest.csv") as temporary:
        manifest.to_csv(temporary, index=False)
    return manifest


def read_manifest(out: Path) -> pd.DataFrame:
    """A finished sweep's manifest.csv, case names kept as written ("001" is a name, not the
    number 1: read as numbers they matched no case and every store looked damaged)."""
    path = out / "manifest.csv"
    try:
        return pd.read_csv(path, dtype={"case": str, "split": str})
    except FileNotFoundError:
        raise MedlossyError(out, "not a finished sweep (manifest.csv is missing; run "
                                 "`medlossy dataset compress` first)") from None
    except pd.errors.EmptyDataError:
        raise MedlossyError(path, "empty: no image was compressed") from None


def _relative_paths(row: dict) -> dict:
    """A part's row with its paths relative to the sweep folder: parts of earlier versions
    recorded absolute ones, of wherever the sweep was then."""
    root = written_root(row["store"])
    if root is None:
        return row
    return row | {column: Path(row[column]).relative_to(root).as_posix()
                  for column in ("store", "decoded") if Path(row[column]).is_relative_to(root)}
