"""Inputs that cannot be misread: a real DICOM CT series with a gap, duplicates, extra objects.

Each case reproduces a failure seen on real export folders (issue 12): the series is the
TotalSegmentator archive's JPEG 2000 CT (20 slices, 2 mm apart), edited with pydicom.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset

from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.store import SliceStore


def _copy_series(source: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        shutil.copy(file, target / file.name)
    return sorted(target.iterdir())


def _by_position(files: list[Path]) -> list[Path]:
    return sorted(files, key=lambda f: float(
        pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def _rtstruct(path: Path) -> Path:
    """pydicom's RT Structure Set test object, given the file meta a real export has."""
    ds = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_missing_slice_is_refused_naming_its_neighbours(cli, ct_c_dicom, tmp_path):
    files = _by_position(_copy_series(ct_c_dicom, tmp_path / "series"))
    files[8].unlink()  # the 9th slice from the bottom
    code, _, err = cli("compress", tmp_path / "series", tmp_path / "s.zarr", "--ratio", "10",
                       "--workers", "1", "--quiet")
    assert code == 2
    assert "1 slice(s) missing" in err and "--allow-gaps" in err
    assert files[7].name in err and files[9].name in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()


def test_allow_gaps_accepts_and_records_the_true_positions(cli, ct_c_dicom, tmp_path):
    files = _by_position(_copy_series(ct_c_dicom, tmp_path / "series"))
    files[8].unlink()
    store = tmp_path / "s.zarr"
    code, _, err = cli("compress", tmp_path / "series", store, "--ratio", "10",
                       "--workers", "1", "--allow-gaps")
    assert code == 0, err
    assert "accepted (--allow-gaps)" in err
    attributes = SliceStore(store).attributes
    # The nominal 2 mm step, not the 2.11 mm that spreading 19 slices over 38 mm gives.
    assert attributes["geometry"]["spacing"][2] == pytest.approx(2.0)
    offsets = attributes["source"]["slice_offsets_mm"]
    assert np.diff(offsets).tolist() == pytest.approx([2.0] * 7 + [4.0] + [2.0] * 10)
    assert "missing" in attributes["source"]["irregular_spacing"]


def test_uneven_spacing_is_refused_but_rounding_jitter_is_not(ct_c_dicom, tmp_path):
    files = _by_position(_copy_series(ct_c_dicom, tmp_path / "series"))
    ds = pydicom.dcmread(files[5])
    z = float(ds.ImagePositionPatient[2])
    ds.ImagePositionPatient[2] = z + 0.004  # scanner rounding: fine
    ds.save_as(files[5])
    assert read_volume(tmp_path / "series").spacing[2] == pytest.approx(2.0)
    ds.ImagePositionPatient[2] = z + 0.5
    ds.save_as(files[5])
    with pytest.raises(MedlossyError, match="uneven step between") as caught:
        read_volume(tmp_path / "series")
    assert files[5].name in str(caught.value)


def test_three_copies_of_one_slice_name_the_real_cause(cli, ct_c_dicom, tmp_path):
    folder = tmp_path / "copies"
    folder.mkdir()
    first = sorted(ct_c_dicom.iterdir())[0]
    for k in range(3):
        shutil.copy(first, folder / f"copy{k}.dcm")
    code, _, err = cli("compress", folder, tmp_path / "s.zarr", "--ratio", "10", "--quiet")
    assert code == 2
    assert "3 slices share the position" in err and "copies of one slice" in err
    assert "512x3" not in err


def test_a_duplicate_slice_inside_a_series_is_refused(ct_c_dicom, tmp_path):
    files = _copy_series(ct_c_dicom, tmp_path / "series")
    shutil.copy(files[3], tmp_path / "series" / "duplicate.dcm")
    with pytest.raises(MedlossyError, match="2 slices share the position") as caught:
        read_volume(tmp_path / "series")
    assert "duplicate.dcm" in str(caught.value) and files[3].name in str(caught.value)


