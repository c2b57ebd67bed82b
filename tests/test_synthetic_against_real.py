"""The quality section says how far the SYNTHETIC phantom's PSNR lies from real CT's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medlossy.experiments.study import synthetic_against_real


def _rows(dataset: str, modality: str, psnr: dict[float, list[float]]) -> list[dict]:
    return [{"dataset": dataset, "modality": modality, "ratio_target": ratio, "psnr_db": value}
            for ratio, values in psnr.items() for value in values]


def test_the_gap_per_ratio_is_listed_and_explained_beyond_two_db() -> None:
    quality = pd.DataFrame(
        _rows("Phantom", "CT", {1: [np.inf], 20: [46.0, 47.0], 100: [15.0, 16.0]})
        + _rows("RealCT", "CT", {1: [np.inf], 20: [45.0, 46.0], 100: [34.0, 35.0]})
        + _rows("RealMR", "MR", {20: [20.0], 100: [10.0]}))

    text = synthetic_against_real(quality, {"Phantom"})

    assert "x20 +1.0 dB, x100 -19.0 dB" in text  # MR left out, lossless x1 too
    assert "At x100 it loses more than 2 dB more than real CT: small slices" in text
    assert "keeps more" not in text  # the explanation follows the sign of the gap


def test_a_phantom_that_keeps_more_is_said_to_keep_more() -> None:
    quality = pd.DataFrame(_rows("Phantom", "CT", {20: [50.0]})
                           + _rows("RealCT", "CT", {20: [45.6]}))

    text = synthetic_against_real(quality, {"Phantom"})

    assert "At x20 the phantom keeps more than 2 dB more than real CT" in text
    assert "loses more" not in text


def test_within_two_db_no_cause_is_given_and_without_real_ct_nothing_is_said() -> None:
    quality = pd.DataFrame(_rows("Phantom", "CT", {20: [46.0]})
                           + _rows("RealCT", "CT", {20: [44.5]}))

    assert synthetic_against_real(quality, {"Phantom"}) == (
        " SYNTHETIC minus real CT, mean PSNR per ratio: x20 +1.5 dB.")
    assert synthetic_against_real(quality[quality["dataset"] == "Phantom"], {"Phantom"}) == ""
