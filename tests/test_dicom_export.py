"""DICOM out: JPEG 2000 / HTJ2K series at a whole-series ratio, and stores decoded to DICOM.

Checked by independent tools where they are installed (CI installs them, see .ci/run):
dciodvfy (dicom3tools) validates every file, GDCM and pydicom decode the frames, dcm2niix
converts the series. Data: the TotalSegmentator CT series (real, 512x512x20) and a crop of CT B
written from NIfTI.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import imagecodecs
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from medlossy.codecs import codec_names, get_codec
from medlossy.compression import Target
from medlossy.decompression import read_store
from medlossy.dicom_export import compress_to_dicom, frame_order
from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.io.dicom_writer import PixelEncoding, write_series

_HAS = {tool: shutil.which(tool) is not None for tool in ("dciodvfy", "dcm2niix", "gdcmconv")}


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _frames(file: Path) -> list[bytes]:
    ds = pydicom.dcmread(file)
    return list(generate_frames(ds.PixelData, number_of_frames=1))


def _canonical(volume) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume.array), volume.affine))
    return np.asarray(image.dataobj), image.affine


@pytest.fixture(scope="module")
def real_x20(ct_c_dicom, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "ct_x20"
    result = compress_to_dicom(ct_c_dicom, out, Target("ratio", 20.0), workers=2)
    return out, result


@pytest.fixture(scope="module")
def nifti_lossless(ct_b_crop_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "crop_lossless"
    compress_to_dicom(ct_b_crop_file, out, Target("lossless"), workers=1)
    return out


def test_nifti_to_dicom_to_volume_is_exact_when_lossless(ct_b_crop_file, nifti_lossless):
    source, back = read_volume(ct_b_crop_file), read_volume(nifti_lossless)
    assert {str(pydicom.dcmread(f).file_meta.TransferSyntaxUID) for f in _files(
        nifti_lossless)} == {"1.2.840.10008.1.2.4.90"}
    source_values, source_affine = _canonical(source)
    back_values, back_affine = _canonical(back)
    np.testing.assert_array_equal(back_values, source_values)
    np.testing.assert_allclose(back_affine, source_affine, atol=1e-4)
    ds = pydicom.dcmread(_files(nifti_lossless)[0])
    assert ds.LossyImageCompression == "00" and ds.Modality == "CT"


@pytest.mark.slow
def test_real_series_at_x20_meets_the_ratio_over_pixel_data(ct_c_dicom, real_x20):
    out, result = real_x20
    files = _files(out)
    assert len(files) == 20
    pixel_bytes = sum(len(f) + len(f) % 2 for file in files for f in _frames(file))
    assert 2 * 512 * 512 * 20 / pixel_bytes == pytest.approx(20.0, rel=0.01)
    source = pydicom.dcmread(sorted(ct_c_dicom.iterdir())[0], stop_before_pixels=True)
    uids = set()
    for file in files:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_15444_1"
        assert float(ds.LossyImageCompressionRatio) == pytest.approx(result["ratio"], rel=1e-3)
        assert ds.ImageType[0] == "DERIVED" and "x20.00" in ds.DerivationDescription
        assert ds.DerivationCodeSequence[0].CodeValue == "113040"
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.PatientWeight == source.PatientWeight and ds.KVP == source.KVP
        assert ds.Rows == 512 and ds.PixelSpacing == source.PixelSpacing
        uids.add(ds.SOPInstanceUID)
        assert ds.SeriesInstanceUID and ds.StudyInstanceUID  # the anonymised source has none
    assert len(uids) == 20


@pytest.mark.slow
def test_pydicom_gdcm_and_medlossy_decode_the_same_pixels(real_x20, ct_c_dicom, tmp_path):
    out, result = real_x20
    codec = get_codec("jpeg2k")
    source = read_volume(ct_c_dicom)
    written = read_volume(out)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
    assert np.abs(written.array.astype(np.int32) - source.array).max() == \
        result["max_abs_error"]
    for k, file in enumerate(_files(out)[::6]):
        ours = codec.decode(_frames(file)[0])
        ds = pydicom.dcmread(file)
        np.testing.assert_array_equal(ds.pixel_array, ours)
        if _HAS["gdcmconv"]:
            raw = tmp_path / f"raw{k}.dcm"
            subprocess.run(["gdcmconv", "--raw", str(file), str(raw)], check=True)
            gdcm_pixels = pydicom.dcmread(raw)
            assert gdcm_pixels.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            np.testing.assert_array_equal(gdcm_pixels.pixel_array, ours)
    gdcm = pytest.importorskip("gdcm", reason="python-gdcm not installed")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(_files(out)[0]))
    assert reader.Read()
    buffer = reader.GetImage().GetBuffer()
    gdcm_array = np.frombuffer(buffer.encode("utf-8", errors="surrogateescape"),
                               dtype=np.int16).reshape(512, 512)
    np.testing.assert_array_equal(gdcm_array, codec.decode(_frames(_files(out)[0])[0]))


def _dciodvfy_errors(files: list[Path]) -> list[str]:
    errors = []
    for file in files:
        run = subprocess.run(["dciodvfy", str(file)], capture_output=True, text=True)
        errors += [f"{file.name}: {line}" for line in (run.stdout + run.stderr).splitlines()
                   if line.startswith("Error")]
    return errors


@pytest.mark.slow
@pytest.mark.skipif(not _HAS["dciodvfy"], reason="dciodvfy (Debian dicom3tools) not installed")
def test_written_files_pass_dciodvfy(real_x20, nifti_lossless, tmp_path):
    out, _ = real_x20
    assert _dciodvfy_errors(_files(out)) == []
    assert _dciodvfy_errors(_files(nifti_lossless)) == []


def _dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    out.mkdir()
    subprocess.run(["dcm2niix", "-z", "n", "-o", str(out), "-f", "v", str(folder)],
                   check=True, capture_output=True)
    return nib.load(out / "v.nii")


@pytest.mark.slow
@pytest.mark.skipif(not _HAS["dcm2niix"], reason="dcm2niix (Debian) not installed")
def test_dcm2niix_gives_the_source_geometry(real_x20, ct_c_dicom, ct_b_crop_file,
                                            nifti_lossless, tmp_path):
    out, result = real_x20
    written = nib.as_closest_canonical(_dcm2niix(out, tmp_path / "written"))
    original = nib.as_closest_canonical(_dcm2niix(ct_c_dicom, tmp_path / "original"))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-4)
    # The values too, in one voxel order: a stack read reversed keeps the affine.
    error = np.abs(written.get_fdata() - original.get_fdata()).max()
    assert error == result["max_abs_error"]
    from_nifti = nib.as_closest_canonical(_dcm2niix(nifti_lossless, tmp_path / "crop"))
    source = nib.as_closest_canonical(nib.load(ct_b_crop_file))
    np.testing.assert_allclose(from_nifti.affine, source.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(from_nifti.dataobj), np.asarray(source.dataobj))


def test_lossy_history_is_appended_and_the_source_referenced(nifti_lossless, tmp_path):
    first, second = tmp_path / "x8", tmp_path / "x8_x2"
    compress_to_dicom(nifti_lossless, first, Target("ratio", 8.0), workers=1)
    compress_to_dicom(first, second, Target("ratio", 10.0), workers=1)
    before = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in _files(first)}
    for file in _files(second):
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        assert list(ds.LossyImageCompressionMethod) == ["ISO_15444_1", "ISO_15444_1"]
        ratios = [float(v) for v in ds.LossyImageCompressionRatio]
        assert ratios[0] == pytest.approx(8.0, rel=0.011)
        assert ratios[1] == pytest.approx(10.0, rel=0.011)
        reference = ds.SourceImageSequence[0]
        parent = before[reference.ReferencedSOPInstanceUID]
        assert parent.ImagePositionPatient == ds.ImagePositionPatient
        assert "PurposeOfReferenceCodeSequence" not in reference  # parent was already lossy
        assert ds.StudyInstanceUID == parent.StudyInstanceUID
        assert ds.SeriesInstanceUID != parent.SeriesInstanceUID
    lossless_parent = pydicom.dcmread(_files(nifti_lossless)[0])
    child = pydicom.dcmread(_files(first)[0])
    assert child.SourceImageSequence[0].ReferencedSOPInstanceUID == \
        lossless_parent.SOPInstanceUID
    assert child.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121320"


def test_store_decompressed_to_dicom_keeps_values_and_the_lossy_flag(cli, ct_b_crop_file,
                                                                     tmp_path):
    store = tmp_path / "s.zarr"
    assert cli("compress", ct_b_crop_file, store, "--ratio", "10", "--workers", "1",
               "--quiet")[0] == 0
    code, _, err = cli("decompress", store, tmp_path / "series", "--format", "dicom")
    assert code == 0, err
    decoded, back = read_store(store), read_volume(tmp_path / "series")
    np.testing.assert_array_equal(_canonical(back)[0], _canonical(decoded)[0])
    np.testing.assert_allclose(_canonical(back)[1], _canonical(decoded)[1], atol=1e-4)
    ds = pydicom.dcmread(_files(tmp_path / "series")[0])
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.LossyImageCompression == "01"
    assert float(ds.LossyImageCompressionRatio) == pytest.approx(10.0, rel=0.01)


def test_htj2k_frames_are_encapsulated_as_1_2_840_10008_1_2_4_203(ct_b_crop, tmp_path):
    volume = frame_order(ct_b_crop)
    planes = np.moveaxis(np.asarray(volume.array), volume.axial_axis, 0).astype(np.int16)
    frames = [imagecodecs.htj2k_encode(np.ascontiguousarray(p), level=None, reversible=True)
              for p in planes]
    encoding = PixelEncoding("1.2.840.10008.1.2.4.203", frames, signed=True, lossy=False)
    write_series(volume, encoding, tmp_path / "ht")
    back = read_volume(tmp_path / "ht")  # pydicom through pylibjpeg-openjpeg's HTJ2K decoder
    np.testing.assert_array_equal(_canonical(back)[0], _canonical(ct_b_crop)[0])
    if _HAS["dciodvfy"]:
        # Debian bookworm's dciodvfy (2022) predates HTJ2K and reads .4.203 as native pixel
        # data; it validates the same objects relabelled with the JPEG 2000 syntax, which
        # encapsulates frames identically.
        relabelled = []
        for file in _files(tmp_path / "ht")[:2]:
            ds = pydicom.dcmread(file)
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
            relabelled.append(tmp_path / file.name)
            ds.save_as(relabelled[-1])
        assert _dciodvfy_errors(relabelled) == []


@pytest.mark.skipif("htj2k" not in codec_names(), reason="no htj2k codec registered yet")
def test_htj2k_codec_writes_the_htj2k_transfer_syntax(ct_b_crop_file, tmp_path):
    result = compress_to_dicom(ct_b_crop_file, tmp_path / "ht", Target("ratio", 10.0),
                               codec_name="htj2k", workers=1)
    ds = pydicom.dcmread(_files(tmp_path / "ht")[0])
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.203"
    assert ds.LossyImageCompressionMethod == "ISO_15444_15"
    assert result["ratio"] == pytest.approx(10.0, rel=0.01)


def test_a_codec_without_a_dicom_transfer_syntax_is_refused(ct_b_crop_file, tmp_path):
    with pytest.raises(MedlossyError, match="no DICOM transfer syntax"):
        compress_to_dicom(ct_b_crop_file, tmp_path / "x", Target("ratio", 10.0),
                          codec_name="sz3", workers=1)


def test_a_ratio_out_of_reach_writes_no_series_and_suggests_no_store_codec(cli, tmp_path,
                                                                           ct_b_image):
    small = ct_b_image.slicer[60:124, 40:104, 90:98]  # 64 x 64 x 8
    source = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(small.dataobj), small.affine, small.header), source)
    code, _, err = cli("compress", source, tmp_path / "series", "--ratio", "3000",
                       "--format", "dicom", "--quiet")
    assert code == 2 and err.strip().count("\n") == 0
    assert f"{source}: codec 'jpeg2k' cannot reach x3000: its coarsest setting gives x" in err
    assert "use a lower ratio" in err and "sperr" not in err  # no DICOM syntax for SPERR
    assert not (tmp_path / "series").exists()
