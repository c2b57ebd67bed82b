"""Read an nnU-Net v2 raw dataset (dataset.json, imagesTr, labelsTr, imagesTs), or a plain
folder of image/label pairs presented the same way.

nnU-Net's naming: ``CASE_XXXX<file_ending>`` where XXXX is the channel index; labels are
``labelsTr/CASE<file_ending>``. A plain folder holds ``images/NAME.nii.gz`` and optionally
``labels/NAME.nii.gz``: one channel; a case with a label is a training case, one without is
a test case (nnU-Net's imagesTs), so a sweep never puts an unlabelled image in imagesTr.
A plain folder's modality is given, or detected over all its cases by the rule every command
uses (``medlossy.metrics.detect_modality``): nnU-Net plans CT normalisation for "CT" only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.jsonfile import read_json
from medlossy.metrics import detect_modality

#: Why a dataset's channel is CT or not, when its dataset.json says so.
NAMED_CHANNELS = "dataset.json channel_names"


@dataclass(frozen=True)
class ImageFile:
    """One channel of one case."""

    case: str
    channel: int
    modality: str
    path: Path
    split: str  # "Tr" or "Ts"


@dataclass(frozen=True)
class Case:
    """A case: its channel images and, for training cases, its label file."""

    name: str
    split: str
    images: dict[int, Path] = field(default_factory=dict)
    label: Path | None = None


@dataclass(frozen=True)
class RawDataset:
    root: Path
    metadata: dict
    plain: bool = False
    #: why channel_names say what they say ("given", "auto: ..." for a plain folder)
    modality_how: str = NAMED_CHANNELS
    #: (min, max) of each image read to detect the modality, by absolute path: not read again
    value_spans: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def file_ending(self) -> str:
        return self.metadata.get("file_ending", ".nii.gz")

    @property
    def label_ending(self) -> str:
        """The ending of label files (and predictions): the images' ending, except in a
        stores-only sweep dataset, whose images are store links and labels NIfTI."""
        return self.metadata.get("medlossy", {}).get("label_ending", self.file_ending)

    @property
    def channels(self) -> list[int]:
        return sorted(int(c) for c in self.metadata["channel_names"])

    def channel_modality(self, channel: int) -> str:
        """CT when nnU-Net's channel name says CT (it then uses CT normalisation), else MR."""
        name = str(self.metadata["channel_names"].get(str(channel), ""))
        return "CT" if name.upper() == "CT" else "MR"

    def _image_folders(self) -> list[tuple[str, Path]]:
        if self.plain:
            return [("Tr", self.root / "images")]
        return [(split, self.root / f"images{split}") for split in ("Tr", "Ts")]

    def _label_path(self, case: str) -> Path:
        folder = self.root / ("labels" if self.plain else "labelsTr")
        return folder / f"{case}{self.label_ending}"

    def images(self) -> list[ImageFile]:
        """Every image file, training cases first, sorted by case and channel."""
        files = []
        for split, folder in self._image_folders():
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob(f"*{self.file_ending}")):
                stem = path.name[: -len(self.file_ending)]
                case_split = split
                if self.plain:
                    case, channel = stem, 0
                    if not self._label_path(case).exists():
                        case_split = "Ts"  # imagesTr holds labelled cases only (nnU-Net)
                else:
                    case, _, suffix = stem.rpartition("_")
                    if not case or not suffix.isdigit() or len(suffix) != 4:
                        raise MedlossyError(path, "not named CASE_XXXX as nnU-Net expects")
                    channel = int(suffix)
                files.append(ImageFile(case, channel, self.channel_modality(channel), path,
                                       case_split))
        if not files:
            raise MedlossyError(self.root, f"no images ending in {self.file_ending}")
        return sorted(files, key=lambda image: image.split != "Tr")  # stable: Tr first

    def cases(self) -> list[Case]:
        """Cases with their channel files and label (training cases only)."""
        cases: dict[tuple[str, str], Case] = {}
        for image in self.images():
            key = (image.split, image.case)
            if key not in cases:
                label = self._label_path(image.case) if image.split == "Tr" else None
                cases[key] = Case(image.case, image.split, {}, label)
            cases[key].images[image.channel] = image.path
        return list(cases.values())


