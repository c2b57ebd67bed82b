"""Preprocessing: CT normalisation fitted on foreground, resampling arithmetic, labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlossy.datasets.nnunet_raw import RawDataset
from medlossy.train.preprocessing import (
    LoadedCase,
    fit_normalisation,
    normalise,
    prepare,
    resample_image,
    resample_labels,
    resampled_shape,
)

SHAPE = (20, 18, 12)


def _dataset(modality: str = "CT") -> RawDataset:
    return RawDataset(Path("unused"), {"channel_names": {"0": modality}, "labels": {}})


def _case(seed: int, name: str = "case") -> LoadedCase:
    """Air (-1000 HU) around a box of tissue ~N(100, 20) with a few very bright voxels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:16, 3:15, 2:10] = 1
    labels[8:12, 6:10, 4:8] = 2
    image = np.full(SHAPE, -1000.0, np.float32)
    foreground = labels > 0
    image[foreground] = rng.normal(100, 20, int(foreground.sum()))
    image[5, 4, 3] = image[6, 5, 4] = 3000.0
    return LoadedCase(name, image[None], labels, (2.0, 2.0, 3.0), np.eye(4))


def test_ct_normalisation_is_fitted_on_foreground_only() -> None:
    specs = fit_normalisation(_dataset(), [_case(0), _case(1)])

    (spec,) = specs
    assert spec["scheme"] == "ct-foreground"
    assert 90 < spec["mean"] < 110  # the -1000 HU air would drag it far down
    assert 15 < spec["std"] < 25


def test_ct_normalisation_clips_outliers_to_percentiles() -> None:
    (spec,) = fit_normalisation(_dataset(), [_case(0), _case(1)])

    low, high = spec["clip"]
    assert 0 < low < 100 < high < 3000


def test_normalised_foreground_has_zero_mean_and_unit_std() -> None:
    cases = [_case(0), _case(1)]
    specs = fit_normalisation(_dataset(), cases)

    values = np.concatenate([normalise(c.channels, specs)[0][c.labels > 0] for c in cases])

    assert abs(values.mean()) < 1e-3
    assert values.std() == pytest.approx(1.0, abs=1e-3)


def test_normalised_background_sits_at_the_low_clip() -> None:
    case = _case(0)
    (spec,) = specs = fit_normalisation(_dataset(), [case])

    background = normalise(case.channels, specs)[0][case.labels == 0]

    expected = (spec["clip"][0] - spec["mean"]) / spec["std"]
    np.testing.assert_allclose(background, expected, rtol=1e-5)


def test_mr_channels_are_z_scored_per_image() -> None:
    case = _case(0)
    specs = fit_normalisation(_dataset("T1"), [case])

    values = normalise(case.channels * 3 + 50, specs)[0]

    assert specs[0]["scheme"] == "zscore-per-image"
    assert abs(values.mean()) < 1e-4
    assert values.std() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("shape", "spacing", "target", "expected"), [
    ((32, 32, 24), (6.0, 6.0, 6.0), (3.0, 3.0, 3.0), (64, 64, 48)),
    ((32, 32, 24), (6.0, 6.0, 6.0), (6.0, 6.0, 6.0), (32, 32, 24)),
    ((100, 100, 10), (0.8, 0.8, 5.0), (1.5, 1.5, 1.5), (53, 53, 33)),
    ((1, 2, 1), (1.0, 1.0, 1.0), (3.0, 3.0, 3.0), (1, 1, 1)),
])
def test_resampled_shape(shape, spacing, target, expected) -> None:
    assert resampled_shape(shape, spacing, target) == expected


def test_resampled_labels_stay_integer_and_keep_their_values() -> None:
    labels = _case(0).labels.copy()
    labels[0:3, 0:3, 0:3] = 7

    resampled = resample_labels(labels, (31, 27, 9))

    assert resampled.dtype == np.uint8
    assert resampled.shape == (31, 27, 9)
    assert set(np.unique(resampled)) == {0, 1, 2, 7}


def test_resampled_image_keeps_a_constant_value() -> None:
    image = np.full((2, 10, 10, 6), 3.5, np.float32)

    resampled = resample_image(image, (15, 7, 9))

    assert resampled.shape == (2, 15, 7, 9)
    np.testing.assert_allclose(resampled, 3.5, rtol=1e-6)


def test_prepare_resamples_to_the_target_spacing() -> None:
    case = _case(0)
    specs = fit_normalisation(_dataset(), [case])

    prepared = prepare(case, specs, (4.0, 4.0, 4.0))

    assert prepared.image.shape == (1, 10, 9, 9)
    assert prepared.image.dtype == np.float32
    assert prepared.labels.shape == (10, 9, 9)
    assert prepared.labels.dtype == np.uint8
    assert set(np.unique(prepared.labels)) <= {0, 1, 2}
