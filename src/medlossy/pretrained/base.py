"""What every pretrained model provides, and the registry that finds one by name.

A plug-in (one module each, like the codecs in ``medlossy.codecs.base`` and the training
backends in ``medlossy.backends``) states its task, its classes by name and the input it was
made for (:class:`InputSpec`); :meth:`PretrainedModel.check` refuses other data in one line
naming the file before anything runs. :meth:`PretrainedModel.predict_cases` writes one label
map per case (values 1..n = ``classes`` in order) on the image's own grid, so the agreement
code (``medlossy.pretrained.agreement``) never branches on a model's name.

Example:
    >>> model = get_model("deepbet")                     # doctest: +SKIP
    >>> model.classes, model.expects.describe()          # doctest: +SKIP
    (('brain',), 'T1 MR of the head, orientation any (deepbet reorients to RAS), voxels 0.5-3 mm')
"""

from __future__ import annotations

import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from medlossy.atomic import atomic_output
from medlossy.errors import MedlossyError
from medlossy.io import read_volume, write_volume
from medlossy.terminal import progress_bar
from medlossy.volume import Volume

#: MR contrasts a channel name can state (nnU-Net's dataset.json channel_names); other names
#: ("MR", "MRI", "0", "image") state no contrast and are accepted by every MR model.
CONTRASTS = ("T1C", "T1CE", "T1GD", "T1", "T2", "FLAIR", "PD", "DWI", "ADC")
#: An image with more than ``_AIR_SHARE`` of its voxels at or below ``_AIR_HU`` is CT in
#: Hounsfield units (air), not MR signal: processed MR can dip below 0, but not that much.
_AIR_HU = -500.0
_AIR_SHARE = 0.05


class InputRefused(MedlossyError):
    """An image a model was not made for (the study skips that dataset, with a note)."""


@dataclass(frozen=True)
class InputSpec:
    """The input a model was trained on; :meth:`PretrainedModel.check` enforces it."""

    modality: str  # "MR" or "CT"
    contrasts: tuple[str, ...] = ()  # upper case, e.g. ("T1",); empty: any contrast
    orientation: str = "any (the model reorients)"
    spacing_mm: tuple[float, float] = (0.0, math.inf)  # every voxel side within this range
    #: What the images show (a study's ``body_region``: "head", "abdomen"...); None: any.
    body_region: str | None = None

    def describe(self) -> str:
        low, high = self.spacing_mm
        spacing = ("any voxel size" if (low, high) == (0.0, math.inf)
                   else f"voxels {low:g}-{high:g} mm")
        what = "/".join(self.contrasts) + " " if self.contrasts else ""
        region = f" of the {self.body_region}" if self.body_region else ""
        return f"{what}{self.modality}{region}, orientation {self.orientation}, {spacing}"


def _stated_contrast(channel: str) -> str | None:
    """The contrast a channel name states (T1 of "T1w", T1C of "T1c"), None if none."""
    token = re.sub(r"[^A-Z0-9]", "", channel.upper()).removesuffix("W")
    for contrast in CONTRASTS:
        if token == contrast or token == contrast + "MRI":
            return contrast
    return None