def _nifti_names(folder: Path) -> list[str]:
    """The NIfTI files in ``folder`` (none if it is missing)."""
    if not folder.is_dir():
        return []
    return sorted(f.name for f in folder.iterdir() if f.name.endswith((".nii", ".nii.gz")))


def _check_plain_pairs(root: Path, ending: str) -> None:
    """Refuse what a plain folder's sweep would silently leave out: a file with the other
    NIfTI ending, or a label whose image is missing (names must match exactly)."""
    images = _nifti_names(root / "images")
    for folder, names in (("images", images), ("labels", _nifti_names(root / "labels"))):
        for name in names:
            if not name.endswith(ending):
                raise MedlossyError(root / folder / name, f"does not end in {ending} like the "
                                                          "other images: give every image and "
                                                          "label one ending (gzip or gunzip)")
            if folder == "labels" and name not in images:
                twin = [i for i in images if i.lower() == name.lower()]
                hint = f" (images/{twin[0]} differs in case)" if twin else ""
                raise MedlossyError(root / folder / name, f"matches no image{hint}: a label "
                                                          "is named exactly like its image in "
                                                          "images/")


def value_span(path: Path) -> tuple[float, float]:
    """(min, max) of an image's values, read slab by slab."""
    low, high = float("inf"), float("-inf")
    for _, slab in read_volume(path, lazy=True).slabs(64):
        low, high = min(low, float(slab.min())), max(high, float(slab.max()))
    return low, high


def agreed_modality(found: dict[str, tuple[str, str]], where: Path | str) -> tuple[str, str]:
    """The one modality of a dataset from each case's (modality, why), or a one-line refusal
    asking for --modality when cases disagree."""
    groups: dict[str, list[str]] = {}
    for case, (modality, how) in sorted(found.items()):
        groups.setdefault(f"{modality} ({how})", []).append(case)
    if len({modality for modality, _ in found.values()}) > 1:
        listed = "; ".join(f"{group}: {', '.join(cases[:5])}{', ...' if cases[5:] else ''}"
                           for group, cases in groups.items())
        raise MedlossyError(where, f"cases disagree on the modality ({listed}); pass "
                                   "--modality CT or MR")
    modality, how = next(iter(found.values()))
    return modality, how if how == "given" else f"{how}, all {len(found)} case(s)"


def _plain_modality(root: Path, images: list[Path],
                    spans: dict[str, tuple[float, float]]) -> tuple[str, str]:
    """A plain folder's modality by the one rule, over every image that can be read; fills
    ``spans`` with each image's (min, max)."""
    found = {}
    for path in images:
        try:
            span = value_span(path)
        except Exception:  # any damage: its case is reported when the sweep validates it
            continue
        if span[0] <= span[1]:
            spans[str(path.absolute())] = span
            found[path.name] = detect_modality("auto", *span, not_ct="MR")
    if not found:
        return "MR", "no image readable to detect it"  # the sweep reports every case bad
    return agreed_modality(found, root)


def open_raw_dataset(root: str | Path, *, modality: str = "auto") -> RawDataset:
    """Open an nnU-Net raw dataset, or a plain ``images/`` + ``labels/`` folder.

    ``modality`` applies to plain folders only (nnU-Net datasets name their channels):
    "CT", "MR", or "auto" (default): CT when every readable image's values are Hounsfield
    units, MR when none is; cases that disagree are refused.
    """
    root = Path(root)
    description = root / "dataset.json"
    if not description.exists() and (root / "images").is_dir():
        files = sorted((root / "images").iterdir())
        ending = ".nii.gz" if any(f.name.endswith(".nii.gz") for f in files) else ".nii"
        _check_plain_pairs(root, ending)
        how, spans = "given", {}
        if modality == "auto":
            modality, how = _plain_modality(root, [f for f in files
                                                   if f.name.endswith(ending)], spans)
        metadata = {"channel_names": {"0": modality}, "file_ending": ending, "labels": {}}
        return RawDataset(root, metadata, plain=True, modality_how=how, value_spans=spans)
    if not description.exists():
        raise MedlossyError(root, "not a dataset: no dataset.json (nnU-Net raw) and no "
                                  "images/ folder")
    metadata = read_json(description, "missing")
    if "channel_names" not in metadata:
        raise MedlossyError(description, "has no channel_names")
    return RawDataset(root, metadata)
