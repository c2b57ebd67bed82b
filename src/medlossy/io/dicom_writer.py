"""Write a volume as a DICOM series whose frames are already encoded (or raw 16-bit codes).

Data flow: a volume in *frame order* (each axial plane is a DICOM frame: rows along the first
in-plane array axis, columns along the second) + one pixel payload per slice + the pixel
description (transfer syntax, lossy flags, rescale) -> one dataset per slice (or one enhanced
multi-frame dataset) -> files written into a temporary folder that is renamed into place.

Headers start from the source slice where the source was DICOM (patient, study, frame of
reference, equipment and acquisition attributes carried over; private tags dropped, since
they may describe the old pixel data), otherwise from a template of shared attributes kept in
the store, otherwise from scratch. pydicom builds and writes the datasets; it has no notion of
a volume, so the geometry per slice is computed here.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, generate_uid

from medlossy.atomic import atomic_output
from medlossy.volume import Volume

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
_STORAGE = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}
#: Elements dropped from a source slice: the pixel description is rewritten, and these would
#: describe the old pixel data (their VR even depends on its signedness).
_STALE = ("PixelData", "SmallestImagePixelValue", "LargestImagePixelValue",
          "PixelPaddingValue", "PixelPaddingRangeLimit", "IconImageSequence",
          "DataSetTrailingPadding", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
          "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "SourceImageSequence",
          "DerivationCodeSequence", "NumberOfFrames")
#: Shared (series-level and above) attributes kept in a store so that decompressing it to
#: DICOM carries the patient and study over.
SHARED_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "PatientWeight", "PatientSize", "StudyInstanceUID",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "Modality", "SeriesDescription", "SeriesNumber", "BodyPartExamined",
    "PatientPosition", "FrameOfReferenceUID", "PositionReferenceIndicator", "Manufacturer",
    "ManufacturerModelName", "InstitutionName", "KVP", "ConvolutionKernel", "RescaleType",
    "WindowCenter", "WindowWidth", "ScanningSequence", "SequenceVariant", "ScanOptions",
    "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength",
    "MagneticFieldStrength", "SliceThickness")


@dataclass(frozen=True)
class PixelEncoding:
    """How the frames are encoded and what the pixel values mean.

    ``frames``: one payload per slice: a JPEG 2000 / HTJ2K codestream for a compressed
    transfer syntax, the raw little-endian 16-bit codes for Explicit VR Little Endian.
    ``lossy``: the pixels went through lossy compression (here or before: a decoded lossy
    store written uncompressed is still lossy). ``ratio`` and ``method``: this compression's
    Lossy Image Compression Ratio and Method, appended to any the source carries.
    value = code * slope + intercept (Rescale Slope/Intercept).
    """

    transfer_syntax: str
    frames: Sequence[bytes]
    signed: bool
    slope: float = 1.0
    intercept: float = 0.0
    lossy: bool = False
    ratio: float | None = None
    method: str | None = None
    derivation: str = ""

    @property
    def encapsulated(self) -> bool:
        return UID(self.transfer_syntax).is_encapsulated


@dataclass(frozen=True)
class SliceGeometry:
    position: list[float]  # ImagePositionPatient (LPS mm)
    orientation: list[float]  # ImageOrientationPatient: row direction, column direction
    pixel_spacing: list[float]  # between rows, between columns
    thickness: float


def slice_geometry(volume: Volume) -> list[SliceGeometry]:
    """Per-slice DICOM geometry of a volume in frame order."""
    axis = volume.axial_axis
    row_axis, column_axis = (a for a in range(3) if a != axis)
    lps = _RAS_TO_LPS @ volume.affine
    spacing = volume.spacing
    # Columns advance along the column axis: that is the DICOM "row direction" (first triplet).
    row_direction = lps[:3, column_axis] / spacing[column_axis]
    column_direction = lps[:3, row_axis] / spacing[row_axis]
    orientation = [ds_number(v) for v in (*row_direction, *column_direction)]
    out = []
    for k in range(volume.shape[axis]):
        index = np.zeros(4)
        index[axis], index[3] = k, 1.0
        position = lps @ index
        out.append(SliceGeometry([ds_number(v) for v in position[:3]], orientation,
                                 [ds_number(spacing[row_axis]),
                                  ds_number(spacing[column_axis])],
                                 float(spacing[axis])))
    return out


def along_normal(geometry: list[SliceGeometry], encoding: PixelEncoding,
                 sources: Sequence[Dataset] | None) -> tuple[list[SliceGeometry], PixelEncoding,
                                                             list[Dataset] | None]:
    """Slices, frames and source slices reordered to advance along the slice normal (row
    direction x column direction): readers that take frame order, or In-Stack Position, as
    the slice axis then get the volume right whatever the handedness of its affine."""
    if len(geometry) < 2:
        return geometry, encoding, None if sources is None else list(sources)
    orientation = np.asarray(geometry[0].orientation, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    step = np.asarray(geometry[-1].position) - np.asarray(geometry[0].position)
    if float(np.dot(normal, step)) >= 0:
        return geometry, encoding, None if sources is None else list(sources)
    return (geometry[::-1], dataclasses.replace(encoding, frames=list(encoding.frames)[::-1]),
            None if sources is None else list(sources)[::-1])


def ds_number(value: float) -> float:
    # DS holds 16 characters: keep as many significant digits as fit.
    for digits in range(16, 5, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return float(text)
    return float(f"{float(value):.6g}")


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _start(source: Dataset | None, template: Dataset | None, modality: str,
           shared: dict[str, str]) -> Dataset:
    """The dataset a slice starts from: its source slice, a kept template, or a new one."""
    if source is not None:
        ds = copy.deepcopy(source)
        ds.remove_private_tags()
        for keyword in _STALE:
            if keyword in ds:
                delattr(ds, keyword)
        if "file_meta" in ds.__dict__:
            del ds.file_meta
    elif template is not None:
        ds = copy.deepcopy(template)
    else:
        ds = Dataset()
    defaults = {
        "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
        "StudyDate": "", "StudyTime": "", "ReferringPhysicianName": "", "StudyID": "",
        "AccessionNumber": "", "Manufacturer": "", "PositionReferenceIndicator": "",
        "Modality": {"CT": "CT", "MR": "MR"}.get(modality, "OT"),
    }
    for keyword, value in defaults.items():
        if keyword not in ds:
            setattr(ds, keyword, value)
    for keyword, value in shared.items():  # UIDs an anonymised source left empty
        if not str(ds.get(keyword, "") or ""):
            setattr(ds, keyword, value)
    ds.SOPClassUID = _storage_class(ds, source)
    if ds.SOPClassUID == MR_IMAGE_STORAGE:
        for keyword, value in {"ScanningSequence": "RM", "SequenceVariant": "NONE",
                               "ScanOptions": "", "MRAcquisitionType": "", "EchoTime": "",
                               "EchoTrainLength": "", "RepetitionTime": ""}.items():
            if not ds.get(keyword):
                setattr(ds, keyword, value)
    if ds.SOPClassUID == CT_IMAGE_STORAGE:
        for keyword in ("KVP", "AcquisitionNumber"):
            if keyword not in ds:
                setattr(ds, keyword, "")
    if not ({"Laterality", "ImageLaterality"} & set(ds.dir())):
        # Type 2C when the body part is paired; validators cannot tell for an unknown or
        # unlisted body part (e.g. PARTIALBODY), and an empty value is always valid.
        ds.Laterality = ""
    if "PatientPosition" not in ds and "PatientOrientationCodeSequence" not in ds:
        ds.PatientPosition = ""  # Type 2C for CT and MR: unknown
    if ds.SOPClassUID == SECONDARY_CAPTURE and "ConversionType" not in ds:
        ds.ConversionType = "WSD"  # workstation: made from another image, not scanned
    return ds


def _storage_class(ds: Dataset, source: Dataset | None) -> UID:
    existing = str(ds.get("SOPClassUID", "") or "")
    if not existing and source is not None and "file_meta" in source.__dict__:
        existing = str(source.file_meta.get("MediaStorageSOPClassUID", "") or "")
    if existing in (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, SECONDARY_CAPTURE):
        return UID(existing)
    return _STORAGE.get(str(ds.Modality), SECONDARY_CAPTURE)


def _set_pixels(ds: Dataset, encoding: PixelEncoding, frame: bytes, rows: int,
                columns: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    # Every codestream declares 16-bit samples (see codecs.jpeg2k), so the header does too.
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if encoding.signed else 0
    ds.RescaleSlope = ds_number(encoding.slope)
    ds.RescaleIntercept = ds_number(encoding.intercept)
    if ds.get("Modality") == "CT" and "RescaleType" not in ds:
        ds.RescaleType = "HU"
    if encoding.encapsulated:
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = frame
        ds["PixelData"].VR = "OW"


def set_lossy(ds: Dataset, encoding: PixelEncoding) -> None:
    earlier = str(ds.get("LossyImageCompression", "") or "") == "01"
    if not (encoding.lossy or earlier):
        ds.LossyImageCompression = "00"
        return
    ds.LossyImageCompression = "01"  # once lossy, always lossy (PS3.3 C.7.6.1.1.5)
    if encoding.lossy and encoding.ratio is not None and encoding.method:
        ratios = [float(v) for v in _as_list(ds.get("LossyImageCompressionRatio"))]
        methods = [str(v) for v in _as_list(ds.get("LossyImageCompressionMethod"))]
        if len(ratios) == len(methods):
            ds.LossyImageCompressionRatio = [*ratios, ds_number(round(encoding.ratio, 4))]
            ds.LossyImageCompressionMethod = [*methods, encoding.method]
        else:  # an inconsistent source history cannot be extended: state this step alone
            ds.LossyImageCompressionRatio = [ds_number(round(encoding.ratio, 4))]
            ds.LossyImageCompressionMethod = [encoding.method]


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, str | float | int):
        return [value]
    return list(value)


def _set_derivation(ds: Dataset, encoding: PixelEncoding, source: Dataset | None) -> None:
    image_type = [str(v) for v in _as_list(ds.get("ImageType"))] or ["DERIVED", "SECONDARY"]
    image_type[0] = "DERIVED"
    if len(image_type) < 2:
        image_type.append("SECONDARY")
    if len(image_type) < 3 and ds.SOPClassUID == CT_IMAGE_STORAGE:
        image_type.append("AXIAL")  # CT Image requires value 3 (AXIAL or LOCALIZER)
    if len(image_type) < 3 and ds.SOPClassUID == MR_IMAGE_STORAGE:
        image_type.append("OTHER")  # MR Image requires value 3 (a PS3.3 C.8.3.1.1.1 term)
    ds.ImageType = image_type
    if encoding.derivation:
        ds.DerivationDescription = encoding.derivation[:1024]
    if encoding.lossy:
        ds.DerivationCodeSequence = DicomSequence([code_item("113040", "DCM",
                                                         "Lossy Compression")])
    reference = source_reference(source)
    if reference is not None:
        ds.SourceImageSequence = DicomSequence([reference])


def instance_reference(source: Dataset | None) -> Dataset | None:
    """Referenced SOP Class and Instance UIDs of ``source``, from its file meta where an
    anonymiser emptied them in the dataset; None when it has no instance UID."""
    if source is None:
        return None
    meta = source.__dict__.get("file_meta") or Dataset()
    uid = str(source.get("SOPInstanceUID", "") or "") or str(
        meta.get("MediaStorageSOPInstanceUID", "") or "")
    if not uid:
        return None
    item = Dataset()
    item.ReferencedSOPClassUID = str(source.get("SOPClassUID", "") or "") or _storage_class(
        source, source)
    item.ReferencedSOPInstanceUID = uid
    return item


def source_reference(source: Dataset | None) -> Dataset | None:
    """A Source Image Sequence item for ``source`` (None when it has no SOP Instance UID);
    purpose "Uncompressed predecessor" unless the source was lossy already."""
    item = instance_reference(source)
    if item is None:
        return None
    if str(source.get("LossyImageCompression", "") or "") != "01":
        item.PurposeOfReferenceCodeSequence = DicomSequence([
            code_item("121320", "DCM", "Uncompressed predecessor")])
    return item


def write_series(volume: Volume, encoding: PixelEncoding, output: str | Path, *,
                 sources: Sequence[Dataset] | None = None, template: Dataset | None = None,
                 series_description: str | None = None,
                 replace: bool = True) -> list[Path]:
    """Write one single-frame DICOM file per slice of ``volume`` (in frame order) to the
    folder ``output``, atomically; Instance Numbers advance along the slice normal.
    ``sources``: the source slice of each output slice."""
    geometry = slice_geometry(volume)
    if len(encoding.frames) != len(geometry):
        raise ValueError(f"{len(encoding.frames)} frames for {len(geometry)} slices")
    if sources is not None and len(sources) != len(geometry):
        raise ValueError(f"{len(sources)} source slices for {len(geometry)} slices")
    geometry, encoding, sources = along_normal(geometry, encoding, sources)
    rows, columns = volume.slice_shape()
    shared = {"StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid()}
    series_uid = generate_uid()
    series_number = None
    written: list[Path] = []
    with atomic_output(output, replace=replace) as folder:
        folder.mkdir()
        for k, (place, frame) in enumerate(zip(geometry, encoding.frames, strict=True)):
            source = sources[k] if sources is not None else None
            ds = _start(source, template, volume.modality, shared)
            if series_number is None:
                series_number = next_series_number(ds)
            ds.SOPInstanceUID = generate_uid()
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_number
            if series_description is not None:
                ds.SeriesDescription = series_description[:64]
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = place.position
            ds.ImageOrientationPatient = place.orientation
            ds.PixelSpacing = place.pixel_spacing
            if not ds.get("SliceThickness"):
                ds.SliceThickness = ds_number(place.thickness)
            if "SliceLocation" in ds:
                ds.SliceLocation = ds_number(place.position[2])
            _set_pixels(ds, encoding, frame, rows, columns)
            set_lossy(ds, encoding)
            _set_derivation(ds, encoding, source)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = UID(encoding.transfer_syntax)
            ds.file_meta = meta
            name = f"IM{k + 1:05d}.dcm"
            save(ds, folder / name, Path(output) / name)
            written.append(Path(output) / name)
    return written


def save(ds: Dataset, path: Path, shown: Path) -> None:
    """Write ``ds`` as a DICOM file at ``path`` (a temporary name); a failed write (a full
    disk, a file size limit) is an OSError naming ``shown``, the file the user asked for,
    with the system's reason: pydicom re-raises it with the tag and its own traceback as
    the message, and no file name."""
    try:
        ds.save_as(path, enforce_file_format=True)
    except OSError as error:
        cause = error.__cause__ if isinstance(error.__cause__, OSError) else error
        raise OSError(cause.errno, cause.strerror or str(cause).splitlines()[0],
                      str(shown)) from None


def next_series_number(ds: Dataset) -> int:
    try:
        return int(ds.get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000


def shared_template(ds: Dataset) -> dict:
    """The shared attributes of a source slice as DICOM JSON (kept in a store's metadata)."""
    kept = Dataset()
    for keyword in SHARED_KEYWORDS:
        if keyword in ds:
            kept[keyword] = ds[keyword]
    return kept.to_json_dict()


def template_from_json(document: dict) -> Dataset:
    return pydicom.Dataset.from_json(document)
