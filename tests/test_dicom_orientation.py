"""DICOM out in any voxel orientation: frames advance along the slice normal, and independent
readers give the source's voxel values, not only its affine (issue 20).

Data: a small uint16 MR-like volume under axial affines of both handednesses (LPS, LAS, RAS
with a negative z step, an oblique LAS), written lossless, so every reader must return the
exact values.
Readers: dcm2niix (Debian; multi-frame J2K through gdcmconv --raw, since Debian's dcm2niix
decodes a single fragment only), SimpleITK (GDCM, what TorchIO reads with) and medlossy's own.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medlossy.compression import Target, compress_volume
from medlossy.dicom_export import compress_to_dicom, store_to_dicom
from medlossy.io import read_volume

_HAS = {tool: shutil.which(tool) is not None for tool in ("dcm2niix", "gdcmconv")}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: RAS voxel sizes of each test affine: right-handed LPS, and left-handed ones (x flipped;
#: z descending; x flipped and tilted 12 degrees about x), the cases whose frames used to run
#: against the normal.
AFFINES = {"LPS": (-2.0, -2.0, 3.0), "LAS": (-2.0, 2.0, 3.0), "RAS-z": (2.0, 2.0, -3.0),
           "LAS-oblique": (-2.0, 2.0, 3.0)}
_TILT = np.deg2rad(12.0)
#: How each output is made: (modality, multiframe) -> single-frame MR, Enhanced MR, SC.
KINDS = {"mr": ("MR", False), "enhanced": ("MR", True), "sc": ("OTHER", False)}


def _source(folder: Path, name: str) -> Path:
    """A 40 x 36 x 12 uint16 head-like volume (every voxel distinct enough to show a flip)."""
    rng = np.random.default_rng(20)
    values = rng.integers(0, 900, (40, 36, 12), dtype=np.uint16)
    values[:, :, :6] += 1000  # the lower half brighter: a reversed stack cannot pass
    affine = np.diag([*AFFINES[name], 1.0])
    if name.endswith("oblique"):
        tilt = np.eye(4)
        tilt[1:3, 1:3] = [[np.cos(_TILT), -np.sin(_TILT)], [np.sin(_TILT), np.cos(_TILT)]]
        affine = tilt @ affine
    affine[:3, 3] = (12.5, -30.0, 41.0)
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(values, affine), path)
    return path


def _canonical(image: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(image)
    return np.asarray(image.dataobj).astype(np.float64), image.affine


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _positions_in_frame_order(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's Image Position, in frame (or Instance Number) order, and the normal."""
    files = _files(folder)
    if len(files) == 1:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        groups = ds.PerFrameFunctionalGroupsSequence
        positions = [g.PlanePositionSequence[0].ImagePositionPatient for g in groups]
        orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0] \
            .ImageOrientationPatient
    else:
        slices = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in files),
                        key=lambda ds: int(ds.InstanceNumber))
        positions = [ds.ImagePositionPatient for ds in slices]
        orientation = slices[0].ImageOrientationPatient
    orientation = np.asarray(orientation, dtype=float)
    return np.asarray(positions, dtype=float), np.cross(orientation[:3], orientation[3:])


def _sitk_image(folder: Path) -> nib.Nifti1Image:
    """SimpleITK's reading (GDCM) as a RAS NIfTI image."""
    sitk = pytest.importorskip("SimpleITK")
    files = [str(f) for f in _files(folder)]
    if len(files) == 1:
        image = sitk.ReadImage(files[0])
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        image = reader.Execute()
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * image.GetSpacing()
    affine[:3, 3] = image.GetOrigin()
    return nib.Nifti1Image(sitk.GetArrayFromImage(image).transpose(2, 1, 0),
                           _LPS_TO_RAS @ affine)


def _dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    files = _files(folder)
    if len(files) == 1 and pydicom.dcmread(files[0], stop_before_pixels=True) \
            .file_meta.TransferSyntaxUID.is_compressed:
        if not _HAS["gdcmconv"]:
            pytest.skip("gdcmconv (Debian libgdcm-tools) not installed")
        raw = out.parent / f"{out.name}_raw"
        raw.mkdir()
        subprocess.run(["gdcmconv", "--raw", str(files[0]), str(raw / files[0].name)],
                       check=True)
        folder = raw
    out.mkdir()
    subprocess.run(["dcm2niix", "-z", "n", "-o", str(out), "-f", "v", str(folder)],
                   check=True, capture_output=True)
    return nib.load(out / "v.nii")


def _assert_same_voxels(image: nib.Nifti1Image, source: Path, what: str) -> None:
    values, affine = _canonical(image)
    expected_values, expected_affine = _canonical(nib.load(source))
    np.testing.assert_allclose(affine, expected_affine, atol=1e-4, err_msg=what)
    np.testing.assert_array_equal(values, expected_values, err_msg=what)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[tuple[str, str, str], tuple[Path, Path]]:
    """(affine, kind, way) -> (output folder, source NIfTI): ``compress --format dicom``
    (lossless JPEG 2000) and a lossless store decoded to DICOM (uncompressed)."""
    root = tmp_path_factory.mktemp("orientation")
    out = {}
    for name in AFFINES:
        source = _source(root, name)
        for kind, (modality, multiframe) in KINDS.items():
            folder = root / f"{name}_{kind}_compress"
            compress_to_dicom(source, folder, Target("lossless"), modality=modality,
                              workers=1, multiframe=multiframe)
            out[name, kind, "compress"] = folder, source
            store = root / f"{name}_{kind}.zarr"
            compress_volume(read_volume(source, modality), store, Target("lossless"),
                            workers=1)
            folder = root / f"{name}_{kind}_decompress"
            store_to_dicom(store, folder, multiframe=multiframe)
            out[name, kind, "decompress"] = folder, source
    return out


def test_frames_and_instances_advance_along_the_slice_normal(written):
    for key, (folder, _) in written.items():
        positions, normal = _positions_in_frame_order(folder)
        steps = np.diff(positions, axis=0) @ normal
        assert steps == pytest.approx([3.0] * 11), key


def test_medlossy_reads_its_outputs_back_to_the_source_voxels(written):
    for key, (folder, source) in written.items():
        volume = read_volume(folder)
        _assert_same_voxels(nib.Nifti1Image(np.asarray(volume.array), volume.affine), source,
                            str(key))


def test_simpleitk_reads_the_source_voxels(written):
    for key, (folder, source) in written.items():
        _assert_same_voxels(_sitk_image(folder), source, str(key))


@pytest.mark.skipif(not _HAS["dcm2niix"], reason="dcm2niix (Debian) not installed")
def test_dcm2niix_reads_the_source_voxels(written, tmp_path):
    for (name, kind, way), (folder, source) in written.items():
        image = _dcm2niix(folder, tmp_path / f"{name}_{kind}_{way}")
        _assert_same_voxels(image, source, f"{name} {kind} {way}")
