"""The synthetic phantom cohort: determinism, exact labels, calibration, nnU-Net layout, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import leftovers

from medlossy.data.calibration import (
    TISSUE_EROSION_MM,
    erode_mm,
    load_calibration,
    markdown_table,
    noise_statistics,
)
from medlossy.data.phantom import (
    ENHANCEMENT_HU,
    HU_RANGE,
    LABELS,
    TISSUES,
    PhantomConfig,
    dataset_name,
    generate_case,
    write_phantom_dataset,
)

SMALL = PhantomConfig(shape=(48, 48, 32), spacing=(6.0, 6.0, 6.0))
#: Tissue label for every tissue that is a label of its own.
TISSUE_LABEL = {"liver": "liver", "spleen": "spleen", "aorta": "aorta",
                "inferior_vena_cava": "inferior_vena_cava"}


@pytest.fixture(scope="module")
def calibration() -> dict:
    return load_calibration()


@pytest.fixture(scope="module")
def default_case():
    """One case at the default 96 x 96 x 64, 3 mm, without per-case HU jitter."""
    return generate_case(0, PhantomConfig(mean_jitter_hu=0.0))


@pytest.fixture(scope="module")
def small_cases():
    return [generate_case(index, SMALL) for index in range(3)]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_arrays(small_cases):
    again = generate_case(1, SMALL)
    np.testing.assert_array_equal(again.image.array, small_cases[1].image.array)
    np.testing.assert_array_equal(again.labels.array, small_cases[1].labels.array)
    other_seed = generate_case(1, PhantomConfig(shape=SMALL.shape, spacing=SMALL.spacing,
                                                seed=7))
    assert not np.array_equal(other_seed.labels.array, small_cases[1].labels.array)


def test_every_class_is_present_and_labels_are_exact(small_cases, default_case):
    for case in [*small_cases, default_case]:
        labels = case.labels.array
        assert labels.dtype == np.uint8
        assert set(np.unique(labels).tolist()) == set(LABELS.values())
        # Labels define the image: each organ label is exactly its tissue's voxels.
        for tissue, label in TISSUE_LABEL.items():
            np.testing.assert_array_equal(labels == LABELS[label],
                                          case.tissues == TISSUES.index(tissue))
        kidneys = np.isin(labels, [LABELS["kidney_right"], LABELS["kidney_left"]])
        np.testing.assert_array_equal(kidneys, case.tissues == TISSUES.index("kidney"))
        air = case.tissues == TISSUES.index("air")
        np.testing.assert_array_equal(labels == 0, air)


def test_values_are_12_bit_hu_in_int16(small_cases, default_case):
    for case in [*small_cases, default_case]:
        image = case.image.array
        assert image.dtype == np.int16
        assert HU_RANGE[0] <= image.min() and image.max() <= HU_RANGE[1]


def test_tissue_hu_matches_the_calibration(default_case, calibration):
    image = default_case.image.array.astype(np.float64)
    spacing = default_case.image.spacing
    for tissue, reference in calibration["model"]["tissues"].items():
        inner = erode_mm(default_case.tissues == TISSUES.index(tissue), spacing,
                         TISSUE_EROSION_MM)
        assert inner.sum() > 300, tissue
        mean, std = image[inner].mean(), image[inner].std()
        # Kidneys and bone have a large, spatially smooth texture: their mean wanders more.
        textured = tissue in ("kidney", "vertebrae")
        tolerance = 0.35 * reference["std_hu"] if textured else 3.0
        assert abs(mean - reference["mean_hu"]) < tolerance, (tissue, mean, reference)
        relative = 0.4 if textured else 0.1
        assert abs(std - reference["std_hu"]) < relative * reference["std_hu"], (tissue, std)


def test_per_case_means_are_jittered_around_the_calibration(small_cases, calibration):
    reference = calibration["model"]["tissues"]
    liver = [case.means_hu["liver"] for case in small_cases]
    assert len(set(liver)) == 3
    for case in small_cases:
        assert case.means_hu["air"] == reference["air"]["mean_hu"]
        for tissue in ("liver", "spleen", "fat", "muscle"):
            assert abs(case.means_hu[tissue] - reference[tissue]["mean_hu"]) < 5 * 4.0


def test_portal_venous_phase_enhances_organs_and_vessels_only(default_case):
    enhanced = generate_case(0, PhantomConfig(mean_jitter_hu=0.0, phase="portal-venous"))
    np.testing.assert_array_equal(enhanced.labels.array, default_case.labels.array)
    assert enhanced.parameters["phase"] == "portal-venous"
    added = ENHANCEMENT_HU["portal-venous"]
    inner = {name: erode_mm(default_case.labels.array == LABELS[name],
                            default_case.image.spacing, TISSUE_EROSION_MM)
             for name in ("liver", "spleen", "aorta", "inferior_vena_cava")}
    means = {name: enhanced.image.array[mask].mean() for name, mask in inner.items()}
    for name, mask in inner.items():
        gain = means[name] - default_case.image.array[mask].mean()
        assert abs(gain - added[name]) < 5.0, (name, gain)
    # What makes the organs tell apart: vessels brightest, spleen clearly above liver.
    assert means["aorta"] > means["inferior_vena_cava"] + 20 > means["liver"] + 20
    assert means["spleen"] > means["liver"] + 15
    fat = default_case.tissues == TISSUES.index("fat")
    assert abs(enhanced.image.array[fat].mean() - default_case.image.array[fat].mean()) < 1.0


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="phase must be one of"):
        PhantomConfig(phase="arterial-late")


def test_noise_std_and_correlation_match_the_calibration(default_case, calibration):
    measured = calibration["measured"]["CT A"]["noise"]
    liver = default_case.labels.array == LABELS["liver"]
    noise = noise_statistics(default_case.image.array, liver, default_case.image.spacing)
    assert abs(noise["std_hu"] - measured["std_hu"]) < 0.08 * measured["std_hu"]
    np.testing.assert_allclose(noise["lag1_correlation"], measured["lag1_correlation"],
                               atol=0.08)


def test_geometry_is_honest_lps(default_case):
    image, labels = default_case.image, default_case.labels
    np.testing.assert_array_equal(image.affine, labels.affine)
    assert image.shape == labels.shape == (96, 96, 64)
    assert image.spacing == (3.0, 3.0, 3.0)
    assert image.orientation == "LPS"

    def world_x(label: str) -> float:
        centroid = np.argwhere(labels.array == LABELS[label]).mean(axis=0)
        return float((image.affine @ [*centroid, 1.0])[0])

    # RAS+ world: x grows towards the patient's right.
    assert world_x("liver") > 0 > world_x("spleen")
    assert world_x("kidney_right") > 0 > world_x("kidney_left")


def test_anatomy_varies_between_cases(small_cases):
    volumes = np.array([[np.count_nonzero(case.labels.array == label)
                         for label in range(1, len(LABELS))] for case in small_cases])
    spread = volumes.std(axis=0) / volumes.mean(axis=0)
    assert (spread > 0.03).all(), spread


def test_dataset_layout_json_and_rerun(tmp_path):
    folder = write_phantom_dataset(tmp_path, cases=3, config=SMALL, dataset_id=951)
    assert folder == tmp_path / "Dataset951_Phantom"
    assert leftovers(tmp_path) == []
    document = json.loads((folder / "dataset.json").read_text())
    assert document["synthetic"] is True
    assert "SYNTHETIC" in document["description"] and "seed 0" in document["description"]
    assert "native phase" in document["description"]
    assert document["phantom"]["generation"]["phase"] == "native"
    assert document["channel_names"] == {"0": "CT"}
    assert document["file_ending"] == ".nii.gz"
    assert sorted(document["labels"].values()) == list(range(len(LABELS)))
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert document["numTraining"] == len(images) == len(labels) == 3
    assert images == [f"phantom_{i:03d}_0000.nii.gz" for i in range(3)]
    for name in labels:
        image = nib.load(folder / "imagesTr" / name.replace(".nii.gz", "_0000.nii.gz"))
        label = nib.load(folder / "labelsTr" / name)
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(image.affine, label.affine)
        assert image.shape == label.shape == SMALL.shape
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert write_phantom_dataset(tmp_path, cases=3, config=SMALL, dataset_id=951) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def test_cli_writes_into_out_and_case_k_does_not_depend_on_cases(tmp_path, cli):
    code, out, err = cli("data", "phantom", "--cases", "3", "--seed", "0", "--out",
                         tmp_path / "a", "--shape", "48,48,32", "--spacing", "6", "--quiet")
    assert code == 0, err
    folder = tmp_path / "a" / dataset_name(950)
    assert out.strip() == str(folder)
    code, _, err = cli("data", "phantom", "--cases", "2", "--out", tmp_path / "b", "--shape",
                       "48,48,32", "--spacing", "6,6,6", "--quiet")
    assert code == 0, err
    small, large = _digests(tmp_path / "b" / dataset_name(950)), _digests(folder)
    assert {k: v for k, v in large.items() if k in small and k != "dataset.json"} \
        == {k: v for k, v in small.items() if k != "dataset.json"}
    code, _, err = cli("data", "phantom", "--out", tmp_path / "c", "--shape", "48,x")
    assert code == 2 and "--shape" in err


def test_calibration_table_is_frozen_and_complete(calibration):
    assert calibration["model"]["source"] == "CT A"
    expected = {"liver", "spleen", "kidney", "aorta", "inferior_vena_cava", "vertebrae",
                "muscle", "bowel", "fat", "air"}
    assert set(calibration["model"]["tissues"]) == expected
    assert {model["source"] for model in calibration["model"]["noise"]} == {"CT A", "CT C"}
    table = markdown_table(calibration)
    assert "| liver |" in table and "lag-1 correlation" in table


def test_cli_never_replaces_a_dataset_folder_it_did_not_write(tmp_path, cli):
    folder = tmp_path / dataset_name(951)
    folder.mkdir()
    (folder / "dataset.json").write_text('{"name": "mine"}')
    (folder / "notes.txt").write_text("mine")
    code, _, err = cli("data", "phantom", "--cases", "1", "--id", "951", "--out", tmp_path,
                       "--shape", "48,48,32", "--spacing", "6", "--quiet")
    assert code == 2
    assert err.count("\n") == 1 and "not a phantom cohort medlossy wrote" in err
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "notes.txt"]
