"""A folder of DICOM studies (one per case) as an nnU-Net raw dataset, labels from SEG/RTSTRUCT.

Data flow: every subfolder of the root is one case -> its image series is read (non-image
objects left out) -> its SEG or RTSTRUCT objects are found by Modality -> their segment/ROI
names become label ids (a given label map, or every name found, sorted, numbered from 1) ->
images and labels are written as NIfTI under ``out/<root name>`` with a dataset.json, so the
sweep, training and evaluation see an ordinary nnU-Net raw dataset. Reused when the same root
and settings were prepared before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom

from medlossy.atomic import atomic_output
from medlossy.datasets.nnunet_raw import RawDataset, agreed_modality, open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.io.dicom_labels import read_rtstruct_labels, read_seg_labels
from medlossy.io.dicom_series import read_series_with_sources
from medlossy.io.nifti import write_nifti
from medlossy.metrics import detect_modality
from medlossy.volume import Volume

LABEL_KINDS = {"seg": "SEG", "rtstruct": "RTSTRUCT"}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_dicom_root(root: Path) -> bool:
    """A folder of case folders, without the files that mark other dataset layouts."""
    return (root.is_dir() and not (root / "dataset.json").exists()
            and not (root / "images").is_dir()
            and any(p.is_dir() for p in root.iterdir()))


def _label_objects(case: Path, modality: str) -> list[tuple[Path, pydicom.Dataset]]:
    found = []
    for file in sorted(p for p in case.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:  # not DICOM, or damaged: the image reader reports damaged images
            continue
        if str(ds.get("Modality", "")).upper() == modality:
            found.append((file, ds))
    return found


def _names(ds: pydicom.Dataset) -> list[str]:
    if "SegmentSequence" in ds:
        return [str(item.SegmentLabel) for item in ds.SegmentSequence]
    return [str(item.ROIName) for item in ds.get("StructureSetROISequence", [])]


def _case_name(folder: Path) -> str:
    """The folder's name where it is a plain file name (nnU-Net allows any, underscores
    included: it takes the channel from the name's end, ``CASE_0000``); other characters
    (spaces, slashes, non-ASCII) become '-'."""
    if _PLAIN_NAME.fullmatch(folder.name):
        return folder.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-.") or "case"


def case_names(cases: list[Path]) -> dict[Path, str]:
    """Each case folder's case id; two folders that would share one are refused."""
    names: dict[str, Path] = {}
    for case in cases:
        name = _case_name(case)
        if name in names:
            raise MedlossyError(case, f"becomes case '{name}' like {names[name].name!r}: "
                                      "rename one of the two folders")
        names[name] = case
    return {case: name for name, case in names.items()}


def prepare_dicom_dataset(root: str | Path, out: Path, *, labels: str = "seg",
                          label_map: Mapping[str, int] | None = None,
                          modality: str = "auto", allow_gaps: bool = False) -> RawDataset:
    """Write the DICOM studies under ``root`` as an nnU-Net raw dataset in ``out``.

    ``modality`` "auto": each series' DICOM Modality (CT, MR), else the values decide as
    everywhere (``detect_modality``); studies that disagree are refused.
    """
    root = Path(root)
    if labels not in LABEL_KINDS:
        raise MedlossyError(None, f"--labels must be one of {', '.join(LABEL_KINDS)}")
    kind = LABEL_KINDS[labels]
    cases = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise MedlossyError(root, "no case folders (one DICOM study per subfolder)")
    case_ids = case_names(cases)
    objects = {case: _label_objects(case, kind) for case in cases}
    for case, found in objects.items():
        if not found:
            raise MedlossyError(case, f"no {kind} object in this study (--labels {labels})")
    if label_map is None:
        names = sorted({name for found in objects.values() for _, ds in found
                        for name in _names(ds)}, key=str.lower)
        label_map = {name: index for index, name in enumerate(names, start=1)}
    settings = {"source": str(root.resolve()), "labels": labels, "label_map": dict(label_map),
                "modality": modality, "allow_gaps": allow_gaps,
                "cases": {name: case.name for case, name in case_ids.items()}}
    folder = out / f"{root.name}_dicom"
    marker = folder / "medlossy_dicom.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return open_raw_dataset(folder)
    found: dict[str, tuple[str, str]] = {}
    with atomic_output(folder) as temporary:
        (temporary / "imagesTr").mkdir(parents=True)
        (temporary / "labelsTr").mkdir()
        for case in cases:
            volume, sources = read_series_with_sources(
                case, "OTHER" if modality == "auto" else modality, allow_gaps=allow_gaps)
            series_uid = str(sources[0].get("SeriesInstanceUID", "")) if sources else ""
            label = np.zeros(volume.shape, dtype=np.uint8)
            for file, _ in objects[case]:
                if kind == "SEG":
                    part = read_seg_labels(file, volume, sources, label_map, case)
                else:
                    part = read_rtstruct_labels(file, volume, series_uid, label_map)
                label = np.where(part > 0, part, label)
            name = case_ids[case]
            found[name] = detect_modality(modality, float(np.min(volume.array)),
                                          float(np.max(volume.array)),
                                          known=volume.modality, not_ct="MR")
            write_nifti(Volume(volume.array, volume.affine, modality=volume.modality),
                        temporary / "imagesTr" / f"{name}_0000.nii.gz")
            write_nifti(Volume(label, volume.affine), temporary / "labelsTr" / f"{name}.nii.gz")
        channel, how = agreed_modality(found, root)
        metadata = {"name": root.name, "channel_names": {"0": channel},
                    "labels": {"background": 0, **{k: int(v) for k, v in label_map.items()}},
                    "numTraining": len(cases), "file_ending": ".nii.gz",
                    "description": f"DICOM studies from {root} with {kind} labels"}
        renamed = {name: case.name for case, name in case_ids.items() if name != case.name}
        if renamed:  # which study each renamed case came from (copied to every ratio's)
            metadata["case_folders"] = renamed
        (temporary / "dataset.json").write_text(json.dumps(metadata, indent=2) + "\n")
        (temporary / "medlossy_dicom.json").write_text(json.dumps(settings))
    return replace(open_raw_dataset(folder), modality_how=how)
