"""Patch sampling and augmentation with MONAI transforms, seeded so runs repeat exactly."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from medlossy.train.config import TrainConfig
from medlossy.train.preprocessing import PreparedCase


def build_transforms(config: TrainConfig) -> Compose:
    """Pad to the patch, crop (a share of crops centred on foreground), then augment."""
    fraction = config.foreground_fraction
    steps = [
        SpatialPadd(keys=["image", "label"], spatial_size=config.patch_size),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label",
                               spatial_size=config.patch_size, pos=fraction,
                               neg=1.0 - fraction, num_samples=1),
    ]
    if config.augment:
        steps += [
            RandAffined(keys=["image", "label"], prob=0.2, rotate_range=(0.26, 0.26, 0.26),
                        scale_range=(0.15, 0.15, 0.15), mode=("bilinear", "nearest"),
                        padding_mode="border"),
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.3),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.3),
            RandGaussianNoised(keys="image", prob=0.1, std=0.1),
        ]
    transforms = Compose(steps)
    transforms.set_random_state(seed=config.seed)
    return transforms


class PatchSampler:
    """Draws batches of (image, label) patches from prepared training cases."""

    def __init__(self, cases: list[PreparedCase], config: TrainConfig) -> None:
        self.cases = cases
        self.config = config
        self.transforms = build_transforms(config)
        self.rng = np.random.default_rng(config.seed)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for _ in range(self.config.batch_size):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            sample = self.transforms({"image": case.image, "label": case.labels[None]})
            sample = sample[0] if isinstance(sample, list) else sample
            images.append(torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32))
            labels.append(torch.as_tensor(np.asarray(sample["label"])).round().long())
        return torch.stack(images), torch.stack(labels)

    def state(self) -> dict:
        """Random states of the case choice and of every random transform (for resume)."""
        return {"rng": self.rng.bit_generator.state,
                "transforms": [t.R.get_state() for t in self._random_transforms()]}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        for transform, saved in zip(self._random_transforms(), state["transforms"],
                                    strict=True):
            transform.R.set_state(saved)

    def _random_transforms(self) -> list:
        """Every object with its own random state (the Compose, each transform and the ones
        nested in it, e.g. RandCropByPosNegLabeld's cropper), in a fixed order. Not
        ``Compose.flatten()``: it builds a new Compose, and that reseeds every transform."""
        found, pending = [], [self.transforms]
        while pending:
            item = pending.pop(0)
            if not isinstance(item, Randomizable) or any(item is f for f in found):
                continue
            found.append(item)
            for value in vars(item).values():
                pending += list(value) if isinstance(value, (list, tuple)) else [value]
        return found
