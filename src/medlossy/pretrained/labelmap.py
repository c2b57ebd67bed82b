"""Map a network's class ids onto a dataset's label values.

The file is JSON ``{"model class id": "dataset class id"}``, e.g. BTCV -> AMOS::

    {"1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6, "7": 7, "8": 8, "9": 9,
     "10": 10, "11": 12, "12": 11}

Model classes the map does not name become background (0).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medlossy.errors import MedlossyError
from medlossy.jsonfile import read_json


def _integer(path: Path, text: object, what: str) -> int:
    try:
        value = int(str(text))
    except ValueError:
        raise MedlossyError(path, f"{what} {text!r} is not an integer class id") from None
    if value < 0:
        raise MedlossyError(path, f"{what} {value} is negative")
    return value


def read_label_map(path: str | os.PathLike[str]) -> dict[int, int]:
    """Model class id -> dataset label value, from a JSON file."""
    path = Path(path)
    document = read_json(path, "no such label map")
    if not isinstance(document, dict):
        raise MedlossyError(path, 'expected a JSON object {"model class id": "dataset class id"}')
    return {_integer(path, key, "model class"): _integer(path, value, "dataset class")
            for key, value in document.items()}


def lookup_table(label_map: dict[int, int] | None, classes: int, *,
                 source: str | os.PathLike[str] | None = None,
                 allowed: set[int] | None = None) -> np.ndarray:
    """Array ``table`` with ``table[model class] = dataset value`` for ``classes`` classes.

    ``None`` maps every class to itself. Model ids beyond ``classes`` and dataset values not in
    ``allowed`` (the dataset's labels) are errors naming ``source``.
    """
    if label_map is None:
        table = np.arange(classes, dtype=np.int64)
    else:
        table = np.zeros(classes, dtype=np.int64)
        for model_class, value in label_map.items():
            if model_class >= classes:
                raise MedlossyError(source, f"model class {model_class} does not exist: the "
                                            f"network has {classes} classes (0..{classes - 1})")
            table[model_class] = value
    if allowed is not None:
        unknown = sorted({int(v) for v in table} - allowed)
        if unknown:
            what = "maps to" if label_map is not None else "predicts (no --label-map given)"
            raise MedlossyError(source, f"the model {what} label values {unknown} that the "
                                        f"dataset does not have (its labels: {sorted(allowed)})")
    return table
