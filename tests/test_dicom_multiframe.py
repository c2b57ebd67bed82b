"""DICOM out as one multi-frame object: Enhanced CT / MR (--multiframe) and, for volumes that
are neither CT nor MR, Multi-frame Grayscale Word Secondary Capture; MR Image Storage for MR.

Checked by independent tools where installed (CI installs them, see .ci/run): dciodvfy
validates, GDCM (gdcmconv --raw) and pydicom decode, dcm2niix gives the geometry. Debian's
dcm2niix (v1.0.20220720) does not decode JPEG 2000 stored as several fragments ("decompress
with gdcmconv"), so multi-frame objects go through gdcmconv --raw first, as it advises; the
geometry it reports is still read from medlossy's functional groups.
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
from pydicom.encaps import encapsulate, generate_frames

from medlossy.codecs import get_codec
from medlossy.compression import Target
from medlossy.dicom_export import compress_to_dicom, frame_order
from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.io.dicom_multiframe import patient_orientation, write_multiframe
from medlossy.io.dicom_writer import PixelEncoding

_HAS = {tool: shutil.which(tool) is not None for tool in ("dciodvfy", "dcm2niix", "gdcmconv")}
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _canonical(volume) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume.array), volume.affine))
    return np.asarray(image.dataobj), image.affine


def _dciodvfy_errors(files: list[Path]) -> list[str]:
    errors = []
    for file in files:
        run = subprocess.run(["dciodvfy", str(file)], capture_output=True, text=True)
        errors += [f"{file.name}: {line}" for line in (run.stdout + run.stderr).splitlines()
                   if line.startswith("Error")]
    return errors


def _raw_copy(file: Path, folder: Path) -> Path:
    """gdcmconv --raw: GDCM's own decoder writes the frames uncompressed."""
    folder.mkdir()
    subprocess.run(["gdcmconv", "--raw", str(file), str(folder / file.name)], check=True)
    return folder / file.name


def _dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    out.mkdir()
    subprocess.run(["dcm2niix", "-z", "n", "-o", str(out), "-f", "v", str(folder)],
                   check=True, capture_output=True)
    return nib.load(out / "v.nii")


@pytest.fixture(scope="module")
def real_multiframe(ct_c_dicom, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("multiframe") / "ct_x20"
    result = compress_to_dicom(ct_c_dicom, out, Target("ratio", 20.0), workers=2,
                               multiframe=True)
    return out, result


@pytest.mark.slow
def test_real_series_as_one_enhanced_ct_object(ct_c_dicom, real_multiframe):
    out, result = real_multiframe
    files = _files(out)
    assert len(files) == 1
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == ENHANCED_CT and ds.file_meta.TransferSyntaxUID == \
        "1.2.840.10008.1.2.4.91"
    assert int(ds.NumberOfFrames) == 20 and ds.Rows == 512
    frames = list(generate_frames(ds.PixelData, number_of_frames=20))
    stored = sum(len(f) + len(f) % 2 for f in frames)
    assert 2 * 512 * 512 * 20 / stored == pytest.approx(20.0, rel=0.01)
    assert float(ds.LossyImageCompressionRatio) == pytest.approx(result["ratio"], rel=1e-3)
    assert ds.LossyImageCompression == "01" and ds.ImageType[0] == "DERIVED"
    sources = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
               for f in ct_c_dicom.iterdir()}
    referenced = {group.DerivationImageSequence[0].SourceImageSequence[0]
                  .ReferencedSOPInstanceUID for group in ds.PerFrameFunctionalGroupsSequence}
    assert referenced == sources
    evidence = ds.SourceImageEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert {item.ReferencedSOPInstanceUID for item in evidence.ReferencedSOPSequence} == sources
    source, written = read_volume(ct_c_dicom), read_volume(out)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
    assert np.abs(written.array.astype(np.int32) - source.array).max() == \
        result["max_abs_error"]


