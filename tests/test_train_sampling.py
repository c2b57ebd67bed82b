"""PatchSampler: patches of the right size, and random states that survive a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.utils import set_determinism

from medlossy.train.config import TrainConfig
from medlossy.train.preprocessing import PreparedCase
from medlossy.train.sampling import PatchSampler

CONFIG = TrainConfig(patch_size=(16, 16, 16), filters=(4, 8, 16), batch_size=2, seed=3)


@pytest.fixture(autouse=True)
def _monai_seed():
    """train_model sets MONAI's global seed; with it, a new Compose reseeds the same way."""
    set_determinism(seed=0)
    yield
    set_determinism(seed=None)


@pytest.fixture
def cases() -> list[PreparedCase]:
    rng = np.random.default_rng(0)
    labels = np.zeros((24, 20, 12), np.uint8)
    labels[6:16, 5:14, 3:9] = 1
    labels[9:12, 8:11, 5:7] = 2
    return [PreparedCase(f"c{i}", rng.normal(size=(1, 24, 20, 12)).astype(np.float32), labels)
            for i in range(2)]


def _draw(sampler: PatchSampler, count: int, *, checkpoint: bool = False) -> list:
    batches = []
    for _ in range(count):
        batches.append(sampler.batch())
        if checkpoint:
            sampler.state()
    return batches


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b,
                                                                                      strict=True))


def test_batches_have_the_patch_shape_and_integer_labels(cases) -> None:
    images, labels = PatchSampler(cases, CONFIG).batch()

    assert images.shape == (2, 1, 16, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (2, 1, 16, 16, 16) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2}


def test_images_smaller_than_the_patch_are_padded(cases) -> None:
    config = TrainConfig(patch_size=(32, 32, 16), filters=(4, 8, 16), batch_size=1)

    images, _ = PatchSampler(cases, config).batch()

    assert images.shape == (1, 1, 32, 32, 16)


def test_same_seed_gives_the_same_batches(cases) -> None:
    assert _same(_draw(PatchSampler(cases, CONFIG), 3), _draw(PatchSampler(cases, CONFIG), 3))


def test_successive_batches_differ(cases) -> None:
    first, second = _draw(PatchSampler(cases, CONFIG), 2)

    assert not torch.equal(first[0], second[0])


def test_taking_the_state_does_not_disturb_the_random_streams(cases) -> None:
    """Regression: state() used to call Compose.flatten(), whose new Compose reseeded every
    transform, so each epoch's checkpoint replayed the same crops and augmentations."""
    plain = _draw(PatchSampler(cases, CONFIG), 4)
    checkpointed = _draw(PatchSampler(cases, CONFIG), 4, checkpoint=True)

    assert _same(plain, checkpointed)


def test_restored_sampler_continues_the_same_stream(cases) -> None:
    original = PatchSampler(cases, CONFIG)
    _draw(original, 3)
    state = original.state()

    restored = PatchSampler(cases, CONFIG)
    restored.restore(state)

    assert _same(_draw(restored, 3), _draw(original, 3))


def test_state_covers_nested_random_transforms(cases) -> None:
    """RandCropByPosNegLabeld draws crops with its inner cropper's generator, RandAffined
    with its inner RandAffine's: their states must be in the checkpoint."""
    sampler = PatchSampler(cases, CONFIG)

    names = {type(t).__name__ for t in sampler._random_transforms()}

    assert {"RandCropByPosNegLabel", "RandAffine", "RandAffineGrid"} <= names
    assert len(sampler.state()["transforms"]) == len(sampler._random_transforms())


def _lateral_case() -> PreparedCase:
    """A 16^3 case whose class 1 fills the low-x half and class 2 the high-x half."""
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[2:8, 4:12, 4:12] = 1
    labels[8:14, 4:12, 4:12] = 2
    image = labels[None].astype(np.float32)
    return PreparedCase("lateral", image, labels)


def _sides_swapped(config: TrainConfig, batches: int = 12) -> int:
    """How many patches show class 1 on the high-x side of class 2."""
    sampler = PatchSampler([_lateral_case()], config)
    swapped = 0
    for _ in range(batches):
        _, labels = sampler.batch()
        for patch in labels[:, 0].numpy():
            x = np.arange(patch.shape[0])[:, None, None]
            centre = [float((x * (patch == c)).sum() / max((patch == c).sum(), 1)) for c in (1, 2)]
            swapped += centre[0] > centre[1]
    return swapped


def test_mirroring_the_left_right_axis_swaps_lateral_classes_unless_left_out() -> None:
    base = dict(patch_size=(16, 16, 16), filters=(4, 8, 16), batch_size=2, seed=1)

    assert _sides_swapped(TrainConfig(**base)) > 0
    assert _sides_swapped(TrainConfig(**base, mirror_axes=(1, 2))) == 0


def test_class_sampling_shows_a_small_organ_far_more_often() -> None:
    labels = np.zeros((32, 32, 16), np.uint8)
    labels[4:28, 4:28, 2:14] = 1  # a large organ
    labels[26:29, 26:29, 6:9] = 2  # a small one in its corner
    case = PreparedCase("small", np.random.default_rng(0).normal(
        size=(1, 32, 32, 16)).astype(np.float32), labels)
    base = dict(patch_size=(8, 8, 8), filters=(4, 8, 16), batch_size=4, seed=0,
                augment=False, foreground_fraction=0.9)

    def share_with_small_organ(sampling: str) -> float:
        sampler = PatchSampler([case], TrainConfig(**base, sampling=sampling))
        patches = torch.cat([sampler.batch()[1] for _ in range(25)])
        return float((patches == 2).flatten(1).any(1).float().mean())

    assert share_with_small_organ("foreground") < 0.1
    assert share_with_small_organ("classes") > 0.35


def test_unknown_sampling_is_refused() -> None:
    with pytest.raises(ValueError, match="sampling must be one of"):
        TrainConfig(sampling="uniform")
