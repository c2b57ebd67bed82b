"""Check a case before any work: channels present, readable, label matching its image."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medlossy.datasets.nnunet_raw import Case, RawDataset

#: Affines may differ by float noise between files written by different tools.
_AFFINE_TOLERANCE_MM = 1e-3


def _header(path: Path) -> nib.spatialimages.SpatialImage | str:
    if not path.exists():
        return f"{path} is missing"
    try:
        return nib.load(path)
    except Exception as error:  # nibabel raises many types for bad headers
        return f"{path} is not readable ({error})"


def case_problem(dataset: RawDataset, case: Case) -> str | None:
    """A one-line description of what is wrong with ``case``, or None when it is usable."""
    missing = [c for c in dataset.channels if c not in case.images]
    if missing:
        expected = ", ".join(f"{case.name}_{c:04d}{dataset.file_ending}" for c in missing)
        return f"case {case.name}: missing channel file(s) {expected}"
    reference = None
    for channel, path in sorted(case.images.items()):
        image = _header(path)
        if isinstance(image, str):
            return f"case {case.name}: {image}"
        if len(image.shape) != 3:
            return f"case {case.name}: {path} is not 3D (shape {image.shape})"
        if reference is None:
            reference = image
        elif image.shape != reference.shape or not np.allclose(
                image.affine, reference.affine, atol=_AFFINE_TOLERANCE_MM):
            return f"case {case.name}: channel {channel} does not share channel 0's grid"
    if case.label is None:
        return None
    label = _header(case.label)
    if isinstance(label, str):
        return f"case {case.name}: label {label}"
    if label.shape != reference.shape:
        return (f"case {case.name}: label shape {label.shape} does not match image shape "
                f"{reference.shape} ({case.label})")
    if not np.allclose(label.affine, reference.affine, atol=_AFFINE_TOLERANCE_MM):
        return f"case {case.name}: label affine does not match the image's ({case.label})"
    try:
        values = np.asarray(label.dataobj)
    except Exception as error:  # truncated gzip, short file
        return f"case {case.name}: label {case.label} is not readable ({error})"
    if not np.issubdtype(values.dtype, np.integer) and not np.all(values == np.round(values)):
        return f"case {case.name}: label {case.label} has non-integer values"
    known = dataset.metadata.get("labels")
    if known:
        allowed = {int(v) for v in known.values() if isinstance(v, int | float)}
        unknown = sorted(set(np.unique(values).astype(int).tolist()) - allowed)
        if allowed and unknown:
            return (f"case {case.name}: label {case.label} has values {unknown[:10]} not in "
                    "dataset.json labels")
    return None
