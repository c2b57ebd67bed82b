"""Where voxels are in space survives reading, compressing and writing back."""

from __future__ import annotations

import shutil

import nibabel as nib
import nrrd
import numpy as np
import pytest
from conftest import open_with_stock_zarr

from medlossy.compression import Target, compress_volume
from medlossy.decompression import decompress_to_file
from medlossy.errors import MedlossyError
from medlossy.io import read_volume, write_volume
from medlossy.volume import Volume


def _oblique_affine() -> np.ndarray:
    """Anisotropic voxels, a rotation about z and an off-centre origin."""
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0],
                         [np.sin(angle), np.cos(angle), 0.0],
                         [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-120.25, 33.5, -401.0]
    return affine


def _headers_match(a: nib.Nifti1Image, b: nib.Nifti1Image) -> None:
    assert a.shape == b.shape
    assert a.get_data_dtype() == b.get_data_dtype()
    np.testing.assert_array_equal(a.affine, b.affine)
    qform_a, qcode_a = a.get_qform(coded=True)
    qform_b, qcode_b = b.get_qform(coded=True)
    sform_a, scode_a = a.get_sform(coded=True)
    sform_b, scode_b = b.get_sform(coded=True)
    assert (int(qcode_a), int(scode_a)) == (int(qcode_b), int(scode_b))
    np.testing.assert_array_equal(qform_a, qform_b)
    np.testing.assert_array_equal(sform_a, sform_b)
    assert a.header.get_zooms() == b.header.get_zooms()
    assert a.header.get_xyzt_units() == b.header.get_xyzt_units()


@pytest.mark.parametrize("target", [Target("ratio", 6.0), Target("lossless")],
                         ids=["lossy", "lossless"])
def test_nifti_round_trip_keeps_geometry_and_dtype(mr_path, mr_array, tmp_path, target):
    attributes = compress_volume(read_volume(mr_path, "MR"), tmp_path / "mr.zarr", target,
                                 workers=1)
    decompress_to_file(tmp_path / "mr.zarr", tmp_path / "mr.nii.gz", workers=1)
    source, result = nib.load(mr_path), nib.load(tmp_path / "mr.nii.gz")
    _headers_match(source, result)
    data = np.asarray(result.dataobj)
    assert data.dtype == np.int16
    if target.mode == "lossless":
        np.testing.assert_array_equal(data, mr_array)
    else:  # the values in the same voxel order: the error compress reported, not more
        error = np.abs(data.astype(np.int32) - mr_array).max()
        assert error == attributes["achieved"]["max_abs_error"]


def test_nifti_int32_ct_keeps_its_dtype_through_a_file(ct_a_path, tmp_path):
    compress_volume(read_volume(ct_a_path, "CT"), tmp_path / "a.zarr", Target("ratio", 8.0),
                    workers=1)
    decompress_to_file(tmp_path / "a.zarr", tmp_path / "a.nii", workers=1)
    source, result = nib.load(ct_a_path), nib.load(tmp_path / "a.nii")
    _headers_match(source, result)
    assert np.asarray(result.dataobj).dtype == np.int32


