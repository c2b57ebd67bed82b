"""MONAI Swin UNETR with the BTCV setup: build, load a checkpoint, predict one image.

The BTCV setup (MONAI's research-contributions and the ``swin_unetr_btcv_segmentation``
bundle, the network the study evaluates): 1 input channel, 14 classes (background + 13
organs), feature size 48; images reoriented to RAS, resampled to 1.5 x 1.5 x 2.0 mm
(bilinear), intensities -175..250 HU scaled to [0, 1] and clipped; sliding-window inference
with a 96^3 window and 50 % overlap; argmax. The predicted labels are resampled back onto the
original image grid (nearest neighbour), so they line up voxel for voxel with the image and
its reference labels.

Example:
    >>> setup = SwinUNETRSetup(feature_size=12, out_channels=3, roi=(64, 64, 64))
    >>> model = load_swin_unetr("tiny.pt", setup)               # doctest: +SKIP
    >>> labels, affine = predict_image(model, "ct.nii.gz", setup)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medlossy.errors import MedlossyError
from medlossy.io import read_volume

if TYPE_CHECKING:
    import torch

#: Key of the output convolution's weight: its first dimension is the number of classes.
OUTPUT_KEY = "out.conv.conv.weight"
#: Key of the patch embedding's weight: its first dimension is the feature size.
EMBEDDING_KEY = "swinViT.patch_embed.proj.weight"
#: nibabel's (and MONAI's classic) axis labels: the affines here are RAS+ world matrices.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class SwinUNETRSetup:
    """Network and preprocessing; the defaults are the BTCV ones."""

    feature_size: int = 48
    out_channels: int = 14
    in_channels: int = 1
    roi: tuple[int, int, int] = (96, 96, 96)
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    a_min: float = -175.0
    a_max: float = 250.0
    overlap: float = 0.5
    sw_batch_size: int = 1

    def __post_init__(self) -> None:
        if self.feature_size < 12 or self.feature_size % 12:
            raise ValueError(f"feature_size must be a multiple of 12, got {self.feature_size}")
        if self.out_channels < 2 or self.in_channels < 1:
            raise ValueError("out_channels must be >= 2 and in_channels >= 1")
        # Swin UNETR halves the window 5 times and instance-normalises the bottleneck, which
        # needs more than one voxel: so multiples of 32, at least 64.
        if len(self.roi) != 3 or any(r < 64 or r % 32 for r in self.roi):
            raise ValueError(f"roi must be three multiples of 32, each at least 64, got "
                             f"{self.roi}")
        if len(self.spacing) != 3 or any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be three positive numbers, got {self.spacing}")
        if not self.a_max > self.a_min:
            raise ValueError(f"a_max must exceed a_min, got {self.a_min}..{self.a_max}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")


#: The BTCV setup, the default everywhere.
BTCV = SwinUNETRSetup()


def _torch():
    try:
        import monai  # noqa: F401
        import torch
    except ImportError:
        raise MedlossyError(None, "pretrained Swin UNETR needs PyTorch and MONAI: "
                                  "pip install torch monai") from None
    return torch


def build_swin_unetr(setup: SwinUNETRSetup = BTCV) -> torch.nn.Module:
    """An untrained Swin UNETR of ``setup``'s size (MONAI >= 1.5 takes no ``img_size``)."""
    _torch()
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=setup.in_channels, out_channels=setup.out_channels,
                     feature_size=setup.feature_size, spatial_dims=3)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint file: a plain state_dict, or a dict holding one under
    ``"state_dict"`` or ``"model"``; a ``module.`` prefix (DataParallel) is removed.

    Only tensors and plain containers are unpickled (``weights_only``), so a checkpoint cannot
    run code.
    """
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise MedlossyError(path, "no such checkpoint file")
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MedlossyError(path, f"not a loadable weights-only PyTorch checkpoint ({first}); "
                                  "re-save just its state_dict with torch.save") from None
    if isinstance(document, dict):
        for key in ("state_dict", "model"):
            if isinstance(document.get(key), dict):
                document = document[key]
                break
    if not isinstance(document, dict) or not all(
            isinstance(v, torch.Tensor) for v in document.values()):
        raise MedlossyError(path, "holds no state_dict (expected a dict of tensors, or one "
                                  "under 'state_dict' or 'model')")
    return {key.removeprefix("module."): value for key, value in document.items()}


def load_swin_unetr(path: str | os.PathLike[str],
                    setup: SwinUNETRSetup = BTCV) -> torch.nn.Module:
    """Build the network of ``setup`` and load the checkpoint at ``path`` into it (eval mode).

    Raises:
        MedlossyError: naming the file, when the checkpoint has another number of output
            classes or another feature size than ``setup``, or does not fit at all.
    """
    state = read_state_dict(path)
    if OUTPUT_KEY not in state:
        raise MedlossyError(path, f"not a Swin UNETR checkpoint (no {OUTPUT_KEY})")
    classes = int(state[OUTPUT_KEY].shape[0])
    if classes != setup.out_channels:
        raise MedlossyError(path, f"checkpoint has {classes} output classes, expected "
                                  f"{setup.out_channels} (--out-channels)")
    if EMBEDDING_KEY in state and int(state[EMBEDDING_KEY].shape[0]) != setup.feature_size:
        raise MedlossyError(path, f"checkpoint has feature size "
                                  f"{int(state[EMBEDDING_KEY].shape[0])}, expected "
                                  f"{setup.feature_size} (--feature-size)")
    model = build_swin_unetr(setup)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = "; ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise MedlossyError(path, f"does not fit Swin UNETR(feature_size="
                                  f"{setup.feature_size}, out_channels={setup.out_channels}): "
                                  f"{detail[:300]}") from None
    return model.eval()


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; asking for CUDA without it is an error."""
    torch = _torch()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MedlossyError(None, "--device cuda: no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise MedlossyError(None, f"unknown device {device!r} (cpu, cuda or auto)")
    return torch.device(device)


def predict_image(model: torch.nn.Module, image: str | os.PathLike[str],
                  setup: SwinUNETRSetup = BTCV,
                  device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Segment one CT with the BTCV pipeline.

    Returns:
        ``(labels, affine)``: model class ids (uint8) on the image's own voxel grid, and that
        grid's affine (the image's), so they can be written next to the image unchanged.
    """
    torch = _torch()
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import Orientation, ResampleToMatch, ScaleIntensityRange, Spacing

    volume = read_volume(image, "CT")
    voxels = np.asarray(volume.array, dtype=np.float32)
    if voxels.ndim != 3:
        raise MedlossyError(image, f"expected a 3D image, got shape {voxels.shape}")
    original = MetaTensor(torch.from_numpy(voxels)[None],
                          affine=torch.as_tensor(volume.affine, dtype=torch.float64))
    resampled = Spacing(pixdim=setup.spacing, mode="bilinear", dtype=torch.float32)(
        Orientation(axcodes="RAS", labels=RAS_LABELS)(original))
    scaled = ScaleIntensityRange(a_min=setup.a_min, a_max=setup.a_max, b_min=0.0, b_max=1.0,
                                 clip=True)(resampled)
    device = torch.device(device) if isinstance(device, str) else device
    model = model.to(device)
    with torch.no_grad():
        logits = sliding_window_inference(
            scaled.as_tensor()[None].to(device), roi_size=setup.roi,
            sw_batch_size=setup.sw_batch_size, predictor=model, overlap=setup.overlap)
        classes = torch.argmax(logits, dim=1).to("cpu", torch.float32)
    predicted = MetaTensor(classes, affine=resampled.affine)
    back = ResampleToMatch(mode="nearest", padding_mode="zeros", dtype=torch.float32)(
        predicted, img_dst=original)
    labels = np.rint(back.as_tensor()[0].numpy()).astype(np.uint8)
    if labels.shape != voxels.shape:
        raise AssertionError(f"resampled prediction {labels.shape} != image {voxels.shape}")
    return labels, volume.affine
