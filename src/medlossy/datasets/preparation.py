"""Dataset-specific preparation the study used: crop images and labels to a label's box.

LiTS images are cropped to the liver mask (plus a margin) before compression; the cropped
dataset is written as a new nnU-Net raw dataset, so every later step is unchanged.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from medlossy.atomic import atomic_output
from medlossy.datasets.nnunet_raw import RawDataset, open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.io.nifti import write_nifti
from medlossy.volume import Volume


def crop_box(labels: np.ndarray, values: Sequence[int], margin_voxels: Sequence[int],
             ) -> tuple[slice, ...] | None:
    """The bounding box of ``values`` in ``labels`` grown by a margin, or None if absent."""
    mask = np.isin(labels, values)
    if not mask.any():
        return None
    box = []
    for axis, margin in enumerate(margin_voxels):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(0, present[0] - margin),
                         min(labels.shape[axis], present[-1] + 1 + margin)))
    return tuple(box)


def crop_volume(volume: Volume, box: tuple[slice, ...]) -> Volume:
    """The sub-volume in ``box``, with its affine moved to the new first voxel."""
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ [s.start for s in box] + volume.affine[:3, 3]
    return Volume(np.asarray(volume.array)[box], affine, modality=volume.modality)


def crop_dataset(dataset: RawDataset, values: Sequence[int], margin_mm: float,
                 out: Path) -> RawDataset:
    """Write ``dataset`` cropped to ``values`` (labelled cases) under ``out``; reused if done.

    Test cases have no label to crop to and are copied unchanged. The cropped dataset keeps
    ``dataset``'s channel names and says why they are what they are as ``dataset`` does.
    """
    settings = {"source": str(dataset.root), "values": list(values), "margin_mm": margin_mm,
                "channel_names": dataset.metadata["channel_names"]}
    folder = out / dataset.name
    marker = folder / "medlossy_crop.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return replace(open_raw_dataset(folder), modality_how=dataset.modality_how)
    with atomic_output(folder) as temporary:
        for case in dataset.cases():
            if case.label is None:
                for path in case.images.values():
                    (temporary / "imagesTs").mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, temporary / "imagesTs" / path.name)
                continue
            label = read_volume(case.label)
            margin = [int(np.ceil(margin_mm / s)) for s in label.spacing]
            box = crop_box(np.asarray(label.array), values, margin)
            if box is None:
                raise MedlossyError(case.label, f"case {case.name} has no voxel labelled "
                                                f"{list(values)} to crop to")
            for path in case.images.values():
                image = read_volume(path)
                (temporary / "imagesTr").mkdir(parents=True, exist_ok=True)
                write_nifti(crop_volume(image, box), temporary / "imagesTr" / path.name)
            (temporary / "labelsTr").mkdir(parents=True, exist_ok=True)
            write_nifti(crop_volume(label, box), temporary / "labelsTr" / case.label.name)
        (temporary / "dataset.json").write_text(json.dumps(dataset.metadata, indent=2) + "\n")
        (temporary / "medlossy_crop.json").write_text(json.dumps(settings))
    return replace(open_raw_dataset(folder), modality_how=dataset.modality_how)