def test_series_with_its_rtstruct_reads_the_images_and_names_what_was_left_out(
        cli, ct_c_dicom, tmp_path):
    _copy_series(ct_c_dicom, tmp_path / "export")
    _rtstruct(tmp_path / "export" / "RS.dcm")
    volume = read_volume(tmp_path / "export")
    assert volume.shape == (512, 512, 20)
    assert volume.header["ignored"] == ["RS.dcm (RTSTRUCT)"]
    code, _, err = cli("compress", tmp_path / "export", tmp_path / "s.zarr", "--ratio", "10",
                       "--workers", "1")
    assert code == 0, err
    assert "left out 1 non-image object(s): RS.dcm (RTSTRUCT)" in err


def test_two_image_series_are_refused_and_listed(ct_c_dicom, tmp_path):
    files = _copy_series(ct_c_dicom, tmp_path / "two")
    for file in files[:10]:
        ds = pydicom.dcmread(file)
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.SeriesDescription = "other recon"
        ds.save_as(file)
    with pytest.raises(MedlossyError, match="holds 2 image series") as caught:
        read_volume(tmp_path / "two")
    assert "1.2.3.4 'other recon': 10 file(s)" in str(caught.value)
    assert "'CT Body 3.0': 10 file(s)" in str(caught.value)


@pytest.mark.parametrize("as_folder", [True, False], ids=["folder", "file"])
def test_an_rtstruct_alone_is_a_one_line_error(cli, tmp_path, as_folder):
    folder = tmp_path / "rt"
    folder.mkdir()
    rt = _rtstruct(folder / "RS.dcm")
    code, _, err = cli("compress", folder if as_folder else rt, tmp_path / "s.zarr",
                       "--ratio", "10", "--quiet")
    assert code == 2
    assert "RTSTRUCT" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_ct_series_is_read_as_int16_like_dcm2niix(ct_c_dicom):
    volume = read_volume(ct_c_dicom)
    assert volume.array.dtype == np.int16
    reference = pydicom.dcmread(sorted(ct_c_dicom.iterdir())[0])
    hu = reference.pixel_array.astype(np.int32) * int(reference.RescaleSlope) + int(
        reference.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[:, :, -1], hu.T)  # top slice, i along columns


def test_values_beyond_int16_keep_a_wider_type_and_fractions_become_float(ct_c_dicom,
                                                                         tmp_path):
    files = _copy_series(ct_c_dicom, tmp_path / "series")
    for file in files:
        ds = pydicom.dcmread(file)
        ds.RescaleSlope = 20  # 2460 * 20 - 1024 > 32767
        ds.save_as(file)
    wide = read_volume(tmp_path / "series")
    assert wide.array.dtype == np.int32 and wide.array.max() > 32767
    for file in files:
        ds = pydicom.dcmread(file)
        ds.RescaleSlope = 0.5
        ds.save_as(file)
    # one fractional rescale: exact float64 values, the stored integers' scaling recorded
    halves = read_volume(tmp_path / "series")
    assert halves.array.dtype == np.float64
    assert (halves.header["scl_slope"], halves.header["scl_inter"]) == (0.5, -1024.0)
    assert np.array_equal(halves.array * 2, np.rint(halves.array * 2))
    for index, file in enumerate(files):  # a rescale per slice (as PET has): float32
        ds = pydicom.dcmread(file)
        ds.RescaleSlope = 0.5 + index / 8
        ds.save_as(file)
    mixed = read_volume(tmp_path / "series")
    assert mixed.array.dtype == np.float32 and "scl_slope" not in mixed.header


def _fractional_rescale_series(folder: Path, slope: str = "0.37",
                               intercept: str = "-1024.3") -> Path:
    """Six CT slices of random int16 under one fractional RescaleSlope / RescaleIntercept."""
    import copy

    from pydicom.uid import generate_uid

    folder.mkdir()
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    rng = np.random.default_rng(0)
    series = generate_uid()
    for k in range(6):
        ds = copy.deepcopy(source)
        ds.PixelData = rng.integers(-2000, 3000, (ds.Rows, ds.Columns)).astype(
            np.int16).tobytes()
        ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.SeriesInstanceUID, ds.InstanceNumber = series, k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [*position[:2], position[2] + 2.5 * k]
        ds.save_as(folder / f"{k}.dcm")
    return folder


