"""Labels from DICOM SEG (highdicom) and RTSTRUCT (rasterised) on the image series' grid.

The image series is CT B's crop written as DICOM by medlossy; the SEG is made with highdicom
from a known mask, the RTSTRUCT holds square contours whose inside is known voxel by voxel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medlossy.compression import Target
from medlossy.dicom_export import compress_to_dicom
from medlossy.errors import MedlossyError
from medlossy.io.dicom_labels import read_rtstruct_labels, read_seg_labels
from medlossy.io.dicom_series import read_series_with_sources

highdicom = pytest.importorskip("highdicom")

LABELS = {"liver": 1, "Left Kidney": 2}


@pytest.fixture(scope="module")
def series(ct_b_crop_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("labels") / "series"
    compress_to_dicom(ct_b_crop_file, out, Target("lossless"), workers=1)
    return out


def _seg(sources, frames_mask: np.ndarray, path: Path, label: str = "Liver") -> Path:
    description = highdicom.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=highdicom.sr.CodedConcept("91723000", "SCT",
                                                              "Anatomical Structure"),
        segmented_property_type=highdicom.sr.CodedConcept("10200004", "SCT", "Liver"),
        algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = highdicom.seg.Segmentation(
        source_images=sources, pixel_array=frames_mask.astype(np.uint8),
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=generate_uid(),
        series_number=50, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="0",
        device_serial_number="0")
    seg.save_as(path)
    return path


def test_seg_labels_land_on_the_image_grid(series, tmp_path):
    volume, sources = read_series_with_sources(series)
    rows, columns = volume.shape[1], volume.shape[0]
    frames_mask = np.zeros((len(sources), rows, columns), dtype=bool)
    frames_mask[5:12, 10:30, 20:50] = True  # slices 5-11, rows 10-29, columns 20-49
    labels = read_seg_labels(_seg(sources, frames_mask, tmp_path / "seg.dcm"), volume,
                             sources, LABELS, series)
    assert labels.shape == volume.shape
    expected = np.zeros(volume.shape, dtype=np.uint8)
    expected[20:50, 10:30, 5:12] = 1  # array order (column, row, slice)
    np.testing.assert_array_equal(labels, expected)


def test_a_seg_of_another_series_is_refused(series, tmp_path):
    volume, sources = read_series_with_sources(series)
    others = []
    for ds in sources:
        other = pydicom.dcmread(ds.filename)
        other.SOPInstanceUID = generate_uid()
        others.append(other)
    mask = np.zeros((len(sources), volume.shape[1], volume.shape[0]), dtype=bool)
    mask[3, 5:9, 5:9] = True
    seg = _seg(others, mask, tmp_path / "other.dcm")
    with pytest.raises(MedlossyError, match="does not reference the image series"):
        read_seg_labels(seg, volume, sources, LABELS, series)


def _rtstruct(volume, series_uid: str, squares: dict[str, list], path: Path) -> Path:
    """Square contours given in voxel (i, j) corners per slice k, written in LPS mm."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    ds = Dataset()
    ds.Modality, ds.SOPClassUID = "RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = generate_uid()
    study = Dataset()
    reference = Dataset()
    reference.SeriesInstanceUID = series_uid
    study.RTReferencedSeriesSequence = Sequence([reference])
    frame = Dataset()
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for number, (name, contours) in enumerate(squares.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = Sequence()
        for k, (i0, j0, i1, j1) in contours:
            corners = [(i0, j0), (i1, j0), (i1, j1), (i0, j1)]
            points = [lps @ [i, j, k, 1] for i, j in corners]
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = 4
            contour.ContourData = [f"{v:.6f}" for p in points for v in p[:3]]
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, \
        ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rtstruct_contours_are_filled_by_pixel_centres_with_holes(series, tmp_path):
    volume, sources = read_series_with_sources(series)
    uid = str(sources[0].SeriesInstanceUID)
    rt = _rtstruct(volume, uid, {
        "LIVER": [(4, (10.3, 5.3, 20.7, 15.7)), (4, (12.6, 7.6, 14.4, 9.4))],  # + a hole
        "left kidney": [(9, (30.3, 30.3, 40.7, 35.7))],
    }, tmp_path / "rt.dcm")
    labels = read_rtstruct_labels(rt, volume, uid, LABELS)
    expected = np.zeros(volume.shape, dtype=np.uint8)
    expected[11:21, 6:16, 4] = 1
    expected[13:15, 8:10, 4] = 0  # the inner contour is a hole
    expected[31:41, 31:36, 9] = 2
    np.testing.assert_array_equal(labels, expected)


def test_rtstruct_contour_outside_the_image_is_refused(series, tmp_path):
    volume, sources = read_series_with_sources(series)
    uid = str(sources[0].SeriesInstanceUID)
    rt = _rtstruct(volume, uid, {"liver": [(4, (60.0, 5.0, 120.0, 15.0))]}, tmp_path / "rt.dcm")
    with pytest.raises(MedlossyError, match="lies outside the image grid"):
        read_rtstruct_labels(rt, volume, uid, LABELS)


def test_rtstruct_of_another_series_or_unknown_roi_is_refused(series, tmp_path):
    volume, sources = read_series_with_sources(series)
    uid = str(sources[0].SeriesInstanceUID)
    rt = _rtstruct(volume, "1.2.3.999", {"liver": [(4, (1, 1, 5, 5))]}, tmp_path / "a.dcm")
    with pytest.raises(MedlossyError, match="not the image series"):
        read_rtstruct_labels(rt, volume, uid, LABELS)
    rt = _rtstruct(volume, uid, {"spleen": [(4, (1, 1, 5, 5))]}, tmp_path / "b.dcm")
    with pytest.raises(MedlossyError, match="'spleen' is not in the label map"):
        read_rtstruct_labels(rt, volume, uid, LABELS)


@pytest.mark.slow
def test_dataset_compress_of_dicom_studies_with_seg_labels(cli, series, tmp_path):
    import shutil

    import nibabel as nib

    root = tmp_path / "dicom_root"
    volume, _ = read_series_with_sources(series)
    expected = {}
    for case, (start, stop) in {"patient A": (2, 9), "patient B": (10, 20)}.items():
        shutil.copytree(series, root / case)
        _, case_sources = read_series_with_sources(root / case)
        mask = np.zeros((len(case_sources), volume.shape[1], volume.shape[0]), dtype=bool)
        mask[start:stop, 20:40, 30:60] = True
        _seg(case_sources, mask, root / case / "seg.dcm")
        expected[case.replace(" ", "-")] = mask
    code, _, err = cli("dataset", "compress", root, "--ratios", "1,10", "--out",
                       tmp_path / "sweep", "--labels", "seg", "--workers", "1", "--quiet")
    assert code == 0, err
    prepared = tmp_path / "sweep" / "prepared" / "dicom_root_dicom"
    metadata = json.loads((prepared / "dataset.json").read_text())
    assert metadata["labels"] == {"background": 0, "Liver": 1}
    for case, mask in expected.items():
        label = np.asarray(nib.load(prepared / "labelsTr" / f"{case}.nii.gz").dataobj)
        np.testing.assert_array_equal(label, np.moveaxis(mask, 0, -1).transpose(1, 0, 2))
    manifest = (tmp_path / "sweep").rglob("*.zarr")
    assert len(list(manifest)) == 4  # two cases at two ratios


def test_a_dicom_root_without_labels_option_is_a_one_line_error(cli, series, tmp_path):
    import shutil

    shutil.copytree(series, tmp_path / "root" / "case1")
    code, _, err = cli("dataset", "compress", tmp_path / "root", "--ratios", "1", "--out",
                       tmp_path / "sweep", "--quiet")
    assert code == 2 and "--labels seg" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_a_bad_label_object_stops_dataset_compress_naming_it(cli, series, tmp_path, kind):
    """A SEG that references another series, or an RTSTRUCT contour outside the image, in
    the second case: exit 2, one line naming the object's file, nothing half-written."""
    import shutil

    root = tmp_path / "root"
    volume, _ = read_series_with_sources(series)
    for case in ("case1", "case2"):
        shutil.copytree(series, root / case)
    for case in ("case1", "case2"):
        _, sources = read_series_with_sources(root / case)
        uid = str(sources[0].SeriesInstanceUID)
        if kind == "seg":
            if case == "case2":  # the same slices under other SOP Instance UIDs
                sources = [pydicom.dcmread(ds.filename) for ds in sources]
                for ds in sources:
                    ds.SOPInstanceUID = generate_uid()
            mask = np.zeros((len(sources), volume.shape[1], volume.shape[0]), dtype=bool)
            mask[3, 5:9, 5:9] = True
            bad = _seg(sources, mask, root / case / "labels.dcm")
        else:
            square = (60.0, 5.0, 120.0, 15.0) if case == "case2" else (1, 1, 5, 5)
            bad = _rtstruct(volume, uid, {"liver": [(4, square)]}, root / case / "labels.dcm")
    code, _, err = cli("dataset", "compress", root, "--ratios", "1,10", "--out",
                       tmp_path / "sweep", "--labels", kind, "--workers", "1", "--quiet")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(bad) in err
    assert ("does not reference the image series" if kind == "seg"
            else "lies outside the image grid") in err
    assert not (tmp_path / "sweep" / "prepared" / "root_dicom").exists()
    assert not list((tmp_path / "sweep").rglob("*.zarr"))
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]