@pytest.mark.slow
def test_enhanced_ct_pixels_agree_across_decoders(real_multiframe, tmp_path):
    out, _ = real_multiframe
    file = _files(out)[0]
    ds = pydicom.dcmread(file)
    codec = get_codec("jpeg2k")
    ours = np.stack([codec.decode(f) for f in generate_frames(ds.PixelData,
                                                                number_of_frames=20)])
    np.testing.assert_array_equal(ds.pixel_array, ours)
    if _HAS["gdcmconv"]:
        raw = pydicom.dcmread(_raw_copy(file, tmp_path / "raw"))
        assert raw.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        np.testing.assert_array_equal(raw.pixel_array, ours)


@pytest.mark.slow
@pytest.mark.skipif(not _HAS["dciodvfy"], reason="dciodvfy (Debian dicom3tools) not installed")
def test_enhanced_ct_passes_dciodvfy(real_multiframe):
    assert _dciodvfy_errors(_files(real_multiframe[0])) == []


@pytest.mark.slow
@pytest.mark.skipif(not (_HAS["dcm2niix"] and _HAS["gdcmconv"]),
                    reason="dcm2niix and gdcmconv (Debian) not installed")
def test_dcm2niix_gives_the_enhanced_ct_the_source_geometry(real_multiframe, ct_c_dicom,
                                                            tmp_path):
    out, result = real_multiframe
    raw = _raw_copy(_files(out)[0], tmp_path / "raw")
    written = nib.as_closest_canonical(_dcm2niix(raw.parent, tmp_path / "written"))
    original = nib.as_closest_canonical(_dcm2niix(ct_c_dicom, tmp_path / "original"))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-4)
    # The values too, in one voxel order: frames read reversed keep the affine.
    error = np.abs(written.get_fdata() - original.get_fdata()).max()
    assert error == result["max_abs_error"]


def test_nifti_ct_multiframe_round_trip_is_exact_when_lossless(ct_b_crop_file, tmp_path):
    out = tmp_path / "crop"
    result = compress_to_dicom(ct_b_crop_file, out, Target("lossless"), workers=1,
                               multiframe=True)
    assert result["sop_class"] == "Enhanced CT Image Storage"
    ds = pydicom.dcmread(_files(out)[0])
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert ds.LossyImageCompression == "00"
    assert "DerivationImageSequence" not in ds.PerFrameFunctionalGroupsSequence[0]
    back, source = _canonical(read_volume(out)), _canonical(read_volume(ct_b_crop_file))
    np.testing.assert_array_equal(back[0], source[0])
    np.testing.assert_allclose(back[1], source[1], atol=1e-4)
    if _HAS["dciodvfy"]:
        assert _dciodvfy_errors(_files(out)) == []
    if _HAS["dcm2niix"] and _HAS["gdcmconv"]:
        raw = _raw_copy(_files(out)[0], tmp_path / "raw")
        converted = nib.as_closest_canonical(_dcm2niix(raw.parent, tmp_path / "nii"))
        np.testing.assert_allclose(converted.affine, source[1], atol=1e-4)
        np.testing.assert_array_equal(np.asarray(converted.dataobj), source[0])


@pytest.fixture(scope="module")
def mr_outputs(mr_path, tmp_path_factory) -> dict[str, Path]:
    """The MR NIfTI (no DICOM source) written as MR (--modality MR), as Enhanced MR, and with
    the modality unknown; lossless, so values can be compared exactly."""
    root = tmp_path_factory.mktemp("mr")
    outputs = {"mr": root / "mr", "enhanced": root / "enhanced", "unknown": root / "unknown"}
    compress_to_dicom(mr_path, outputs["mr"], Target("lossless"), modality="MR", workers=1)
    compress_to_dicom(mr_path, outputs["enhanced"], Target("lossless"), modality="MR",
                      workers=1, multiframe=True)
    compress_to_dicom(mr_path, outputs["unknown"], Target("lossless"), workers=1)
    return outputs


def test_mr_nifti_is_never_written_as_ct(mr_path, mr_outputs):
    classes = {name: {str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID)
                      for f in _files(folder)} for name, folder in mr_outputs.items()}
    assert classes == {"mr": {MR_IMAGE}, "enhanced": {ENHANCED_MR}, "unknown": {WORD_SC}}
    assert len(_files(mr_outputs["mr"])) == 20 and len(_files(mr_outputs["unknown"])) == 1
    sc = pydicom.dcmread(_files(mr_outputs["unknown"])[0])
    assert sc.Modality == "OT" and sc.PixelRepresentation == 0  # SC word: unsigned only
    source = _canonical(read_volume(mr_path))
    for name, folder in mr_outputs.items():
        back = _canonical(read_volume(folder))
        np.testing.assert_array_equal(back[0], source[0], err_msg=name)
        np.testing.assert_allclose(back[1], source[1], atol=1e-4, err_msg=name)


