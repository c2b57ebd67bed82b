"""Bootstrap CIs, paired non-inferiority against ratio 1, and the safe ratio."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medlossy.experiments.statistics import (
    bootstrap_mean_ci,
    non_inferiority,
    paired_differences,
    safe_ratios,
)

CASES = 30


def _results(shifts: dict[float, tuple[float, float]], dataset: str = "D",
             cases: int = CASES) -> pd.DataFrame:
    """Train-experiment rows: per case a reference Dice, and per ratio that Dice + shift."""
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.7, 0.9, cases)
    rows = []
    for ratio, (mean, spread) in {1.0: (0.0, 0.0), **shifts}.items():
        values = reference + rng.normal(mean, spread, cases) if spread else reference + mean
        for index, value in enumerate(values):
            rows.append({"experiment": "train", "dataset": dataset, "case": f"c{index:02d}",
                         "class": "mean", "ratio_train": ratio, "ratio_test": ratio,
                         "fold": 0, "metric": "dice", "value": value})
            rows.append({**rows[-1], "class": "liver", "value": 0.0})  # ignored: not mean
    return pd.DataFrame(rows)


def test_bootstrap_of_constant_data_is_that_constant() -> None:
    assert bootstrap_mean_ci(np.full(25, 0.83)) == pytest.approx((0.83, 0.83, 0.83))


def test_bootstrap_ci_contains_the_mean() -> None:
    values = np.random.default_rng(1).normal(0.5, 0.1, 40)

    mean, low, high = bootstrap_mean_ci(values)

    assert mean == pytest.approx(values.mean())
    assert low < mean < high


def test_bootstrap_ci_narrows_with_more_data() -> None:
    rng = np.random.default_rng(2)
    few = bootstrap_mean_ci(rng.normal(0.5, 0.1, 20))
    many = bootstrap_mean_ci(rng.normal(0.5, 0.1, 2000))

    assert many[2] - many[1] < (few[2] - few[1]) / 5


def test_bootstrap_is_reproducible_for_a_seed() -> None:
    values = np.random.default_rng(3).normal(0, 1, 30)

    assert bootstrap_mean_ci(values, seed=7) == bootstrap_mean_ci(values, seed=7)


def test_bootstrap_ignores_nan_and_gives_nan_for_nothing() -> None:
    assert bootstrap_mean_ci(np.array([0.4, np.nan, 0.4])) == pytest.approx((0.4, 0.4, 0.4))
    assert all(np.isnan(bootstrap_mean_ci(np.array([np.nan]))))


def test_paired_differences_pair_each_case_with_its_ratio_1_dice() -> None:
    paired = paired_differences(_results({20.0: (-0.1, 0.0)}))

    at_20 = paired[paired["ratio"] == 20.0]
    assert len(at_20) == CASES
    np.testing.assert_allclose(at_20["difference"], -0.1)


def test_clearly_worse_ratio_is_inferior_and_a_tiny_wobble_is_not() -> None:
    tests = non_inferiority(_results({5.0: (0.0, 0.001), 20.0: (-0.1, 0.005)}), margin=0.01)

    verdict = tests.set_index("ratio")["non_inferior"].to_dict()
    assert verdict == {1.0: True, 5.0: True, 20.0: False}
    row = tests.set_index("ratio").loc[20.0]
    assert row["cases"] == CASES
    assert row["ci_low"] < row["mean_difference"] < row["ci_high"] < -0.09


def test_only_cases_present_at_both_ratios_are_paired() -> None:
    results = _results({5.0: (0.0, 0.001)})
    results = results[~((results["ratio_train"] == 5.0) & (results["case"] == "c00"))]

    tests = non_inferiority(results, margin=0.01)

    assert tests.set_index("ratio").loc[5.0, "cases"] == CASES - 1


def test_non_inferiority_is_per_dataset() -> None:
    results = pd.concat([_results({20.0: (0.0, 0.001)}, "A"),
                         _results({20.0: (-0.1, 0.001)}, "B")])

    tests = non_inferiority(results, margin=0.01).set_index(["dataset", "ratio"])

    assert tests.loc[("A", 20.0), "non_inferior"]
    assert not tests.loc[("B", 20.0), "non_inferior"]


def test_non_inferiority_of_no_results_is_an_empty_table() -> None:
    tests = non_inferiority(_results({}).iloc[0:0], margin=0.01)

    assert tests.empty
    assert {"dataset", "ratio", "non_inferior"} <= set(tests.columns)


def _tests(verdicts: dict[float, bool], dataset: str = "D") -> pd.DataFrame:
    return pd.DataFrame([{"dataset": dataset, "ratio": r, "non_inferior": ok}
                         for r, ok in verdicts.items()])


def test_safe_ratio_stops_at_the_first_inferior_ratio() -> None:
    tests = _tests({50.0: True, 1.0: True, 20.0: False, 5.0: True})  # any order

    assert safe_ratios(tests) == {"D": 5.0}


def test_safe_ratio_is_the_largest_when_all_are_non_inferior() -> None:
    assert safe_ratios(_tests({1.0: True, 5.0: True, 20.0: True})) == {"D": 20.0}


def test_safe_ratio_is_1_when_the_smallest_compressed_ratio_fails() -> None:
    assert safe_ratios(_tests({1.0: True, 2.0: False, 5.0: True})) == {"D": 1.0}


def test_safe_ratio_from_a_full_non_inferiority_table() -> None:
    results = _results({5.0: (0.0, 0.001), 20.0: (-0.1, 0.005), 50.0: (0.0, 0.001)})

    assert safe_ratios(non_inferiority(results, margin=0.01)) == {"D": 5.0}
