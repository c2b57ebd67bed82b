"""Small nnU-Net raw datasets for the dataset-sweep tests, and bad input refused up front.

The builders here are imported by the other ``test_dataset_*`` modules. Bad input to
``medlossy dataset compress`` gets one line on stderr naming the case, exit code 2, and no
sweep folder at all (every case is checked before any work starts).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlossy.datasets import sweep as sweep_module
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.datasets.validation import case_problem

EXIT_BAD_INPUT = 2
SYNTHETIC_LABELS = {"background": 0, "organ": 1, "lesion": 2}

# ---------------------------------------------------------------------------------------------
# Builders (used by the other test_dataset_* modules)
# ---------------------------------------------------------------------------------------------


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def write_dataset_json(root: Path, channels: dict[str, str], labels: dict[str, int],
                       training: int, file_ending: str = ".nii.gz") -> None:
    root.mkdir(parents=True, exist_ok=True)
    document = {"channel_names": channels, "labels": labels, "numTraining": training,
                "file_ending": file_ending, "name": root.name.split("_", 1)[-1]}
    (root / "dataset.json").write_text(json.dumps(document, indent=2))


def synthetic_case(seed: int, shape: tuple[int, int, int] = (48, 48, 8),
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (air, body, organ, lesion, noise) and its integer labels."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    shift = rng.uniform(-0.15, 0.15, 2)
    body = x**2 + y**2 < 0.85
    organ = (x - shift[0]) ** 2 + (y - shift[1]) ** 2 + 0.3 * z**2 < 0.2
    lesion = (x - shift[0] - 0.1) ** 2 + (y - shift[1]) ** 2 < 0.02
    image = np.full(shape, -1000.0)
    image[body] = 30
    image[organ] = 110
    image[lesion & organ] = 60
    image += rng.normal(0, 12, shape)
    labels = np.zeros(shape, np.uint8)
    labels[organ] = 1
    labels[lesion & organ] = 2
    return np.round(image).astype(np.int16), labels


def synthetic_affine(spacing: tuple[float, float, float] = (1.5, 1.5, 3.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-40.0, 25.0, 100.0)
    return affine


def write_synthetic_dataset(root: Path, cases: dict[str, int], *, channels: int = 1,
                            test_cases: dict[str, int] | None = None,
                            shape: tuple[int, int, int] = (48, 48, 8),
                            affine: np.ndarray | None = None) -> Path:
    """An nnU-Net raw CT dataset of synthetic cases (name -> seed); channel c is image + 100 c."""
    affine = synthetic_affine() if affine is None else affine
    names = {str(c): "CT" for c in range(channels)}
    write_dataset_json(root, names, SYNTHETIC_LABELS, len(cases))
    for split, group in (("Tr", cases), ("Ts", test_cases or {})):
        for name, seed in group.items():
            image, labels = synthetic_case(seed, shape)
            for channel in range(channels):
                save_nifti(root / f"images{split}" / f"{name}_{channel:04d}.nii.gz",
                           (image + 100 * channel).astype(np.int16), affine)
            if split == "Tr":
                save_nifti(root / "labelsTr" / f"{name}.nii.gz", labels, affine)
    return root


def write_crop_dataset(root: Path, image_path: Path, label_path: Path,
                       crops: dict[tuple[str, str], tuple[slice, ...]],
                       channel_names: dict[str, str],
                       derive: Callable[[int, np.ndarray], np.ndarray] | None = None) -> Path:
    """An nnU-Net raw dataset cut out of one real image and its labels.

    ``crops`` maps (split, case) to a box; labels present in the training crops are renumbered
    0..K (nnU-Net wants consecutive labels). Channel c > 0 is ``derive(c, channel 0)``.
    """
    image, label = nib.load(image_path), nib.load(label_path)
    training = [box for (split, _), box in crops.items() if split == "Tr"]
    present = {0}.union(*(np.unique(np.asarray(label.slicer[box].dataobj)).tolist()
                          for box in training))
    values = sorted(present)
    lookup = np.zeros(max(values) + 1, np.uint8)
    lookup[values] = np.arange(len(values))
    labels = {"background": 0, **{f"class_{v}": i for i, v in enumerate(values) if v}}
    write_dataset_json(root, channel_names, labels, len(training))
    for (split, name), box in crops.items():
        cropped = image.slicer[box]
        array = np.asarray(cropped.dataobj)
        for channel in range(len(channel_names)):
            data = array if channel == 0 else derive(channel, array)
            save_nifti(root / f"images{split}" / f"{name}_{channel:04d}.nii.gz", data,
                       cropped.affine)
        if split == "Tr":
            cropped_label = label.slicer[box]
            save_nifti(root / "labelsTr" / f"{name}.nii.gz",
                       lookup[np.asarray(cropped_label.dataobj)], cropped_label.affine)
    return root


#: Crops of the real CT example_ct.nii.gz (int32, 3 mm): two labelled cases, one test case.
CT_CROPS = {
    ("Tr", "small_a"): (slice(20, 84), slice(20, 76), slice(40, 52)),
    ("Tr", "small_b"): (slice(30, 94), slice(30, 86), slice(60, 72)),
    ("Ts", "small_c"): (slice(10, 70), slice(10, 60), slice(80, 90)),
}


def write_ct_crops(reference_files: Path, root: Path) -> Path:
    return write_crop_dataset(root, reference_files / "example_ct.nii.gz",
                              reference_files / "example_seg_fast_force_split.nii.gz",
                              CT_CROPS, {"0": "CT"})


@contextmanager
def _serial_executor(workers: int, scheduler: str | None) -> Iterator[Executor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def run_sweeps_serially(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run sweep tasks one at a time in this process: same task code, no pool start-up.

    The process pool itself is exercised by test_dataset_sweep's shared sweep, the
    truncated-image test, the kill -9 test and the Dask comparison.
    """
    monkeypatch.setattr(sweep_module, "_executor", _serial_executor)


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the case, exit 2, nothing written
# ---------------------------------------------------------------------------------------------


