"""Equal-byte budget arms: few-shot at lossless size, compressed ratio searched to match."""

from __future__ import annotations

import pytest

from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.experiments.budget import (
    TOLERANCE,
    case_bytes,
    few_shot_cases,
    plan_budget,
    search_ratio,
)
from medlossy.experiments.quality import run_quality
from medlossy.train.splits import kfold_splits, training_subset


def _codec_like(raw: int, lossless: int, header: int) -> callable:
    """Stored bytes of a codec with per-image headers and a lossless floor."""
    calls = []

    def measure(ratio: float) -> int:
        calls.append(ratio)
        return min(lossless, int(raw / ratio) + header)
    measure.calls = calls
    return measure


def test_search_finds_the_ratio_whose_bytes_match_despite_headers() -> None:
    measure = _codec_like(raw=10_000_000, lossless=4_300_000, header=60_000)

    ratio, stored = search_ratio(measure, 500_000, start=10_000_000 / 500_000)

    assert abs(stored / 500_000 - 1) <= TOLERANCE
    assert ratio > 20  # headers make 1 / share too small a ratio
    assert len(measure.calls) <= 4


def test_search_says_when_no_ratio_can_reach_the_target() -> None:
    measure = _codec_like(raw=10_000_000, lossless=4_300_000, header=60_000)

    with pytest.raises(ValueError, match="no ratio stores 50000 bytes"):
        search_ratio(measure, 50_000, start=200)


def test_few_shot_takes_every_case_that_fits_at_lossless_size() -> None:
    cases = [f"c{i}" for i in range(8)]
    lossless = {c: 100 for c in cases}

    assert few_shot_cases(cases, 0, lossless, budget=350) == 3
    assert few_shot_cases(cases, 0, lossless, budget=50) == 1  # at least one case
    assert few_shot_cases(cases, 0, lossless, budget=10_000) == 8


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("budget")
    folder = write_phantom_dataset(root / "data", 6, PhantomConfig(shape=(48, 48, 24),
                                                                   spacing=(6.0, 6.0, 6.0)))
    dataset = open_raw_dataset(folder)
    swept = {"ratios": [1.0]}

    def compress(ratios: list[float]):
        swept["ratios"] = ratios
        return run_quality(dataset, root / "sweep", ratios, base_id=900, workers=1)

    return dataset, compress(swept["ratios"]), compress, swept


def test_both_arms_hold_the_same_measured_bytes(sweep) -> None:
    dataset, manifest, compress, swept = sweep
    state = {"manifest": manifest}

    def measure(ratio: float):
        if ratio not in swept["ratios"]:
            state["manifest"] = compress(sorted({*swept["ratios"], ratio}))
        return state["manifest"]

    labelled = [case.name for case in dataset.cases() if case.label is not None]
    arms = plan_budget(dataset.name, labelled, 2, 0, 0.5, manifest, measure)

    train = kfold_splits(labelled, 2)[0]["train"]
    few = training_subset(train, arms.train_fraction, 0)
    lossless = case_bytes(state["manifest"], 1.0)
    stored = case_bytes(state["manifest"], arms.ratio)
    raw = case_bytes(state["manifest"], 1.0, "raw_bytes")
    assert arms.few_shot_bytes == sum(lossless[c] for c in few) < sum(raw[c] for c in few)
    assert arms.compressed_bytes == sum(stored[c] for c in train)
    assert abs(arms.compressed_bytes / arms.few_shot_bytes - 1) <= TOLERANCE
    assert arms.few_shot_bytes <= 0.5 * arms.raw_bytes
    # lossless counting fits more than the old round(0.5 x 3) = 2 raw-size cases
    assert arms.few_shot_cases >= 2
    assert arms.ratio > 1
    shares = {row["arm"]: row["share"] for row in arms.rows()}
    assert shares["compressed"] == pytest.approx(shares["few-shot"], rel=TOLERANCE)