class PretrainedModel(ABC):
    """A trained network that segments one image; subclasses register with :func:`register`."""

    name: ClassVar[str]
    task: ClassVar[str]  # models of one task are compared with each other
    #: Where the model comes from (pip extra or folder), for error messages and reports.
    requirement: ClassVar[str] = ""
    classes: tuple[str, ...] = ()  # foreground classes, label values 1..n in this order
    expects: InputSpec = InputSpec("MR")
    #: How it is run here, when that differs from its authors' default (a fast mode...).
    mode: str = ""

    @abstractmethod
    def predict(self, volume: Volume) -> np.ndarray:
        """Label values (0 = background, 1..n = ``classes``) on ``volume``'s own grid."""

    def check(self, volume: Volume, path: str | os.PathLike[str], channel: str = "") -> None:
        """Refuse an image the model was not made for (:class:`InputRefused`, one line
        naming ``path``).

        ``channel``: the dataset's name of the image's channel ("T1", "CT", "MR"...).
        """
        spec = self.expects
        refuse = f"{self.name} expects {spec.describe()}"
        shape = tuple(volume.array.shape)
        if len(shape) != 3:
            raise InputRefused(path, f"{refuse}; the image is not 3D (shape {shape})")
        if spec.modality == "MR" and channel.upper() == "CT":
            raise InputRefused(path, f"{refuse}; the dataset says this channel is CT")
        stated = _stated_contrast(channel)
        if spec.contrasts and stated is not None and stated not in spec.contrasts:
            raise InputRefused(path, f"{refuse}; the dataset says this channel is {channel}")
        spacing = np.sqrt((volume.affine[:3, :3] ** 2).sum(axis=0))
        low, high = spec.spacing_mm
        if not ((spacing >= low) & (spacing <= high)).all():
            sides = " x ".join(f"{s:.3g}" for s in spacing)
            raise InputRefused(path, f"{refuse}; the image has {sides} mm voxels")
        air = float(np.mean(np.asarray(volume.array) <= _AIR_HU))
        if spec.modality == "MR" and air > _AIR_SHARE:
            raise InputRefused(path, f"{refuse}; {air:.0%} of its voxels are at or below "
                                     f"{_AIR_HU:g}: CT in HU")

    def check_region(self, dataset: str, body_region: str | None) -> None:
        """Refuse a dataset that shows another body region than the model's (unstated: any)."""
        wanted = self.expects.body_region
        if wanted is not None and body_region is not None and body_region != wanted:
            raise InputRefused(dataset, f"{self.name} expects {self.expects.describe()}; the "
                                        f"dataset shows the {body_region}")

    def predict_cases(self, cases: Mapping[str, Path], out: Path, *, ending: str = ".nii.gz",
                      channel: str = "", show_progress: bool = False,
                      description: str = "") -> Path:
        """Predict every case (name -> image file) into ``out``/CASE``ending``, all at once
        (``out`` appears whole or not at all). Every image is checked before it is predicted."""
        with atomic_output(out) as temporary:
            temporary.mkdir(parents=True)
            for name, image in progress_bar(list(cases.items()), desc=description or self.name,
                                            unit="case", show=show_progress):
                volume = read_volume(image, self.expects.modality)
                volume.array = np.asarray(volume.array)
                self.check(volume, image, channel)
                labels = self.predict(volume)
                if labels.shape != volume.array.shape:
                    raise AssertionError(f"{self.name}: prediction {labels.shape} is not on "
                                         f"the image grid {volume.array.shape}")
                write_volume(Volume(labels.astype(np.uint8), volume.affine),
                             temporary / f"{name}{ending}")
        return out


_REGISTRY: dict[str, Callable[..., PretrainedModel]] = {}
#: Finds a model that lives in a folder (an nnU-Net trained model), set by its plug-in.
_FOLDER_MODELS: list[Callable[[Path, str], PretrainedModel | None]] = []


def register(model_type: type[PretrainedModel]) -> type[PretrainedModel]:
    """Class decorator: make a model available by its ``name``."""
    _REGISTRY[model_type.name] = model_type
    return model_type


def register_folder_model(find: Callable[[Path, str], PretrainedModel | None]) -> None:
    """``find(folder, device)`` returns a model when ``folder`` is one of its kind, else None."""
    _FOLDER_MODELS.append(find)


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_model(spec: str | os.PathLike[str], *, device: str = "auto") -> PretrainedModel:
    """The registered model named ``spec``, or the model in the folder ``spec``; ``device``:
    "auto" (a GPU when there is one), "cpu" or "cuda"."""
    if str(spec) in _REGISTRY:
        return _REGISTRY[str(spec)](device=device)
    folder = Path(spec)
    if folder.is_dir():
        for find in _FOLDER_MODELS:
            model = find(folder, device)
            if model is not None:
                return model
        raise MedlossyError(folder, "not a trained nnU-Net model folder (expected dataset.json, "
                                    "plans.json and fold_*/checkpoint_final.pth)")
    raise MedlossyError(spec, f"unknown pretrained model (known: {', '.join(model_names())}, "
                              "or an nnU-Net model folder)")


def import_optional(module: str, model: str, extra: str):
    """Import a model's optional package; a one-line error says which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MedlossyError(None, f"the {model} model needs {module} ({error}): pip install "
                                  f"'medlossy[{extra}]'") from None


def torch_device(device: str):
    """``"auto"``: CUDA when available, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MedlossyError(None, "--device cuda: no CUDA device is available")
    return torch.device(device)