@pytest.mark.parametrize("codec", ["jpeg2k", "jpegls"])
def test_lossless_of_a_fractional_rescale_series_keeps_its_integers(tmp_path, cli, codec):
    # Found by a new user: the series was read as float32, so lossless JPEG 2000 / JPEG-LS /
    # DICOM were refused as "fractional" and Blosc kept float32 values off by up to 5.9e-5
    # from stored * slope + intercept (the same data as a scaled NIfTI was kept exactly).
    from medlossy.decompression import read_store

    series = _fractional_rescale_series(tmp_path / "series")
    truth = [pydicom.dcmread(f) for f in sorted(series.iterdir())]
    expected = np.stack([d.pixel_array.astype(np.float64) * 0.37 - 1024.3 for d in truth])
    code, _, err = cli("compress", series, tmp_path / "s.zarr", "--lossless", "--codec", codec,
                       "--workers", "1", "--quiet")
    assert code == 0, err
    back = read_store(tmp_path / "s.zarr", workers=1).array  # (columns, rows, slices)
    np.testing.assert_array_equal(np.moveaxis(back, 2, 0).transpose(0, 2, 1), expected)
    assert SliceStore(tmp_path / "s.zarr").attributes["intensity"]["slope"] == 0.37
    code, _, err = cli("compress", series, tmp_path / "out", "--lossless", "--format", "dicom",
                       "--workers", "1", "--quiet")
    assert code == 0, err
    np.testing.assert_array_equal(read_volume(tmp_path / "out").array, read_volume(series).array)


