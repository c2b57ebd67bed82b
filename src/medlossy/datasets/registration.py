"""Register a sweep's nnU-Net datasets in an nnU-Net raw folder (``$nnUNet_raw``).

Each ratio's dataset ``SWEEP/nnunet/DatasetXXX_Name_rR`` appears there as a symlink of the
same name, so nnU-Net's own commands (``nnUNetv2_plan_and_preprocess -d XXX``) find it and
nothing is copied. nnU-Net tells datasets apart by their id alone, and looks an id up in
$nnUNet_raw, $nnUNet_preprocessed and $nnUNet_results together ("More than one dataset
name found for dataset id"), so an id that the folder or those two already hold under
another name, or the same name in the folder that is not a link to this sweep's dataset,
is refused before anything is linked (and, from ``dataset compress --nnunet-raw``, before
anything is compressed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from medlossy.errors import MedlossyError

_DATASET_ID = re.compile(r"Dataset(\d{3})_")


def _identifier(name: str) -> str:
    match = _DATASET_ID.match(name)
    if match is None:
        raise MedlossyError(name, "not an nnU-Net dataset name (DatasetXXX_Name)")
    return match.group(1)


def _nnunet_entries() -> list[Path]:
    """What $nnUNet_preprocessed and $nnUNet_results hold, where nnU-Net also looks ids up."""
    folders = [Path(os.environ[name]) for name in ("nnUNet_preprocessed", "nnUNet_results")
               if os.environ.get(name)]
    return [entry for folder in folders if folder.is_dir()
            for entry in sorted(folder.iterdir())]


def check_registration(raw: Path, datasets: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(link, dataset) for each dataset folder not linked in ``raw`` yet; refuses, in one
    line naming the entry, an id ``raw`` ($nnUNet_preprocessed, $nnUNet_results) holds
    under another name or the same name in ``raw`` that is something else than a link to
    that dataset."""
    raw = Path(raw)
    present = [*(sorted(raw.iterdir()) if raw.is_dir() else []), *_nnunet_entries()]
    todo = []
    for dataset in datasets:
        dataset = Path(dataset).absolute()
        identifier = _identifier(dataset.name)
        for entry in present:
            if not entry.name.startswith(f"Dataset{identifier}_"):
                continue
            if entry.name != dataset.name:
                raise MedlossyError(entry, f"holds nnU-Net dataset id {identifier} under "
                                           f"another name; {dataset.name} needs that id: "
                                           "pass another --base-id or remove it")
            if entry.parent != raw:
                continue  # this dataset's own plans or models: nnU-Net's, as they should be
            if not entry.is_symlink() or entry.resolve() != dataset.resolve():
                raise MedlossyError(entry, f"is another dataset of that name, not a link "
                                           f"to {dataset}: remove it or choose another "
                                           "--nnunet-raw")
        if not (raw / dataset.name).is_symlink():
            todo.append((raw / dataset.name, dataset))
    return todo


def register_datasets(raw: Path, datasets: Iterable[Path]) -> list[Path]:
    """Link every dataset folder into ``raw`` (created if missing; see
    :func:`check_registration`); returns the links, those already there included."""
    datasets = [Path(dataset).absolute() for dataset in datasets]
    todo = check_registration(raw, datasets)
    Path(raw).mkdir(parents=True, exist_ok=True)
    for link, dataset in todo:
        link.symlink_to(dataset.resolve(), target_is_directory=True)
    return [Path(raw) / dataset.name for dataset in datasets]
