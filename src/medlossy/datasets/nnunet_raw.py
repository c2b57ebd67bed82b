"""Read an nnU-Net v2 raw dataset: dataset.json plus imagesTr/imagesTs/labelsTr.

Follows nnU-Net's naming: ``CASE_XXXX<file_ending>`` where XXXX is the channel index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medlossy.errors import MedlossyError


@dataclass(frozen=True)
class ImageFile:
    """One channel of one case."""

    case: str
    channel: int
    modality: str
    path: Path
    split: str  # "Tr" or "Ts"


@dataclass(frozen=True)
class RawDataset:
    root: Path
    metadata: dict

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def file_ending(self) -> str:
        return self.metadata.get("file_ending", ".nii.gz")

    def channel_modality(self, channel: int) -> str:
        """CT when nnU-Net's channel name says CT (it then uses CT normalisation), else MR."""
        name = str(self.metadata["channel_names"].get(str(channel), ""))
        return "CT" if name.upper() == "CT" else "MR"

    def images(self) -> list[ImageFile]:
        """Every image file, training cases first, sorted by case and channel."""
        files = []
        for split in ("Tr", "Ts"):
            folder = self.root / f"images{split}"
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob(f"*{self.file_ending}")):
                stem = path.name[: -len(self.file_ending)]
                case, _, channel = stem.rpartition("_")
                if not case or not channel.isdigit() or len(channel) != 4:
                    raise MedlossyError(path, "not named CASE_XXXX as nnU-Net expects")
                files.append(ImageFile(case, int(channel), self.channel_modality(int(channel)),
                                       path, split))
        if not files:
            raise MedlossyError(self.root, f"no images ending in {self.file_ending}")
        return files


def open_raw_dataset(root: str | Path) -> RawDataset:
    root = Path(root)
    description = root / "dataset.json"
    try:
        metadata = json.loads(description.read_text())
    except FileNotFoundError:
        raise MedlossyError(description, "missing: not an nnU-Net raw dataset") from None
    except json.JSONDecodeError as error:
        raise MedlossyError(description, f"not valid JSON ({error})") from None
    if "channel_names" not in metadata:
        raise MedlossyError(description, "has no channel_names")
    return RawDataset(root, metadata)
