"""Decathlon-style datalists of a sweep, one per ratio, whose images are the stores.

Data flow: sweep.json (ratios, nnU-Net dataset names) + manifest.csv (each case's store per
channel and ratio) + each ratio's ``labelsTr`` (the labels, bit-exact) + the study's k-fold
split of the labelled case names (``medlossy.train.splits``: the same cases at every ratio)
-> ``OUT/r20.json``::

    {"name": ..., "ratio": 20.0, "fold": 0, "folds": 3,
     "training":   [{"image": "../stores/r20/CASE_0000.zarr", "label": "...CASE.nii.gz"}],
     "validation": [...the fold's held-out cases...],
     "test":       [{"image": ...}]}                     (imagesTs cases, no label)

A case of several channels lists its stores in channel order (MONAI stacks them). Paths are
relative to the datalist's folder, as MONAI's ``load_decathlon_datalist`` joins them, so a
moved sweep keeps working; each file is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from medlossy.datasets.sweep import ratio_tag, read_manifest, sweep_file
from medlossy.errors import MedlossyError
from medlossy.jsonfile import read_json, write_json
from medlossy.train.splits import kfold_splits

#: Where ``medlossy dataset datalist`` writes by default, inside the sweep folder.
DATALIST_FOLDER = "datalists"


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path.absolute(), folder.absolute())).as_posix()


def _dataset_folder(sweep: Path, described: dict, ratio: float) -> Path:
    """The nnU-Net dataset of ``ratio`` in the sweep (its labelsTr and dataset.json)."""
    datasets = described.get("datasets") if isinstance(described, dict) else None
    name = datasets.get(ratio_tag(ratio)) if isinstance(datasets, dict) else None
    if not isinstance(name, str):
        raise MedlossyError(sweep / "sweep.json", f"names no dataset for ratio {ratio:g}")
    return sweep / "nnunet" / name


def ratio_datalist(sweep: Path, dataset: Path, rows: pd.DataFrame, out: Path, *,
                   folds: int, fold: int) -> dict:
    """The datalist of one ratio (``rows``: its manifest rows; ``dataset``: its nnU-Net
    dataset folder), paths relative to ``out``."""
    ratio = float(rows["ratio_target"].iloc[0])
    described = read_json(dataset / "dataset.json", "missing: the sweep did not finish")
    # a stores-only sweep's images are links (.mlstore), its labels NIfTI
    ending = described.get("medlossy", {}).get("label_ending",
                                               described.get("file_ending", ".nii.gz"))
    images: dict[str, list[str]] = {}
    splits: dict[str, str] = {}
    for row in rows.sort_values(["case", "channel"]).to_dict("records"):
        images.setdefault(row["case"], []).append(_relative(sweep_file(sweep, row, "store"),
                                                            out))
        splits[row["case"]] = row["split"]

    def entry(case: str) -> dict[str, str | list[str]]:
        stores = images[case]
        return {"image": stores[0] if len(stores) == 1 else stores}

    labelled = {}
    for case in sorted(case for case, split in splits.items() if split == "Tr"):
        label = dataset / "labelsTr" / f"{case}{ending}"
        if not label.is_file():
            raise MedlossyError(label, f"missing: case {case} of ratio {ratio:g} has no label")
        labelled[case] = _relative(label, out)
    split = kfold_splits(list(labelled), folds)[fold]
    return {"name": dataset.name, "ratio": ratio, "fold": fold, "folds": folds,
            "training": [entry(case) | {"label": labelled[case]} for case in split["train"]],
            "validation": [entry(case) | {"label": labelled[case]}
                           for case in split["test"]],
            "test": [entry(case) for case in sorted(images) if splits[case] != "Tr"]}


def write_datalists(sweep: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                    *, folds: int = 3, fold: int = 0) -> list[Path]:
    """Write ``OUT/r<ratio>.json`` for every ratio of the sweep (``out`` default:
    ``SWEEP/datalists``); returns the files written. ``folds`` / ``fold``: the split, as the
    study's ``[training]`` folds and fold."""
    sweep = Path(sweep)
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"fold {fold} of {folds} folds: need folds >= 2 and 0 <= fold < folds")
    described = read_json(sweep / "sweep.json", "missing: not a sweep folder (run `medlossy "
                                                "dataset compress` first)")
    manifest = read_manifest(sweep)
    out = sweep / DATALIST_FOLDER if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for ratio, rows in manifest.groupby("ratio_target"):
        dataset = _dataset_folder(sweep, described, float(ratio))
        document = ratio_datalist(sweep, dataset, rows, out, folds=folds, fold=fold)
        path = out / f"{ratio_tag(float(ratio))}.json"
        write_json(path, document)
        written.append(path)
    return written