@pytest.mark.skipif(not _HAS["dciodvfy"], reason="dciodvfy (Debian dicom3tools) not installed")
def test_mr_and_secondary_capture_objects_pass_dciodvfy(mr_outputs):
    for folder in mr_outputs.values():
        assert _dciodvfy_errors(_files(folder)) == []


@pytest.mark.skipif(not (_HAS["dcm2niix"] and _HAS["gdcmconv"]),
                    reason="dcm2niix and gdcmconv (Debian) not installed")
def test_dcm2niix_reads_mr_and_secondary_capture_geometry(mr_path, mr_outputs, tmp_path):
    source = nib.as_closest_canonical(nib.load(mr_path))
    for name in ("enhanced", "unknown"):
        raw = _raw_copy(_files(mr_outputs[name])[0], tmp_path / f"raw_{name}")
        converted = nib.as_closest_canonical(_dcm2niix(raw.parent, tmp_path / name))
        np.testing.assert_allclose(converted.affine, source.affine, atol=1e-4, err_msg=name)
        np.testing.assert_array_equal(np.asarray(converted.dataobj),
                                      np.asarray(source.dataobj))


def test_store_of_unknown_modality_decompresses_to_secondary_capture(cli, mr_path, tmp_path):
    store = tmp_path / "mr.zarr"
    assert cli("compress", mr_path, store, "--ratio", "8", "--workers", "1", "--quiet")[0] == 0
    code, out, err = cli("decompress", store, tmp_path / "series", "--format", "dicom")
    assert code == 0, err
    assert "Secondary Capture" in out + err
    ds = pydicom.dcmread(_files(tmp_path / "series")[0])
    assert ds.SOPClassUID == WORD_SC and ds.LossyImageCompression == "01"
    decoded = read_volume(tmp_path / "series")
    from medlossy.decompression import read_store

    np.testing.assert_array_equal(_canonical(decoded)[0], _canonical(read_store(store))[0])
    code, _, err = cli("decompress", store, tmp_path / "mf", "--format", "dicom",
                       "--multiframe")
    assert code == 0, err


def test_multiframe_needs_the_dicom_format(cli, ct_b_crop_file, tmp_path):
    code, _, err = cli("compress", ct_b_crop_file, tmp_path / "s.zarr", "--ratio", "10",
                       "--multiframe")
    assert code == 2 and "--multiframe applies only to --format dicom" in err
    assert not (tmp_path / "s.zarr").exists()


def test_htj2k_frames_in_an_enhanced_object(ct_b_crop, tmp_path):
    volume = frame_order(ct_b_crop)
    volume.modality = "CT"
    planes = np.moveaxis(np.asarray(volume.array), volume.axial_axis, 0).astype(np.int16)
    frames = [imagecodecs.htj2k_encode(np.ascontiguousarray(p), level=None, reversible=True)
              for p in planes]
    encoding = PixelEncoding("1.2.840.10008.1.2.4.201", frames, signed=True, lossy=False)
    write_multiframe(volume, encoding, tmp_path / "ht")
    ds = pydicom.dcmread(_files(tmp_path / "ht")[0])
    assert ds.SOPClassUID == ENHANCED_CT and int(ds.NumberOfFrames) == len(frames)
    back = read_volume(tmp_path / "ht")  # pydicom through pylibjpeg-openjpeg's HTJ2K decoder
    np.testing.assert_array_equal(_canonical(back)[0], _canonical(ct_b_crop)[0])


def test_patient_orientation_names_the_body_directions():
    assert patient_orientation([1, 0, 0, 0, 1, 0]) == ["L", "P"]
    assert patient_orientation([-1, 0, 0, 0, 0, -1]) == ["R", "F"]
    assert patient_orientation([0.8, 0.6, 0, 0, 0, 1]) == ["LP", "H"]