def test_padded_pixel_data_reads_without_pydicoms_warning(tmp_path):
    # Found by a new user: MR_small_padded.dcm printed pydicom's multi-line UserWarning
    # about 128 bytes of excess padding above medlossy's one-line summary.
    import warnings

    source = Path(get_testdata_file("MR_small_padded.dcm"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = read_volume(source)
    assert [str(w.message) for w in caught] == []
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    assert volume.array.shape[:2] == reference.shape[::-1]
    np.testing.assert_array_equal(np.squeeze(volume.array).T, reference)


def test_a_file_with_the_other_vr_encoding_reads_without_pydicoms_warning():
    # Found by a new user: a file whose transfer syntax says explicit VR but holds implicit VR
    # (pydicom reads it right) printed pydicom's two-line UserWarning above the one-line error.
    import warnings

    source = Path(get_testdata_file("SC_rgb_jpeg.dcm"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(MedlossyError, match="ImageOrientationPatient"):
            read_volume(source)
    assert [str(w.message) for w in caught] == []


def test_decompressing_a_rescaled_series_writes_nifti_integers_where_scl_holds_the_rescale(
        tmp_path, cli):
    import nibabel as nib

    for slope, intercept, stored in (("0.5", "-1024", np.int16), ("0.37", "-1024.3", None)):
        case = tmp_path / slope
        case.mkdir()
        series = _fractional_rescale_series(case / "series", slope, intercept)
        for command in (("compress", series, case / "s.zarr", "--lossless"),
                        ("decompress", case / "s.zarr", case / "back.nii.gz")):
            code, _, err = cli(*command, "--workers", "1")
            assert code == 0, err
        back = nib.load(case / "back.nii.gz")
        np.testing.assert_array_equal(np.asarray(back.dataobj), read_volume(series).array)
        if stored is None:  # NIfTI's float32 scl_slope cannot hold 0.37: the values as they are
            assert back.get_data_dtype() == np.float64 and back.dataobj.slope == 1.0
        else:  # as dcm2niix writes it: the stored integers under scl_slope / scl_inter
            assert back.get_data_dtype() == stored
            assert (back.dataobj.slope, back.dataobj.inter) == (0.5, -1024.0)


#: Slice steps of an oblique GE MR series (mm along the normal): uneven, 6.958 to 7.071.
GE_STEPS = [6.958, 7.071, 6.958, 6.958, 7.071, 6.958, 7.012, 6.958, 7.071, 6.958, 6.958,
            7.071, 6.958, 7.044, 6.958, 7.071, 6.958, 6.958, 7.071]


def _oblique_mr_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """pydicom's MR slice as a 20-slice oblique series (rotated 17 degrees about x and 9 about
    z) at the uneven GE steps, each position also off the normal line in-plane by up to
    0.03 mm, as a scanner's rounded positions are. Returns (first position, normal)."""
    import copy

    from pydicom.uid import generate_uid
    from scipy.spatial.transform import Rotation

    folder.mkdir()
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    rotation = Rotation.from_euler("xz", [17, 9], degrees=True).as_matrix()
    row, column = rotation[:, 0], rotation[:, 1]
    normal = np.cross(row, column)
    first = np.array([-110.0, -95.5, 40.25])
    offsets = np.concatenate([[0.0], np.cumsum(GE_STEPS)])
    rng = np.random.default_rng(7)
    series = generate_uid()
    for k, offset in enumerate(offsets):
        ds = copy.deepcopy(source)
        ds.PixelData = rng.integers(0, 1200, (ds.Rows, ds.Columns)).astype(np.int16).tobytes()
        jitter = rng.uniform(-0.03, 0.03, 2) if k else np.zeros(2)
        position = first + offset * normal + jitter[0] * row + jitter[1] * column
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *column)]
        ds.SeriesInstanceUID, ds.InstanceNumber = series, k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"{k}.dcm")
    return first, normal


def test_allow_gaps_on_an_oblique_series_puts_the_slice_axis_on_the_normal(cli, tmp_path):
    """Issue 20: the per-coordinate median of uneven steps (6.958 mm, 0.27 degrees off the
    normal on a GE MR) gave a slice column off the normal, the last slice 0.8 mm off, and
    different affines in the NIfTI and the NRRD decoded from one store (qform cannot hold a
    skewed affine, so ITK readers such as TorchIO's took another one)."""
    first, normal = _oblique_mr_series(tmp_path / "series")
    volume = read_volume(tmp_path / "series", allow_gaps=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    column = lps[:3, 2]
    np.testing.assert_allclose(lps[:3, 3], first, atol=1e-4)
    normal = normal / np.linalg.norm(normal)
    mean_step = sum(GE_STEPS) / len(GE_STEPS)
    angle = np.degrees(np.arccos(min(1.0, abs(column @ normal) / np.linalg.norm(column))))
    assert angle < 1e-3 and column @ normal > 0
    assert np.linalg.norm(column) == pytest.approx(mean_step, abs=1e-4)
    last = pydicom.dcmread(tmp_path / "series" / "19.dcm", stop_before_pixels=True)
    placed = lps @ np.array([0.0, 0.0, 19.0, 1.0])
    assert (placed[:3] - np.asarray(last.ImagePositionPatient, float)) @ normal == \
        pytest.approx(0.0, abs=1e-3)
    assert f"mean step {mean_step:.3f} mm along the slice normal" in \
        volume.header["irregular_spacing"]

    store = tmp_path / "s.zarr"
    code, _, err = cli("compress", tmp_path / "series", store, "--lossless", "--workers", "1",
                       "--allow-gaps")
    assert code == 0, err
    assert "uneven step" in err and f"mean step {mean_step:.3f} mm" in err
    sitk = pytest.importorskip("SimpleITK")
    images = {}
    for suffix in ("nii.gz", "nrrd"):
        output = tmp_path / f"back.{suffix}"
        assert cli("decompress", store, output, "--quiet")[0] == 0
        images[suffix] = sitk.ReadImage(str(output))
        values = sitk.GetArrayFromImage(images[suffix]).transpose(2, 1, 0)
        np.testing.assert_array_equal(values, volume.array)  # lossless, same voxel order
    for attribute in ("GetDirection", "GetSpacing", "GetOrigin"):
        np.testing.assert_allclose(getattr(images["nii.gz"], attribute)(),
                                   getattr(images["nrrd"], attribute)(), atol=1e-4)
    nifti = nib.load(tmp_path / "back.nii.gz")
    np.testing.assert_allclose(nifti.get_qform(), nifti.get_sform(), atol=1e-4)


def test_colour_dicom_is_named_colour_not_by_its_photometric_interpretation(tmp_path, cli):
    # A colour capture whose header still says MONOCHROME2 was called "MONOCHROME2 images
    # are not supported".
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    pixels = np.repeat(ds.pixel_array[..., np.newaxis], 3, axis=2).astype(np.uint16)
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "rgb.dcm")
    code, _, err = cli("compress", tmp_path / "rgb.dcm", tmp_path / "s.zarr", "--lossless")
    assert code == 2
    assert err.count("\n") == 1 and "rgb.dcm: colour (3 samples per pixel) DICOM is not " \
        "supported" in err, err