def _study_with_seg(series: Path, case: Path) -> None:
    import shutil

    shutil.copytree(series, case)
    volume, sources = read_series_with_sources(case)
    mask = np.zeros((len(sources), volume.shape[1], volume.shape[0]), dtype=bool)
    mask[1:3, 10:20, 10:20] = True
    _seg(sources, mask, case / "seg.dcm")


def test_dicom_studies_name_their_channel_by_their_modality(mr_path, series, tmp_path):
    # A root of MR studies was written as channel_names {"0": "CT"} (the --modality default),
    # so nnU-Net planned CT normalisation for MR.
    from medlossy.datasets.dicom_root import prepare_dicom_dataset

    mr_series = tmp_path / "mr_series"
    compress_to_dicom(mr_path, mr_series, Target("lossless"), modality="MR", workers=1)
    _study_with_seg(mr_series, tmp_path / "mr_root" / "mr_one")
    dataset = prepare_dicom_dataset(tmp_path / "mr_root", tmp_path / "prepared", labels="seg")
    assert dataset.metadata["channel_names"] == {"0": "MR"}
    assert dataset.modality_how == "recorded in the input, all 1 case(s)"
    _study_with_seg(mr_series, tmp_path / "mixed" / "mr_one")
    _study_with_seg(series, tmp_path / "mixed" / "ct_two")
    with pytest.raises(MedlossyError, match=r"disagree.*--modality CT or MR"):
        prepare_dicom_dataset(tmp_path / "mixed", tmp_path / "prepared", labels="seg")


