"""Label volumes from where clinics keep them: DICOM SEG and RTSTRUCT, on an image series' grid.

Data flow: the image series (read with its per-slice headers) gives the grid: voxel -> patient
(LPS) mm, and each slice's SOP Instance UID -> SEG: highdicom reads the segments frame by
source instance (so a SEG that does not reference the series is refused by the same check that
pairs frames with slices) -> RTSTRUCT: every closed planar contour is mapped to voxel indices and
filled with skimage.draw.polygon -> segment / ROI names become label ids through a label map.

Rasteriser: scikit-image's ``skimage.draw.polygon`` (maintained, BSD, already a medlossy
dependency). It fills the pixels whose centres lie inside the polygon, the rule DICOM viewers
and rt-utils (OpenCV ``fillPoly``, which also fills boundary pixels) approximate; rt-utils is
unmaintained since 2023 and pulls OpenCV, and highdicom has no RTSTRUCT reader. Several
contours of one ROI on one slice are combined by parity (XOR), so an inner contour is a hole.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from skimage.draw import polygon

from medlossy.errors import MedlossyError
from medlossy.volume import Volume

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: A contour point may lie this far (in voxels) outside the grid or off its slice's plane.
_VOXEL_TOLERANCE = 0.5


def _name_key(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


def label_id(name: str, label_map: Mapping[str, int], where: Path) -> int:
    """The label id of a segment/ROI name (case and spacing ignored)."""
    keys = {_name_key(k): v for k, v in label_map.items()}
    try:
        return int(keys[_name_key(name)])
    except KeyError:
        raise MedlossyError(where, f"'{name}' is not in the label map (known: "
                                   f"{', '.join(sorted(label_map)) or 'none'})") from None


def _slice_uids(sources: list[pydicom.Dataset] | None, image: Path) -> list[str]:
    uids = [str(ds.get("SOPInstanceUID", "") or "") for ds in sources or []]
    if not uids or not all(uids):
        raise MedlossyError(image, "slices without SOP Instance UIDs cannot be matched with a "
                                   "SEG's frames")
    return uids


def _to_volume_order(planes: np.ndarray) -> np.ndarray:
    """(slices, rows, columns) -> the reader's array order (columns, rows, slices)."""
    return np.ascontiguousarray(np.moveaxis(planes, 0, -1).transpose(1, 0, 2))


def read_seg_labels(seg_path: Path, image: Volume, sources: list[pydicom.Dataset] | None,
                    label_map: Mapping[str, int], image_path: Path) -> np.ndarray:
    """A label volume on ``image``'s grid from a DICOM SEG that references its slices."""
    import highdicom  # imported here: it loads a large code base that only labels need

    try:
        seg = highdicom.seg.segread(seg_path)
    except Exception as error:  # highdicom raises several types for non-SEG input
        raise MedlossyError(seg_path, f"not a readable DICOM SEG ({error})") from None
    uids = _slice_uids(sources, image_path)
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    if not referenced & set(uids):
        raise MedlossyError(seg_path, f"does not reference the image series {image_path} "
                                      "(none of its source images is a slice of it)")
    labels = np.zeros((len(uids), *image.slice_shape()[::-1]), dtype=np.uint8)
    for number in seg.segment_numbers:
        name = seg.get_segment_description(number).segment_label
        value = label_id(name, label_map, seg_path)
        present = [uid for uid in uids if uid in referenced]
        try:
            pixels = seg.get_pixels_by_source_instance(
                present, segment_numbers=[number], combine_segments=True,
                ignore_spatial_locations=True, skip_overlap_checks=True)
        except (ValueError, KeyError, RuntimeError) as error:
            raise MedlossyError(seg_path, f"segment '{name}': {error}") from None
        for index, uid in enumerate(present):
            labels[uids.index(uid)][pixels[index] > 0] = value
    return _to_volume_order(labels)


def _grid(image: Volume) -> np.ndarray:
    """Patient (LPS) mm -> voxel index (i, j, k) of the reader's array order."""
    return np.linalg.inv(_RAS_TO_LPS @ image.affine)


def _contour_points(contour: pydicom.Dataset, name: str, rt_path: Path) -> np.ndarray:
    """A contour's (x, y, z) points in mm; one line for a contour that has none, or values
    that are not triplets of numbers."""
    try:
        points = np.asarray([float(v) for v in contour.get("ContourData") or []], dtype=float)
    except (TypeError, ValueError) as error:  # pydicom converts the strings when read
        raise MedlossyError(rt_path, f"a contour of ROI '{name}' has unusable ContourData "
                                     f"({error})") from None
    if not len(points) or len(points) % 3 or not np.isfinite(points).all():
        raise MedlossyError(rt_path, f"a contour of ROI '{name}' has unusable ContourData "
                                     f"({len(points)} values; it needs x, y, z numbers for "
                                     "each point)")
    return points.reshape(-1, 3)


def read_rtstruct_labels(rt_path: Path, image: Volume, series_uid: str,
                         label_map: Mapping[str, int]) -> np.ndarray:
    """A label volume on ``image``'s grid from an RTSTRUCT's closed planar contours."""
    try:
        rt = pydicom.dcmread(rt_path)
    except Exception as error:  # pydicom raises many types for damaged files
        raise MedlossyError(rt_path, f"not a readable DICOM file ({error})") from None
    if str(rt.get("Modality", "")) != "RTSTRUCT" or "ROIContourSequence" not in rt:
        raise MedlossyError(rt_path, "not an RTSTRUCT with contours")
    referenced = {str(series.SeriesInstanceUID)
                  for frame in rt.get("ReferencedFrameOfReferenceSequence", [])
                  for study in frame.get("RTReferencedStudySequence", [])
                  for series in study.get("RTReferencedSeriesSequence", [])}
    if series_uid and referenced and series_uid not in referenced:
        raise MedlossyError(rt_path, f"references series {', '.join(sorted(referenced))}, "
                                     f"not the image series {series_uid}")
    names = {int(roi.ROINumber): str(roi.ROIName)
             for roi in rt.get("StructureSetROISequence", [])}
    to_voxel = _grid(image)
    shape = image.shape
    labels = np.zeros(shape, dtype=np.uint8)
    for roi in rt.ROIContourSequence:
        name = names.get(int(roi.ReferencedROINumber), f"ROI {roi.ReferencedROINumber}")
        value = label_id(name, label_map, rt_path)
        mask = np.zeros(shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")) not in ("CLOSED_PLANAR", ""):
                continue  # points and open polylines have no inside
            points = _contour_points(contour, name, rt_path)
            voxels = (to_voxel @ np.c_[points, np.ones(len(points))].T)[:3].T
            k = np.round(voxels[:, 2])
            outside = ((voxels < -_VOXEL_TOLERANCE) |
                       (voxels > np.asarray(shape) - 1 + _VOXEL_TOLERANCE)).any(axis=1)
            if outside.any() or np.abs(voxels[:, 2] - k).max() > _VOXEL_TOLERANCE or \
                    len(set(k)) != 1:
                point = points[int(np.argmax(outside))] if outside.any() else points[0]
                raise MedlossyError(rt_path, f"a contour of ROI '{name}' lies outside the "
                                             f"image grid or off its slices (point "
                                             f"{np.round(point, 2).tolist()} mm)")
            inside = np.zeros(shape[:2], dtype=bool)
            rows, columns = polygon(voxels[:, 0], voxels[:, 1], shape=shape[:2])
            inside[rows, columns] = True
            mask[:, :, int(k[0])] ^= inside
        labels[mask] = value
    return labels
