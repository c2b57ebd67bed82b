"""The demo data laid out as nnU-Net v2 raw datasets from the TotalSegmentator archive."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import leftovers

from medlossy.data import demo
from medlossy.data.demo import CT_DATASET, MR_DATASET, cache_directory, prepare_demo


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory, reference_files) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("demo")
    return root, prepare_demo(root)


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {str(path.relative_to(root)): (path.stat().st_mtime_ns,
                                          hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(root.rglob("*")) if path.is_file()}


def _cases(dataset: Path) -> list[str]:
    return sorted(p.name.removesuffix(".nii.gz") for p in (dataset / "labelsTr").iterdir())


def test_both_datasets_are_written(demo_root):
    root, datasets = demo_root
    assert datasets == [root / CT_DATASET, root / MR_DATASET]
    assert all((dataset / "dataset.json").is_file() for dataset in datasets)
    assert leftovers(root) == []


@pytest.mark.parametrize("name", [CT_DATASET, MR_DATASET])
def test_dataset_json_is_consistent_with_the_files(demo_root, name):
    dataset = demo_root[0] / name
    document = json.loads((dataset / "dataset.json").read_text())
    assert document["file_ending"] == ".nii.gz"
    assert document["numTraining"] == len(_cases(dataset)) > 0
    images = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    assert images == [f"{case}_0000.nii.gz" for case in _cases(dataset)]
    labels = document["labels"]
    assert labels["background"] == 0
    assert sorted(labels.values()) == list(range(len(labels)))
    assert document["channel_names"] == {"0": "CT" if name == CT_DATASET else "MR"}


@pytest.mark.parametrize("name", [CT_DATASET, MR_DATASET])
def test_images_and_labels_share_geometry(demo_root, name):
    dataset = demo_root[0] / name
    label_ids = set(json.loads((dataset / "dataset.json").read_text())["labels"].values())
    for case in _cases(dataset):
        image = nib.load(dataset / "imagesTr" / f"{case}_0000.nii.gz")
        label = nib.load(dataset / "labelsTr" / f"{case}.nii.gz")
        assert image.shape == label.shape and len(image.shape) == 3
        np.testing.assert_allclose(image.affine, label.affine, atol=1e-5)
        values = np.unique(np.asarray(label.dataobj))
        assert label.get_data_dtype() == np.uint8
        assert set(values.tolist()) <= label_ids
        assert len(values) > 2  # several organs, not an empty mask


def test_dicom_case_becomes_int16_hounsfield(demo_root):
    image = nib.load(demo_root[0] / CT_DATASET / "imagesTr" / "tsct_002_0000.nii.gz")
    assert image.shape == (512, 512, 20)
    assert image.get_data_dtype() == np.int16
    data = np.asarray(image.dataobj)
    assert -1100 < data.min() <= -1000
    labels = np.asarray(nib.load(demo_root[0] / CT_DATASET / "labelsTr" /
                                 "tsct_002.nii.gz").dataobj)
    assert -100 < data[labels > 0].mean() < 250  # labels sit on soft tissue


def test_unlabelled_ct_is_a_test_case(demo_root):
    test_images = list((demo_root[0] / CT_DATASET / "imagesTs").iterdir())
    assert [p.name for p in test_images] == ["tsct_003_0000.nii.gz"]
    assert nib.load(test_images[0]).shape == (233, 167, 191)


def test_rerun_is_idempotent(demo_root):
    root, datasets = demo_root
    before = _snapshot(root)
    assert prepare_demo(root) == datasets
    assert _snapshot(root) == before
    assert leftovers(root) == [] and leftovers(root / CT_DATASET) == []


def test_cli_data_demo_prints_the_dataset_folders(cli, demo_root):
    root, datasets = demo_root
    code, out, _ = cli("data", "demo", "--out", root, "--quiet")
    assert code == 0
    assert out.split() == [str(d) for d in datasets]


def test_cache_directory_honours_environment_and_argument(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDLOSSY_CACHE", str(tmp_path / "env"))
    assert cache_directory() == tmp_path / "env"
    assert cache_directory(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MEDLOSSY_CACHE")
    assert cache_directory() == Path.home() / ".cache" / "medlossy"


def test_reference_files_come_from_the_pinned_archive(reference_files):
    archive = cache_directory() / demo.ARCHIVE
    assert archive.is_file()
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == demo.SHA256
    assert reference_files == cache_directory() / f"totalsegmentator-{demo.VERSION}" / \
        "tests" / "reference_files"
    for name in ("example_ct.nii.gz", "example_mr_sm.nii.gz", "example_ct_dicom",
                 "aorta_report/example_ct.nii.gz", "example_seg_dicom.nii.gz"):
        assert (reference_files / name).exists()