def test_nrrd_write_read_round_trip_keeps_the_affine(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 2000, size=(40, 36, 12), dtype=np.int16)
    volume = Volume(array, _oblique_affine())
    write_volume(volume, tmp_path / "v.nrrd")
    header = nrrd.read_header(str(tmp_path / "v.nrrd"))
    assert header["space"] == "left-posterior-superior"
    back = read_volume(tmp_path / "v.nrrd")
    np.testing.assert_allclose(back.affine, volume.affine, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(back.array, array)
    assert back.array.dtype == np.int16


def test_nrrd_in_ras_space_is_read_as_ras(tmp_path):
    affine = _oblique_affine()
    header = {"space": "right-anterior-superior", "space directions": affine[:3, :3].T,
              "space origin": affine[:3, 3]}
    nrrd.write(str(tmp_path / "ras.nrrd"), np.zeros((33, 34, 3), np.int16), header)
    np.testing.assert_allclose(read_volume(tmp_path / "ras.nrrd").affine, affine, atol=1e-9)


def test_nrrd_compress_decompress_keeps_the_affine(ct_b_crop_array, tmp_path):
    volume = Volume(ct_b_crop_array, _oblique_affine(), modality="CT")
    write_volume(volume, tmp_path / "ct.nrrd")
    attributes = compress_volume(read_volume(tmp_path / "ct.nrrd"), tmp_path / "ct.zarr",
                                 Target("ratio", 10.0), workers=1)
    decompress_to_file(tmp_path / "ct.zarr", tmp_path / "back.nrrd", workers=1)
    back = read_volume(tmp_path / "back.nrrd")
    np.testing.assert_allclose(back.affine, volume.affine, rtol=0, atol=1e-6)
    assert back.shape == volume.shape and back.array.dtype == np.int16
    error = np.abs(back.array.astype(np.int32) - ct_b_crop_array).max()
    assert error == attributes["achieved"]["max_abs_error"]


def test_dicom_series_reads_in_hounsfield_units(ct_c_dicom):
    volume = read_volume(ct_c_dicom)
    assert volume.shape == (512, 512, 20)
    assert np.issubdtype(volume.array.dtype, np.integer)
    assert volume.modality == "CT"  # from the DICOM Modality tag
    assert -1100 < volume.array.min() <= -1000  # air, after RescaleIntercept
    assert volume.array.max() > 1000  # bone
    assert volume.spacing[2] == pytest.approx(2.0)
    assert volume.axial_axis == 2
    np.testing.assert_allclose(volume.affine[:3, 2], [0.0, 0.0, 2.0], atol=1e-6)


def test_dicom_affine_matches_the_reference_segmentation_after_a_y_flip(ct_c_dicom,
                                                                       reference_files):
    volume = read_volume(ct_c_dicom)
    segmentation = nib.load(reference_files / "example_seg_dicom.nii.gz")
    assert segmentation.shape == volume.shape
    flip_y = np.eye(4)  # voxel j -> (rows - 1) - j
    flip_y[1, 1], flip_y[1, 3] = -1.0, segmentation.shape[1] - 1
    np.testing.assert_allclose(volume.affine, segmentation.affine @ flip_y, rtol=0, atol=1e-4)
    assert not np.allclose(volume.affine, segmentation.affine, atol=1e-4)
    # with the flip the organ labels lie on soft tissue; without it they do not
    labels = np.asarray(segmentation.dataobj)
    on_grid = volume.array[np.flip(labels, axis=1) > 0].mean()
    off_grid = volume.array[labels > 0].mean()
    assert -100 < on_grid < 250 and on_grid > off_grid + 150


def test_dicom_slices_are_sorted_by_position_not_by_name(ct_c_dicom, tmp_path):
    files = sorted(ct_c_dicom.iterdir())
    shuffled = tmp_path / "series"
    shuffled.mkdir()
    order = np.random.default_rng(3).permutation(len(files))
    for new_name, index in enumerate(order):
        shutil.copy(files[index], shuffled / f"{new_name:03d}.dcm")
    (shuffled / "notes.txt").write_text("not DICOM")  # extras in the folder are skipped
    reference, result = read_volume(ct_c_dicom), read_volume(shuffled)
    np.testing.assert_array_equal(result.array, reference.array)
    np.testing.assert_allclose(result.affine, reference.affine)


def test_dicom_folder_without_dicom_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(MedlossyError, match="no DICOM files"):
        read_volume(tmp_path)


def _axial_first(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array axes (i, j, k) -> (k, i, j), with the affine's columns permuted to match."""
    moved = np.ascontiguousarray(np.moveaxis(array, 2, 0))
    fixed = affine.copy()
    fixed[:, :3] = affine[:, [2, 0, 1]]
    return moved, fixed


def test_axial_first_volume_maps_voxels_to_the_same_world_points(ct_b_crop_image,
                                                                 ct_b_crop_array):
    moved, fixed = _axial_first(ct_b_crop_array, ct_b_crop_image.affine)
    i, j, k = 7, 50, 19
    assert moved[k, i, j] == ct_b_crop_array[i, j, k]
    np.testing.assert_allclose(fixed @ [k, i, j, 1], ct_b_crop_image.affine @ [i, j, k, 1])
    assert Volume(moved, fixed).axial_axis == 0


@pytest.mark.parametrize("target", [Target("lossless"), Target("ratio", 10.0)],
                         ids=["lossless", "x10"])
def test_volume_with_axial_axis_first_round_trips(ct_b_crop_image, ct_b_crop_array, tmp_path,
                                                  target):
    moved, fixed = _axial_first(ct_b_crop_array, ct_b_crop_image.affine)
    source = tmp_path / "axial_first.nii.gz"
    nib.save(nib.Nifti1Image(moved, fixed), source)
    attributes = compress_volume(read_volume(source, "CT"), tmp_path / "s.zarr", target,
                                 workers=1)
    assert attributes["geometry"]["axial_axis"] == 0
    # the store still holds axial slices, of the same size as with the usual layout
    store = open_with_stock_zarr(tmp_path / "s.zarr")
    assert store.shape == (24, 96, 80)
    decompress_to_file(tmp_path / "s.zarr", tmp_path / "back.nii.gz", workers=1)
    back = nib.load(tmp_path / "back.nii.gz")
    _headers_match(nib.load(source), back)
    data = np.asarray(back.dataobj)
    assert data.shape == moved.shape
    if target.mode == "lossless":
        np.testing.assert_array_equal(data, moved)
        np.testing.assert_array_equal(store[5], ct_b_crop_array[:, :, 5])
    else:
        assert np.abs(data.astype(np.int32) - moved).mean() < 40


def test_volume_properties():
    volume = Volume(np.zeros((30, 40, 50)), _oblique_affine())
    assert volume.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert volume.axial_axis == 2 and volume.slice_shape() == (30, 40)
    starts = [(start, slab.shape) for start, slab in volume.slabs(16)]
    assert starts == [(0, (16, 30, 40)), (16, (16, 30, 40)), (32, (16, 30, 40)),
                      (48, (2, 30, 40))]


def test_slabs_put_slices_first_along_the_axial_axis():
    array = np.arange(40 * 3 * 50).reshape(40, 3, 50)
    affine = np.eye(4)[:, [0, 2, 1, 3]]  # array axis 1 runs superior-inferior
    volume = Volume(array, affine)
    assert volume.axial_axis == 1 and volume.slice_shape() == (40, 50)
    slabs = list(volume.slabs(2))
    assert [start for start, _ in slabs] == [0, 2]
    np.testing.assert_array_equal(slabs[1][1][0], array[:, 2, :])


def test_volume_rejects_bad_affine_and_modality():
    with pytest.raises(ValueError, match="4x4"):
        Volume(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(ValueError, match="modality"):
        Volume(np.zeros((2, 2, 2)), np.eye(4), modality="PET")
