"""`medlossy psnr` compares two volumes voxel by voxel in one voxel frame, with the PSNR peak
chosen by the rule every command uses (and says so)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlossy.cli.main import main as cli_main
from medlossy.frames import to_reference_frame
from medlossy.volume import Volume

EXIT_BAD_INPUT = 2


def _mr_like(seed: int = 0, shape: tuple[int, int, int] = (64, 48, 8)) -> np.ndarray:
    """A T1-like int16 volume: dark background, head, brighter core, noise; no HU air."""
    rng = np.random.default_rng(seed)
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    image = 420.0 * (x**2 + y**2 < 0.8) + 230.0 * (x**2 + y**2 < 0.3)
    return np.clip(image + rng.normal(0, 20, shape), 0, None).astype(np.int16)


def _oblique_affine() -> np.ndarray:
    angle = np.deg2rad(12.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0],
                         [np.sin(angle), np.cos(angle), 0.0],
                         [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 0.95, 3.0])
    affine[:3, 3] = [-31.5, 20.25, 44.0]
    return affine


def _flip_z(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image with its slices stored in reverse order (as a DICOM series along -z)."""
    flipped = affine.copy()
    flipped[:3, 2] = -affine[:3, 2]
    flipped[:3, 3] = affine[:3, :3] @ [0, 0, array.shape[2] - 1] + affine[:3, 3]
    return array[:, :, ::-1], flipped


