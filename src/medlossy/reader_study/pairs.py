"""Make the reader study's blinded pairs (STUDY.md, "Reader study").

For every pair of the chosen ratios (flicker and 2AFC designs: the reference, the least
compressed ratio, against each other one; ``designs``) and every dataset, ``per_pair``
axial slices are drawn at random (seeded) from the slices inside the body, no slice twice
while the dataset has enough (``spread_slices``). Both images of a pair come from the same
original slice, compressed at the two ratios; the less compressed one is on the left (for
flicker: shown first) in exactly half of each ratio pair's pairs, in random order
(``balanced_sides``). Pairs whose two images decode to the same pixels (a ratio stored
losslessly) are marked ``identical`` in the key. Each pair becomes one composite PNG
(left | gap | right) named by a random id, so a file's name, size or metadata
cannot tell which side is which.

Layout of the study folder::

    study.json        settings (ratios, datasets, window, seed); no pair-level information
    pairs.json        [{"id", "image"}] in random order: what the server shows, no ratios
    key.json          which side holds which ratio, per pair: server side only (mode 0600)
    images/<id>.png   one composite per pair, 8-bit grey, stored PNG (no zlib compression,
                      so every image of a given size has exactly the same byte count), no
                      metadata chunks: what a browser without script shows
    stacks/<id>.bin   the pair's slice and ``stack`` slices on each side, both sides as
                      16-bit values for the viewer (``stacks``); size set by the shape alone
    stores/<dataset>/r<ratio>/<case>_<channel>.zarr   the compressed volumes
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlossy.atomic import atomic_output
from medlossy.codecs import get_codec
from medlossy.compression import Target, compress_volume
from medlossy.datasets.nnunet_raw import ImageFile, RawDataset, open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.jsonfile import read_json
from medlossy.outputs import check_only
from medlossy.reader_study.designs import (
    DEFAULT_DESIGN,
    FLICKER_MS,
    FLICKER_MS_RANGE,
    get_design,
)
from medlossy.reader_study.stacks import sixteen_bit, stack_range, viewer_windows, write_stack
from medlossy.reader_study.windows import Window
from medlossy.store import SliceStore
from medlossy.terminal import progress_bar
from medlossy.volume import Volume

FORMAT_VERSION = 1
#: Grey level of the strip between the two images (the page background is darker).
GAP_GREY = 48
#: Width of that strip as a fraction of one image's width.
GAP_FRACTION = 0.04
#: A slice is "inside the body" when at least this fraction of its voxels is tissue.
BODY_FRACTION = 0.10
CT_TISSUE_HU = -500.0
#: MR tissue: above this fraction of the volume's 99th percentile.
MR_TISSUE_FRACTION = 0.10
SIDES = ("left", "right")
#: Most slices on each side of the chosen one a stack may hold (a 512 x 512 stack of 21
#: slices is 22 MB per pair).
MAX_STACK = 10


@dataclass(frozen=True)
class PairSettings:
    """What ``make_pairs`` does; validated once, here."""

    ratios: tuple[float, ...]
    per_pair: int
    window: Window
    seed: int = 0
    max_images: int | None = None
    #: Slices on each side of the chosen one that the viewer can scroll to.
    stack: int = 2
    #: What a pair shows and asks (``designs``): side-by-side, flicker or 2afc.
    design: str = DEFAULT_DESIGN
    #: Flicker only: how long each image stays on screen (ms).
    flicker_ms: int = FLICKER_MS

    def __post_init__(self) -> None:
        ratios = tuple(sorted({float(r) for r in self.ratios}))
        if len(ratios) < 2:
            raise MedlossyError(None, "the reader study needs at least two distinct ratios")
        if ratios[0] < 1:
            raise MedlossyError(None, f"ratios must be >= 1 (1 = lossless), got {ratios[0]:g}")
        object.__setattr__(self, "ratios", ratios)
        if self.per_pair < 1:
            raise MedlossyError(None, f"--per-pair must be at least 1, got {self.per_pair}")
        if not 0 <= self.stack <= MAX_STACK:
            raise MedlossyError(None, f"--stack must be 0 to {MAX_STACK}, got {self.stack}")
        if self.max_images is not None and self.max_images < 1:
            raise MedlossyError(None, f"--max-images must be at least 1, got {self.max_images}")
        get_design(self.design)
        low, high = FLICKER_MS_RANGE
        if not low <= self.flicker_ms <= high:
            raise MedlossyError(None, f"--flicker-ms must be {low} to {high}, got "
                                      f"{self.flicker_ms}")

    @property
    def ratio_pairs(self) -> list[tuple[float, float]]:
        return get_design(self.design).ratio_pairs(self.ratios)


def find_datasets(path: str | os.PathLike[str]) -> list[RawDataset]:
    """One nnU-Net raw dataset folder (has dataset.json), or a folder of such folders."""
    root = Path(path)
    if not root.is_dir():
        raise MedlossyError(root, "no such folder")
    if (root / "dataset.json").is_file():
        return [open_raw_dataset(root)]
    folders = sorted(p for p in root.iterdir() if (p / "dataset.json").is_file())
    if not folders:
        raise MedlossyError(root, "holds no nnU-Net raw dataset (no dataset.json in it or in "
                                  "its subfolders)")
    return [open_raw_dataset(folder) for folder in folders]


def _target(ratio: float) -> Target:
    return Target("lossless") if ratio == 1 else Target("ratio", ratio)


def body_slices(volume: Volume) -> list[int]:
    """Axial slice indices with at least ``BODY_FRACTION`` tissue voxels."""
    if volume.modality == "CT":
        threshold = CT_TISSUE_HU
    else:
        array = np.asarray(volume.array, dtype=np.float64)
        threshold = MR_TISSUE_FRACTION * float(np.percentile(array, 99))
    inside = []
    for start, slab in volume.slabs(32):
        fractions = (slab > threshold).reshape(slab.shape[0], -1).mean(axis=1)
        inside.extend(start + i for i, f in enumerate(fractions) if f >= BODY_FRACTION)
    return inside


def display_orientation(affine: np.ndarray, axial_axis: int):
    """A function turning a store slice into the radiological view.

    Rows run anterior to posterior and columns from the patient's right to left (the
    patient's right on the viewer's left), whatever the file's voxel order.
    """
    axes = [axis for axis in range(3) if axis != axial_axis]  # store slice = (axes[0], axes[1])
    x_axis = max(axes, key=lambda axis: abs(affine[0, axis]))
    y_axis = axes[1] if x_axis == axes[0] else axes[0]
    transpose = x_axis == axes[0]
    flip_rows = affine[1, y_axis] > 0  # index up = anterior: put anterior on top
    flip_columns = affine[0, x_axis] > 0  # index up = patient's right (RAS): right on the left

    def orient(image: np.ndarray) -> np.ndarray:
        image = image.T if transpose else image
        if flip_rows:
            image = image[::-1]
        if flip_columns:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    return orient


def gap_width(columns: int) -> int:
    return max(4, round(GAP_FRACTION * columns))


def compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Left | gap | right, one 8-bit image."""
    gap = np.full((left.shape[0], gap_width(left.shape[1])), GAP_GREY, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def write_png(image: np.ndarray, path: Path) -> None:
    """8-bit grey PNG, stored without zlib compression and without any metadata chunk.

    Stored blocks make the byte count a function of the image size alone, so a heavily
    compressed (smoother) pair cannot be told from its file size.
    """
    from PIL import Image

    Image.fromarray(image, mode="L").save(path, format="PNG", compress_level=0)


def _store_path(out: Path, dataset: str, ratio: float, image: ImageFile) -> Path:
    return out / "stores" / dataset / f"r{ratio:g}" / f"{image.case}_{image.channel:04d}.zarr"


def _existing_store(candidates: Sequence[Path], target: Target) -> SliceStore | None:
    for path in candidates:
        try:
            store = SliceStore(path)
        except MedlossyError:
            continue
        if store.attributes.get("target") == target.to_dict() and "achieved" in store.attributes:
            return store
    return None


def _open_or_compress(dataset: RawDataset, image: ImageFile, ratio: float, out: Path,
                      sweep: Path | None, workers: int | None) -> SliceStore:
    target = _target(ratio)
    own = _store_path(out, dataset.name, ratio, image)
    candidates = [own]
    if sweep is not None:
        relative = _store_path(Path("."), dataset.name, ratio, image)
        candidates = [sweep / relative, sweep / relative.relative_to("stores"), own]
    store = _existing_store(candidates, target)
    if store is None:
        volume = read_volume(image.path, image.modality, lazy=True)
        compress_volume(volume, own, target, workers=workers, source=str(image.path))
        store = SliceStore(own)
    return store


def _decode(store: SliceStore, index: int) -> np.ndarray:
    codec = get_codec(store.attributes["codec"]["name"])
    return store.mapping.to_values(store.decode_codes(index, codec)).astype(np.float64)


def _write_json(path: Path, document: Any, *, private: bool = False) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(document, indent=1) + "\n")
        if private:
            temporary.chmod(0o600)