def test_a_corrupted_frame_of_a_multiframe_object_names_file_and_frame(ct_b_crop_file,
                                                                        tmp_path):
    out = tmp_path / "mf"
    compress_to_dicom(ct_b_crop_file, out, Target("ratio", 6.0), workers=1, multiframe=True)
    file = _files(out)[0]
    ds = pydicom.dcmread(file)
    frames = [bytearray(f) for f in generate_frames(ds.PixelData,
                                                    number_of_frames=int(ds.NumberOfFrames))]
    frames[6][100:len(frames[6]) - 20] = bytes(len(frames[6]) - 120)  # packets zeroed
    ds.PixelData = encapsulate([bytes(f) for f in frames])
    ds.save_as(file)
    with pytest.raises(MedlossyError, match="pixel data of frame 7 of 24") as caught:
        read_volume(out)
    assert str(file) in str(caught.value) and "\n" not in str(caught.value)


def test_lossy_htj2k_decodes_alike_in_gdcm_and_pydicom_and_within_one_in_openjph(
        ct_b_crop_file, tmp_path):
    """GDCM and pydicom decode lossy HTJ2K with OpenJPEG, bit for bit alike; medlossy's codec
    decodes with OpenJPH, whose irreversible 9/7 inverse rounds differently: within one code
    (ISO 15444 sets no bit-exactness for irreversible decoding)."""
    gdcm = pytest.importorskip("gdcm", reason="python-gdcm not installed")
    compress_to_dicom(ct_b_crop_file, tmp_path / "ht", Target("ratio", 10.0),
                      codec_name="htj2k", workers=1, multiframe=True)
    file = _files(tmp_path / "ht")[0]
    ds = pydicom.dcmread(file)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(file))
    assert reader.Read()
    buffer = reader.GetImage().GetBuffer().encode("utf-8", errors="surrogateescape")
    np.testing.assert_array_equal(
        np.frombuffer(buffer, dtype=np.int16).reshape(ds.pixel_array.shape), ds.pixel_array)
    ours = np.stack([get_codec("htj2k").decode(f) for f in generate_frames(
        ds.PixelData, number_of_frames=int(ds.NumberOfFrames))])
    assert np.abs(ours.astype(np.int32) - ds.pixel_array).max() <= 1


def test_cli_names_the_secondary_capture_choice_and_mr_option(cli, mr_path, tmp_path):
    code, out, err = cli("compress", mr_path, tmp_path / "sc", "--ratio", "10", "--format",
                         "dicom", "--workers", "1")
    assert code == 0, err
    assert "pass --modality MR" in out + err
    code, out, err = cli("compress", mr_path, tmp_path / "mr", "--ratio", "10", "--format",
                         "dicom", "--modality", "MR", "--workers", "1")
    assert code == 0 and "Secondary Capture" not in out + err
    assert pydicom.dcmread(_files(tmp_path / "mr")[0]).SOPClassUID == MR_IMAGE


def test_ct_store_decompresses_to_one_enhanced_ct_object(cli, ct_b_crop_file, tmp_path):
    from medlossy.decompression import read_store

    store = tmp_path / "ct.zarr"
    assert cli("compress", ct_b_crop_file, store, "--ratio", "10", "--workers", "1",
               "--quiet")[0] == 0
    code, _, err = cli("decompress", store, tmp_path / "mf", "--format", "dicom",
                       "--multiframe")
    assert code == 0, err
    files = _files(tmp_path / "mf")
    ds = pydicom.dcmread(files[0])
    assert len(files) == 1 and ds.SOPClassUID == ENHANCED_CT
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.LossyImageCompression == "01"
    assert float(ds.LossyImageCompressionRatio) == pytest.approx(10.0, rel=0.01)
    decoded = read_store(store)
    back = read_volume(tmp_path / "mf")
    np.testing.assert_array_equal(_canonical(back)[0], _canonical(decoded)[0])
    np.testing.assert_allclose(_canonical(back)[1], _canonical(decoded)[1], atol=1e-4)
    if _HAS["dciodvfy"]:
        assert _dciodvfy_errors(files) == []