def _label_shape(root: Path, case: str) -> None:
    path = root / "labelsTr" / f"{case}.nii.gz"
    label = nib.load(path)
    save_nifti(path, np.asarray(label.dataobj)[:, :, :-1], label.affine)


def _label_affine(root: Path, case: str) -> None:
    path = root / "labelsTr" / f"{case}.nii.gz"
    label = nib.load(path)
    affine = label.affine.copy()
    affine[0, 3] += 4.5  # three voxels off in x
    save_nifti(path, np.asarray(label.dataobj), affine)


def _missing_channel(root: Path, case: str) -> None:
    (root / "imagesTr" / f"{case}_0001.nii.gz").unlink()


def _random_bytes_image(root: Path, case: str) -> None:
    (root / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(
        np.random.default_rng(7).bytes(5000))


def _float_label(root: Path, case: str) -> None:
    path = root / "labelsTr" / f"{case}.nii.gz"
    label = nib.load(path)
    values = np.asarray(label.dataobj).astype(np.float32)
    values[values == 1] = 0.5
    save_nifti(path, values, label.affine)


def _unknown_label(root: Path, case: str) -> None:
    path = root / "labelsTr" / f"{case}.nii.gz"
    label = nib.load(path)
    values = np.asarray(label.dataobj).copy()
    values[values == 2] = 7  # dataset.json knows 0, 1, 2 only
    save_nifti(path, values, label.affine)


#: How to break a case, and a fragment the error line must contain.
BREAKAGES: dict[str, tuple[Callable[[Path, str], None], str]] = {
    "label_shape": (_label_shape, "label shape"),
    "label_affine": (_label_affine, "label affine"),
    "missing_channel": (_missing_channel, "missing channel"),
    "random_bytes_image": (_random_bytes_image, "not readable"),
    "float_label": (_float_label, "non-integer"),
    "unknown_label": (_unknown_label, "not in dataset.json labels"),
}


def write_two_channel_dataset_with_bad_cases(root: Path, breakages: list[str]) -> Path:
    """good_01 and good_02, plus one case per breakage named bad_<breakage>."""
    cases = {"good_01": 1, "good_02": 2}
    cases.update({f"bad_{name}": 10 + i for i, name in enumerate(breakages)})
    write_synthetic_dataset(root, cases, channels=2)
    for name in breakages:
        BREAKAGES[name][0](root, f"bad_{name}")
    return root


def test_builders_give_cases_the_validator_accepts(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "Dataset600_Syn", {"a": 1, "b": 2}, channels=2,
                                   test_cases={"c": 3})
    dataset = open_raw_dataset(root)
    cases = dataset.cases()
    assert [(c.name, c.split, sorted(c.images)) for c in cases] == [
        ("a", "Tr", [0, 1]), ("b", "Tr", [0, 1]), ("c", "Ts", [0, 1])]
    assert [case_problem(dataset, case) for case in cases] == [None, None, None]


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_validator_names_the_problem(tmp_path: Path, breakage: str) -> None:
    root = write_two_channel_dataset_with_bad_cases(tmp_path / "Dataset601_Bad", [breakage])
    dataset = open_raw_dataset(root)
    problems = {case.name: case_problem(dataset, case) for case in dataset.cases()}
    assert problems["good_01"] is None and problems["good_02"] is None
    problem = problems[f"bad_{breakage}"]
    assert problem is not None
    assert problem.startswith(f"case bad_{breakage}: ")
    assert BREAKAGES[breakage][1] in problem


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_compress_refuses_bad_case_in_one_line(tmp_path: Path, cli, breakage: str) -> None:
    root = write_two_channel_dataset_with_bad_cases(tmp_path / "Dataset602_Bad", [breakage])
    out = tmp_path / "sweep"
    code, stdout, stderr = cli("dataset", "compress", root, "--ratios", "1,5", "--out", out,
                               "--quiet", "--workers", "1")
    assert code == EXIT_BAD_INPUT
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("medlossy: error: ")
    assert f"case bad_{breakage}:" in lines[0]
    assert BREAKAGES[breakage][1] in lines[0]
    assert stdout == ""
    assert not out.exists()
