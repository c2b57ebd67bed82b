"""The report's pictures show a slice through the organs, not only the body outline."""

import numpy as np

from medlossy.report.pictures import busiest_slice


def test_the_slice_with_most_classes_wins_over_the_one_with_most_voxels() -> None:
    label = np.zeros((40, 40, 6), dtype=np.uint8)
    label[:, :, 5] = 1                      # body only, 1600 voxels (the old choice)
    label[5:30, 5:30, 2] = 1                # body with two small organs
    label[8:12, 8:12, 2] = 2
    label[20:24, 20:24, 2] = 3
    label[5:30, 5:30, 3] = 1                # body and one organ
    label[8:12, 8:12, 3] = 2

    assert busiest_slice(label, 6) == 2


def test_ties_in_classes_go_to_the_slice_with_more_labelled_voxels() -> None:
    label = np.zeros((20, 20, 4), dtype=np.uint8)
    label[2:6, 2:6, 1] = 4
    label[2:12, 2:12, 3] = 4

    assert busiest_slice(label, 4) == 3


def test_without_labels_the_middle_slice_is_shown() -> None:
    assert busiest_slice(None, 9) == 4
    assert busiest_slice(np.zeros((4, 4, 9), dtype=np.uint8), 9) == 4