def _transpose(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image with its axes stored as (k, i, j)."""
    return np.transpose(array, (2, 0, 1)), affine[:, [2, 0, 1, 3]]


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


@pytest.fixture
def mr_pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A reference MR-like NIfTI and a noisy copy on the same grid."""
    reference = _mr_like()
    noisy = (reference + np.random.default_rng(1).normal(0, 6, reference.shape)).astype(np.int16)
    affine = _oblique_affine()
    return (_save(tmp_path / "a.nii.gz", reference, affine),
            _save(tmp_path / "b.nii.gz", noisy, affine), noisy, affine)


def _psnr(cli, *arguments) -> tuple[dict, str]:
    code, out, err = cli("psnr", *map(str, arguments), "--json")
    assert code == 0, err
    return json.loads(out), err


def test_psnr_reorients_a_z_flipped_copy(cli, mr_pair, tmp_path) -> None:
    # Found by a new user: a correct MR DICOM output against its NIfTI source (slice order
    # reversed, affine flipped) gave 18.8 dB instead of 43.8 dB: arrays were compared as
    # stored, whatever their affines said.
    reference, test, noisy, affine = mr_pair
    same_frame, _ = _psnr(cli, reference, test)
    flipped = _save(tmp_path / "flipped.nii.gz", *_flip_z(noisy, affine))
    document, err = _psnr(cli, reference, flipped)
    assert document["psnr_db"] == same_frame["psnr_db"]
    assert document["max_abs_error"] == same_frame["max_abs_error"]
    assert document["reoriented"] is not None and "axis 2 flipped" in document["reoriented"]
    assert f"note: {flipped} reoriented to {reference}'s voxel frame" in err


def test_psnr_reorients_a_flipped_and_transposed_copy(cli, mr_pair, tmp_path) -> None:
    reference, test, noisy, affine = mr_pair
    same_frame, _ = _psnr(cli, reference, test)
    moved = _save(tmp_path / "moved.nii.gz", *_transpose(*_flip_z(noisy, affine)))
    document, _ = _psnr(cli, reference, moved)
    assert document["psnr_db"] == same_frame["psnr_db"]
    assert "axes transposed" in document["reoriented"]


def test_psnr_of_the_same_image_stored_flipped_is_infinite(cli, mr_pair, tmp_path) -> None:
    reference, _, _, affine = mr_pair
    source = np.asarray(nib.load(reference).dataobj)
    flipped = _save(tmp_path / "flipped.nii.gz", *_transpose(*_flip_z(source, affine)))
    document, _ = _psnr(cli, reference, flipped)
    assert document["psnr_db"] is None and document["max_abs_error"] == 0


def test_psnr_reorients_a_dicom_series_onto_its_nifti_source(cli, mr_pair, tmp_path) -> None:
    # The NIfTI stores its slices along -z, medlossy's DICOM series along +z.
    reference, _, _, affine = mr_pair
    source = np.asarray(nib.load(reference).dataobj)
    flipped = _save(tmp_path / "flipped.nii.gz", *_flip_z(source, affine))
    series = tmp_path / "series"
    assert cli("compress", reference, series, "--format", "dicom", "--modality", "MR",
               "--lossless", "--workers", "1", "--quiet")[0] == 0
    document, err = _psnr(cli, flipped, series)
    assert document["psnr_db"] is None and document["max_abs_error"] == 0
    assert "reoriented" in err
    store = tmp_path / "from_series.zarr"  # NIfTI -> DICOM -> store
    assert cli("compress", series, store, "--lossless", "--workers", "1", "--quiet")[0] == 0
    document, _ = _psnr(cli, flipped, store)
    assert document["psnr_db"] is None and document["max_abs_error"] == 0


@pytest.mark.parametrize(("change", "what"), [
    (lambda a, f: (a, f @ np.diag([1.0, 1.0, 0.8, 1.0])), "spacing"),
    (lambda a, f: (a, f + np.pad(np.ones((3, 1)) * 5.0, ((0, 1), (3, 0)))), "origin"),
    (lambda a, f: (a[:, :, :-1], f), "shape"),
])
def test_psnr_refuses_another_grid_in_one_line(cli, mr_pair, tmp_path, change, what) -> None:
    reference, _, noisy, affine = mr_pair
    other = _save(tmp_path / "other.nii.gz", *change(noisy, affine))
    code, out, err = cli("psnr", reference, other)
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.startswith(f"medlossy: error: {other}: ") and err.count("\n") == 1, err
    assert str(reference) in err and what in err


def test_frames_leave_the_same_grid_alone() -> None:
    array = _mr_like()
    volume = Volume(array, _oblique_affine())
    aligned = to_reference_frame(volume, Volume(array.copy(), _oblique_affine()))
    assert aligned.reoriented is None and np.array_equal(aligned.array, array)


def test_psnr_and_info_agree_on_an_mr_store(cli, mr_pair, tmp_path) -> None:
    # Found by a new user: the same MR store showed 43.6 dB in `info` and 46.1 dB from `psnr`,
    # which took r = 4096 (CT) unless told otherwise.
    reference, _, _, _ = mr_pair
    store = tmp_path / "mr.zarr"
    code, _, compressed = cli("compress", reference, store, "--ratio", "8", "--workers", "1")
    assert code == 0
    code, out, _ = cli("info", store, "--json")
    assert code == 0
    achieved = json.loads(out)["achieved"]
    assert ("note: modality OTHER (auto: values not in HU range), r = max - min = "
            f"{achieved['data_range']:g}") in compressed
    document, err = _psnr(cli, reference, store)
    assert document["data_range"] == achieved["data_range"] != 4096
    assert document["psnr_db"] == pytest.approx(achieved["psnr_db"], rel=1e-5)
    assert f"modality OTHER (recorded in {store}), r = {achieved['data_range']:g}" in err


def test_psnr_detects_the_modality_of_plain_files(cli, mr_pair, tmp_path) -> None:
    reference, test, _, affine = mr_pair
    source = np.asarray(nib.load(reference).dataobj)
    document, err = _psnr(cli, reference, test)
    assert document["modality"] == "OTHER"
    assert document["data_range"] == float(source.max()) - float(source.min())
    assert "modality OTHER (auto: values not in HU range), r = max - min" in err
    ct = _save(tmp_path / "ct.nii.gz", (source - 1024).astype(np.int16), affine)
    document, err = _psnr(cli, ct, ct)
    assert document["modality"] == "CT" and document["data_range"] == 4096
    assert "modality CT (auto: values in HU range), r = 4096 (CT)" in err
    document, err = _psnr(cli, ct, ct, "--modality", "MR")
    assert document["modality"] == "MR" and "modality MR (given)" in err


@pytest.mark.parametrize("command", [["psnr"], ["compress"], ["dataset", "compress"]])
def test_help_states_the_modality_default(capsys, command) -> None:
    with pytest.raises(SystemExit) as done:
        cli_main([*command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "auto (default)" in text and "Hounsfield units" in text
