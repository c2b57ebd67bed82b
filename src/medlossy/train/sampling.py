"""Patch sampling and augmentation with MONAI transforms, seeded so runs repeat exactly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from monai.transforms.utils import map_classes_to_indices
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from medlossy.loading.workers import items
from medlossy.train.config import TrainConfig
from medlossy.train.preprocessing import PreparedCase

#: Where "classes" sampling finds each case's voxels of every class (computed once per case).
INDICES_KEY = "label_cls_indices"


def _by_classes(config: TrainConfig, classes: int) -> bool:
    return config.sampling == "classes" and classes > 1


def build_transforms(config: TrainConfig, classes: int = 2) -> Compose:
    """Pad to the patch, crop (a share of crops centred on foreground), then augment.

    "classes" sampling: crops centred on each of the labels 1..classes-1 in turn (the rest
    on background); the input is already padded and carries its class indices
    (``INDICES_KEY``), see :class:`PatchSampler`.
    """
    fraction = config.foreground_fraction
    if _by_classes(config, classes):
        steps = [RandCropByLabelClassesd(
            keys=["image", "label"], label_key="label", spatial_size=config.patch_size,
            num_classes=classes, ratios=[1.0 - fraction] + [fraction / (classes - 1)] *
            (classes - 1), num_samples=1, indices_key=INDICES_KEY, warn=False)]
    else:
        steps = [SpatialPadd(keys=["image", "label"], spatial_size=config.patch_size),
                 RandCropByPosNegLabeld(keys=["image", "label"], label_key="label",
                                        spatial_size=config.patch_size, pos=fraction,
                                        neg=1.0 - fraction, num_samples=1)]
    if config.augment:
        steps += [
            RandAffined(keys=["image", "label"], prob=0.2, rotate_range=(0.26, 0.26, 0.26),
                        scale_range=(0.15, 0.15, 0.15), mode=("bilinear", "nearest"),
                        padding_mode="border"),
            *(RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=axis)
              for axis in config.mirror_axes),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.3),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.3),
            RandGaussianNoised(keys="image", prob=0.1, std=0.1),
        ]
    transforms = Compose(steps)
    transforms.set_random_state(seed=config.seed)
    return transforms


class PatchSampler:
    """Draws batches of (image, label) patches from prepared training cases: each patch
    from a case drawn uniformly, or with probabilities ``weights`` (one per case, sum 1)."""

    def __init__(self, cases: list[PreparedCase], config: TrainConfig,
                 weights: Sequence[float] | None = None) -> None:
        self.cases = cases
        self.config = config
        self.weights = None if weights is None else np.asarray(weights, dtype=float)
        classes = max((int(case.labels.max()) for case in cases if case.labels is not None),
                      default=0) + 1
        self.transforms = build_transforms(config, classes)
        self.rng = np.random.default_rng(config.seed)
        self._indexed: dict[int, dict] = {}
        self._classes = classes if _by_classes(config, classes) else 0

    def _input(self, index: int) -> dict:
        """What the transforms get for case ``index``. "classes" sampling pads the case and
        finds every class's voxels once (int32 flat indices, the image's memory again), not
        at each crop: per crop that search cost a fifth of a CPU training step."""
        case = self.cases[index]
        sample = {"image": case.image, "label": case.labels[None]}
        if not self._classes:
            return sample
        if index not in self._indexed:
            sample = SpatialPadd(keys=["image", "label"],
                                 spatial_size=self.config.patch_size)(sample)
            label = np.asarray(sample["label"])
            dtype = np.int32 if label.size < 2**31 else np.int64
            sample[INDICES_KEY] = [np.asarray(i, dtype=dtype) for i in
                                   map_classes_to_indices(label, self._classes)]
            self._indexed[index] = sample
        return dict(self._indexed[index])

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for _ in range(self.config.batch_size):
            sample = self.transforms(self._input(self._draw()))
            sample = sample[0] if isinstance(sample, list) else sample
            images.append(torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32))
            labels.append(torch.as_tensor(np.asarray(sample["label"])).round().long())
        return torch.stack(images), torch.stack(labels)

    def _draw(self) -> int:
        if self.weights is None:  # the stream of models trained before weights existed
            return int(self.rng.integers(len(self.cases)))
        return int(self.rng.choice(len(self.cases), p=self.weights))

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


class _EpochPatches(IterableDataset):
    """One epoch's batches, split between loader processes; each process has its own
    sampler seeded by (seed, epoch, process), so an epoch's batches repeat exactly, also
    after a resume."""

    def __init__(self, cases: list[PreparedCase], config: TrainConfig, epoch: int,
                 weights: np.ndarray | None) -> None:
        self.cases, self.config, self.epoch, self.weights = cases, config, epoch, weights

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        seed = int(np.random.SeedSequence([self.config.seed, self.epoch, worker])
                   .generate_state(1)[0] % 2 ** 31)
        sampler = PatchSampler(self.cases, replace(self.config, seed=seed), self.weights)
        for _ in range(worker, self.config.iterations_per_epoch, workers):
            yield sampler.batch()


def epoch_batches(sampler: PatchSampler, config: TrainConfig, epoch: int, *,
                  pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of one epoch: from ``sampler`` in this process (``loader_workers`` 0,
    resumable through the sampler's state), or made by ``loader_workers`` processes ahead
    of the training step, so augmentation does not starve a GPU."""
    if config.loader_workers == 0:
        for _ in range(config.iterations_per_epoch):
            images, labels = sampler.batch()
            yield (images.pin_memory(), labels.pin_memory()) if pin_memory else (images, labels)
        return
    loader = DataLoader(_EpochPatches(sampler.cases, config, epoch, sampler.weights),
                        batch_size=None,
                        num_workers=config.loader_workers, pin_memory=pin_memory,
                        prefetch_factor=4)
    yield from items(loader)