@pytest.mark.parametrize(("data", "why"), [([], "0 values"), (["1.0", "2.0"], "2 values"),
                                           (["1.0", "NOTANUM", "3.0"], "could not convert")])
def test_rtstruct_contour_without_usable_points_is_refused_in_one_line(series, tmp_path, data,
                                                                      why):
    volume, sources = read_series_with_sources(series)
    uid = str(sources[0].SeriesInstanceUID)
    rt = _rtstruct(volume, uid, {"liver": [(4, (1, 1, 5, 5))]}, tmp_path / "rt.dcm")
    ds = pydicom.dcmread(rt)
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = \
        [value.replace("NOTANUM", "98765.4") for value in data]
    ds.save_as(rt)
    rt.write_bytes(rt.read_bytes().replace(b"98765.4", b"NOTANUM"))  # pydicom would refuse it
    with pytest.raises(MedlossyError, match=f"a contour of ROI 'liver' has unusable "
                                            f"ContourData \\({why}"):
        read_rtstruct_labels(rt, volume, uid, LABELS)


def _rtstruct_root(series, root: Path, cases: list[str]) -> None:
    import shutil

    volume, _ = read_series_with_sources(series)
    for case in cases:
        shutil.copytree(series, root / case)
        _, sources = read_series_with_sources(root / case)
        _rtstruct(volume, str(sources[0].SeriesInstanceUID), {"liver": [(4, (1, 1, 5, 5))]},
                  root / case / "rt.dcm")


def test_dicom_root_case_ids_keep_underscores_and_renames_are_said(cli, series, tmp_path):
    root = tmp_path / "root"
    _rtstruct_root(series, root, ["pat_1", "pat 2"])
    code, _, err = cli("dataset", "compress", root, "--ratios", "1", "--out",
                       tmp_path / "sweep", "--labels", "rtstruct", "--workers", "1")
    assert code == 0, err
    assert "note: study folder 'pat 2' is case 'pat-2'" in err
    assert "pat_1'" not in err
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    folders = [tmp_path / "sweep" / "prepared" / "root_dicom",
               *(tmp_path / "sweep" / "nnunet" / name for name in sweep["datasets"].values())]
    for folder in folders:
        assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == \
            ["pat-2_0000.nii.gz", "pat_1_0000.nii.gz"]
        metadata = json.loads((folder / "dataset.json").read_text())
        assert metadata["case_folders"] == {"pat-2": "pat 2"}


def test_dicom_root_folders_that_would_share_a_case_id_are_refused(cli, series, tmp_path):
    root = tmp_path / "root"
    _rtstruct_root(series, root, ["pat 1", "pat-1"])
    code, _, err = cli("dataset", "compress", root, "--ratios", "1", "--out",
                       tmp_path / "sweep", "--labels", "rtstruct", "--quiet")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "becomes case 'pat-1'" in err and "rename one" in err
