"""k-fold splits and few-shot subsets: fixed by the case names alone."""

from __future__ import annotations

import pytest

from medlossy.train.splits import kfold_splits, training_subset

CASES = [f"case_{index:03d}" for index in range(10)]


def test_every_case_is_in_exactly_one_test_fold() -> None:
    splits = kfold_splits(CASES, 3)

    tested = [name for split in splits for name in split["test"]]

    assert sorted(tested) == CASES
    assert len(tested) == len(set(tested))


def test_train_and_test_partition_the_cases_in_every_fold() -> None:
    for split in kfold_splits(CASES, 3):
        assert not set(split["train"]) & set(split["test"])
        assert sorted(split["train"] + split["test"]) == CASES


def test_fold_sizes_differ_by_at_most_one() -> None:
    sizes = [len(split["test"]) for split in kfold_splits(CASES, 3)]

    assert sum(sizes) == len(CASES)
    assert max(sizes) - min(sizes) <= 1


def test_same_names_in_another_order_give_the_same_splits() -> None:
    assert kfold_splits(list(reversed(CASES)), 3) == kfold_splits(CASES, 3)


def test_duplicate_names_count_once() -> None:
    assert kfold_splits(CASES + CASES[:4], 3) == kfold_splits(CASES, 3)


def test_fewer_cases_than_folds_is_refused() -> None:
    with pytest.raises(ValueError, match="3 folds need at least 3 labelled cases, got 2"):
        kfold_splits(CASES[:2], 3)


def test_training_subset_is_deterministic_and_order_free() -> None:
    first = training_subset(CASES, 0.3, fold=1)

    assert training_subset(list(reversed(CASES)), 0.3, fold=1) == first
    assert first == sorted(first)
    assert set(first) <= set(CASES)


@pytest.mark.parametrize(("fraction", "expected"), [(0.3, 3), (0.5, 5), (1.0, 10), (0.01, 1)])
def test_training_subset_has_the_right_size(fraction: float, expected: int) -> None:
    assert len(training_subset(CASES, fraction, fold=0)) == expected


def test_training_subset_keeps_at_least_one_case() -> None:
    assert len(training_subset(CASES[:1], 0.05, fold=0)) == 1


def test_training_subset_depends_on_the_fold() -> None:
    subsets = {tuple(training_subset(CASES, 0.3, fold=fold)) for fold in range(5)}

    assert len(subsets) > 1