@dataclass(frozen=True)
class _Draw:
    dataset: RawDataset
    image: ImageFile
    slice: int
    low: float
    high: float
    less_compressed: str  # "left" or "right"


def balanced_sides(count: int, rng: np.random.Generator, *, extra: str) -> list[str]:
    """``count`` sides in random order, half "left" and half "right"; ``extra`` gets the odd
    one. The less compressed image must not sit on one side more often within a ratio pair:
    a side preference of the raters would otherwise bias the score."""
    other = "right" if extra == "left" else "left"
    sides = [extra] * (count - count // 2) + [other] * (count // 2)
    return [sides[i] for i in rng.permutation(count)]


def spread_slices(candidates: int, cells: int, per_cell: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """For each of ``cells`` cells, ``per_cell`` distinct candidate indices, using every
    candidate as evenly as possible across cells (each at most once while there are enough).

    Showing a rater the same slice in several pairs lets them compare across pairs and
    wastes the data's variety (the first version drew 120 pairs from 73 slices).
    """
    uses = np.zeros(candidates, dtype=np.int64)
    chosen = []
    for _ in range(cells):
        order = rng.permutation(candidates)
        picks = order[np.argsort(uses[order], kind="stable")[:per_cell]]
        uses[picks] += 1
        chosen.append(picks)
    return chosen


def _draw(datasets: Sequence[RawDataset], settings: PairSettings,
          rng: np.random.Generator) -> list[_Draw]:
    draws = []
    ratio_pairs = settings.ratio_pairs
    # For odd per-pair counts the extra "less compressed" side alternates between datasets.
    extra_first = {pair: SIDES[int(rng.integers(2))] for pair in ratio_pairs}
    for number, dataset in enumerate(datasets):
        images = dataset.images()
        if settings.max_images is not None and settings.max_images < len(images):
            chosen = rng.choice(len(images), settings.max_images, replace=False)
            images = [images[i] for i in sorted(chosen)]
        candidates = []
        for image in images:
            volume = read_volume(image.path, image.modality, lazy=True)
            candidates.extend((image, index) for index in body_slices(volume))
        if len(candidates) < settings.per_pair:
            raise MedlossyError(dataset.root, f"only {len(candidates)} slices inside the body; "
                                              f"--per-pair {settings.per_pair} needs more")
        picks = spread_slices(len(candidates), len(ratio_pairs), settings.per_pair, rng)
        for (low, high), cell in zip(ratio_pairs, picks, strict=True):
            extra = extra_first[low, high]
            if number % 2:
                extra = "right" if extra == "left" else "left"
            sides = balanced_sides(len(cell), rng, extra=extra)
            for pick, side in zip(cell, sides, strict=True):
                image, index = candidates[int(pick)]
                draws.append(_Draw(dataset, image, index, low, high, side))
    return draws


def make_pairs(inputs: str | os.PathLike[str], out: str | os.PathLike[str],
               settings: PairSettings, *, stores: str | os.PathLike[str] | None = None,
               workers: int | None = None, show_progress: bool = False) -> dict[str, Any]:
    """Make the pair set in ``out``; returns the contents of study.json.

    ``stores``: a folder of stores from an earlier run (e.g. a ``medlossy study`` output or
    its ``stores/`` folder), laid out ``<dataset>/r<ratio>/<case>_<channel>.zarr``; stores
    found there for the same target are used instead of compressing again.
    """
    out = Path(out)
    if (out / "pairs.json").exists():
        raise MedlossyError(out / "pairs.json", "a pair set is already here; answers may refer "
                                                "to it, so make the new one in another folder")
    # What a killed earlier run left is resumed; anything else is the user's: never replaced.
    check_only(out, ("stores", "images", "stacks", "key.json", "study.json"),
               "a reader study folder")
    check_only(out / "images", re.compile(r"[0-9a-f]{32}\.png"), "a reader study's images")
    check_only(out / "stacks", re.compile(r"[0-9a-f]{32}\.bin"), "a reader study's stacks")
    datasets = find_datasets(inputs)
    rng = np.random.default_rng(settings.seed)
    draws = _draw(datasets, settings, rng)
    # The order pairs are written in (and so file times) must not follow the ratio pairs.
    draws = [draws[i] for i in rng.permutation(len(draws))]

    needed = sorted({(d.dataset.name, d.image.path, ratio) for d in draws
                     for ratio in (d.low, d.high)}, key=lambda t: (t[0], str(t[1]), t[2]))
    by_path = {d.image.path: (d.dataset, d.image) for d in draws}
    opened: dict[tuple[Path, float], SliceStore] = {}
    sweep = None if stores is None else Path(stores)
    for _, path, ratio in progress_bar(needed, desc="reader study stores", unit="store",
                                       show=show_progress):
        dataset, image = by_path[path]
        opened[path, ratio] = _open_or_compress(dataset, image, ratio, out, sweep, workers)

    key = {}
    ids = [uuid.uuid4().hex for _ in draws]  # random, so an id tells nothing
    draws_by_image = defaultdict(list)
    for pair_id, draw in zip(ids, draws, strict=True):
        draws_by_image[draw.image.path].append((pair_id, draw))
    with atomic_output(out / "images") as folder, atomic_output(out / "stacks") as stacks:
        folder.mkdir()
        stacks.mkdir()
        for path, image_draws in progress_bar(draws_by_image.items(),
                                              desc="reader study pairs", unit="image",
                                              show=show_progress):
            volume = read_volume(path, by_path[path][1].modality, lazy=True)
            image_stores = {ratio: opened[path, ratio] for ratio in settings.ratios
                            if (path, ratio) in opened}
            for pair_id, draw in image_draws:
                key[pair_id] = _write_pair(volume, image_stores, draw, settings,
                                           folder / pair_id, stacks / pair_id)
    pairs = [{"id": pair_id, "image": f"images/{pair_id}.png",
              "stack": f"stacks/{pair_id}.bin"} for pair_id in ids]

    study = {
        "format_version": FORMAT_VERSION,
        "datasets": [dataset.name for dataset in datasets],
        "ratios": list(settings.ratios),
        "ratio_pairs": [list(p) for p in settings.ratio_pairs],
        "per_pair": settings.per_pair,
        "pairs": len(pairs),
        "window": _windows_used(draws, settings.window),
        "seed": settings.seed,
        "max_images": settings.max_images,
        "stack": settings.stack,
        "design": settings.design,
        **({"flicker_ms": settings.flicker_ms} if get_design(settings.design).flicker else {}),
    }
    _write_json(out / "key.json", {"format_version": FORMAT_VERSION, "pairs": key},
                private=True)
    _write_json(out / "study.json", study)
    _write_json(out / "pairs.json", {"format_version": FORMAT_VERSION, "pairs": pairs})
    return study


def _write_pair(volume: Volume, stores: dict[float, SliceStore], draw: _Draw,
                settings: PairSettings, image_stem: Path, stack_stem: Path) -> dict[str, Any]:
    """Write one pair's composite PNG and stack file; returns its key entry."""
    image = draw.image
    orient = display_orientation(volume.affine, volume.axial_axis)
    window = settings.window if image.modality == "CT" else Window("auto")
    indices = stack_range(draw.slice, settings.stack, volume.shape[volume.axial_axis])
    originals = np.stack([orient(np.asarray(volume.array[_axial_index(volume, index)],
                                            dtype=np.float64)) for index in indices])
    centre = indices.index(draw.slice)
    original = originals[centre]
    bounds = window.bounds(original)
    decoded = {ratio: np.stack([orient(_decode(stores[ratio], index)) for index in indices])
               for ratio in (draw.low, draw.high)}
    left_ratio, right_ratio = ((draw.low, draw.high) if draw.less_compressed == "left"
                               else (draw.high, draw.low))
    write_png(compose(window.apply(decoded[left_ratio][centre], bounds),
                      window.apply(decoded[right_ratio][centre], bounds)),
              image_stem.with_suffix(".png"))
    write_stack(stack_stem.with_suffix(".bin"), decoded[left_ratio], decoded[right_ratio],
                centre, image.modality, sixteen_bit(originals),
                viewer_windows(image.modality, settings.window, original))
    return {
        "dataset": draw.dataset.name, "case": image.case, "channel": image.channel,
        "modality": image.modality, "slice": draw.slice,
        "stack": [indices.start, indices.stop - 1],
        "left": _side(stores[left_ratio], left_ratio),
        "right": _side(stores[right_ratio], right_ratio),
        "less_compressed": draw.less_compressed,
        # Both stores decode to the same values (x2 stored losslessly because lossless
        # already beats x2): there is nothing to see.
        "identical": bool(np.array_equal(decoded[draw.low][centre],
                                         decoded[draw.high][centre])),
        "window": {"name": window.name, "low": bounds[0], "high": bounds[1]},
    }


def _axial_index(volume: Volume, index: int) -> tuple:
    selection: list[Any] = [slice(None)] * 3
    selection[volume.axial_axis] = index
    return tuple(selection)


def _side(store: SliceStore, ratio: float) -> dict[str, Any]:
    achieved = store.attributes["achieved"]
    return {"ratio": ratio, "achieved_ratio": achieved["ratio"],
            "target_reached": achieved["target_reached"], "psnr_db": achieved["psnr_db"]}


def _windows_used(draws: list[_Draw], window: Window) -> str:
    """The window(s) the pairs were shown in: CT gets the chosen one, other modalities auto."""
    used = {window if draw.image.modality == "CT" else Window("auto") for draw in draws}
    if len(used) == 1:
        return used.pop().describe()
    return f"{window.describe()} for CT, {Window('auto').describe()} otherwise"


def load_pairs(study: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The pair manifest (ids and image files, no ratios)."""
    document = read_json(Path(study) / "pairs.json",
                         "missing: make the pairs first (medlossy reader make)")
    return document["pairs"]


def study_seed(study: str | os.PathLike[str]) -> int:
    """The seed ``reader make`` used, which also seeds every rater's order."""
    document = read_json(Path(study) / "study.json",
                         "missing: make the pairs first (medlossy reader make)")
    return int(document.get("seed", 0))


def study_design(study: str | os.PathLike[str]) -> tuple[str, int]:
    """(design, flicker half-period in ms) of a study; older studies are side-by-side."""
    path = Path(study) / "study.json"
    document = read_json(path, "missing: make the pairs first (medlossy reader make)")
    design = get_design(document.get("design", DEFAULT_DESIGN))
    flicker_ms, (low, high) = document.get("flicker_ms", FLICKER_MS), FLICKER_MS_RANGE
    # type(): a bool is an int to isinstance(); a hand-edited file is checked as make checks.
    if type(flicker_ms) is not int or not low <= flicker_ms <= high:
        raise MedlossyError(path, f"flicker_ms must be a whole number of ms from {low} to "
                                  f"{high}, got {flicker_ms!r}")
    return design.name, flicker_ms


def load_key(study: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    path = Path(study) / "key.json"
    try:
        return json.loads(path.read_text())["pairs"]
    except FileNotFoundError:
        raise MedlossyError(path, "missing: the key is needed to score answers") from None
    except json.JSONDecodeError as error:
        raise MedlossyError(path, f"not valid JSON ({error})") from None
