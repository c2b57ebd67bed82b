"""Write a volume as one enhanced multi-frame DICOM object (Enhanced CT, Enhanced MR, or
Multi-frame Grayscale Word Secondary Capture for other modalities).

Data flow: a volume in frame order + one encoded frame per slice + the pixel description ->
one dataset whose root holds patient, study, series, equipment and frame of reference (from
the first source slice, a kept template, or defaults), whose shared functional groups hold
orientation, pixel measures, rescale and frame type, and whose per-frame groups hold each
frame's position, stack position and source slice -> one file in a folder renamed into place.

pydicom writes the dataset; no library builds Enhanced CT/MR objects from encoded frames
(highdicom only converts uncompressed legacy slices), so the modules are filled in here,
after PS3.3 A.38 (Enhanced CT), A.36 (Enhanced MR) and A.8.4 (Multi-frame Grayscale Word SC).
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import UID, generate_uid

from medlossy import __version__
from medlossy.atomic import atomic_output
from medlossy.io.dicom_writer import (
    PixelEncoding,
    SliceGeometry,
    along_normal,
    code_item,
    ds_number,
    instance_reference,
    next_series_number,
    save,
    set_lossy,
    slice_geometry,
    source_reference,
)
from medlossy.volume import Volume

ENHANCED_CT = UID("1.2.840.10008.5.1.4.1.1.2.1")
ENHANCED_MR = UID("1.2.840.10008.5.1.4.1.1.4.1")
MULTIFRAME_WORD_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")
#: Image and Frame Type of a compressed volume: derived, primary (not a secondary
#: reconstruction of it), a volume, no special kind (PS3.3 C.8.16.1).
ENHANCED_FRAME_TYPE = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
#: Root attributes carried over from the source: patient, study, series, frame of reference,
#: equipment. Acquisition details (KVP, echo time...) belong in functional groups that a
#: DERIVED object may leave out, so they are not copied to the root where they would be wrong.
CARRIED = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "PatientWeight", "PatientSize", "StudyInstanceUID",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "SeriesDescription", "SeriesNumber", "BodyPartExamined",
    "PatientPosition", "FrameOfReferenceUID", "PositionReferenceIndicator", "Manufacturer",
    "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions", "InstitutionName",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod")


def multiframe_class(modality: str) -> UID:
    """The enhanced SOP class for a modality: Enhanced CT, Enhanced MR, or word SC."""
    return {"CT": ENHANCED_CT, "MR": ENHANCED_MR}.get(modality, MULTIFRAME_WORD_SC)


def _root(first: Dataset | None, modality: str, shared: dict[str, str]) -> Dataset:
    ds = Dataset()
    if first is not None:
        for keyword in CARRIED:
            if keyword in first:  # a copy: setting a value later must not change the source
                ds[keyword] = copy.deepcopy(first[keyword])
    defaults = {
        "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
        "StudyDate": "", "StudyTime": "", "ReferringPhysicianName": "", "StudyID": "",
        "AccessionNumber": "", "PositionReferenceIndicator": "", "PatientPosition": "",
    }
    for keyword, value in {**defaults, **shared}.items():
        if not str(ds.get(keyword, "") or ""):
            setattr(ds, keyword, value)
    ds.Modality = {"CT": "CT", "MR": "MR"}.get(modality, "OT")
    ds.SOPClassUID = multiframe_class(modality)
    # Enhanced General Equipment: all four are Type 1; a source without them gets medlossy's,
    # the software that made this object.
    for keyword, value in {"Manufacturer": "medlossy", "ManufacturerModelName": "medlossy",
                           "DeviceSerialNumber": "0",
                           "SoftwareVersions": f"medlossy {__version__}"}.items():
        if not str(ds.get(keyword, "") or ""):
            setattr(ds, keyword, value)
    return ds


def _secondary_capture(ds: Dataset, geometry: list[SliceGeometry],
                       encoding: PixelEncoding) -> None:
    """The SC Equipment, General Image and SC Multi-frame Image attributes (PS3.3 A.8.4):
    unsigned pixels, the rescale in the root, frames indexed by slice location."""
    if encoding.signed:
        raise ValueError("Multi-frame Grayscale Word SC holds unsigned pixels only")
    ds.ConversionType = "WSD"  # workstation: made from other images, not scanned
    ds.Laterality = ""  # Type 2C, unknown (see dicom_writer)
    ds.PatientOrientation = patient_orientation(geometry[0].orientation)
    ds.RescaleIntercept = ds_number(encoding.intercept)
    ds.RescaleSlope = ds_number(encoding.slope)
    ds.RescaleType = "US"  # unspecified units
    ds.PresentationLUTShape, ds.BurnedInAnnotation = "IDENTITY", "NO"
    row, column = np.array(geometry[0].orientation[:3]), np.array(geometry[0].orientation[3:])
    normal = np.cross(row, column)
    ds.FrameIncrementPointer = Tag("SliceLocationVector")
    ds.SliceLocationVector = [ds_number(float(np.dot(normal, place.position)))
                              for place in geometry]


def patient_orientation(orientation: list[float]) -> list[str]:
    """Patient Orientation (row direction, column direction) from Image Orientation: the
    body directions (L/R, P/A, H/F) each points along, strongest first (PS3.3 C.7.6.1.1.1)."""
    out = []
    for vector in (orientation[:3], orientation[3:]):
        letters = ""
        for axis in np.argsort(-np.abs(vector)):
            if abs(vector[axis]) > 1e-3 and len(letters) < 3:
                letters += ("LPH" if vector[axis] > 0 else "RAF")[axis]
        out.append(letters)
    return out


def _irradiation_event(first: Dataset | None) -> str:
    """The source's Irradiation Event UID; a new one when the source has none (Type 1)."""
    value = first.get("IrradiationEventUID") if first is not None else None
    if value:
        return str(value if isinstance(value, str) else value[0])
    return generate_uid()


def _anatomy(ds: Dataset) -> Dataset:
    """Frame Anatomy: the region PS3.16 Annex L maps Body Part Examined to (the table
    highdicom ships), else the generic SNOMED "Anatomical structure"; laterality unknown
    unless the region is unpaired."""
    from highdicom._standard_utils import get_anatomic_region_map

    found = get_anatomic_region_map().get(str(ds.get("BodyPartExamined", "") or "").upper())
    item = Dataset()
    if found is None:
        item.AnatomicRegionSequence = DicomSequence([
            code_item("91723000", "SCT", "Anatomical structure")])
        item.FrameLaterality = "U"
    else:
        concept, paired = found
        item.AnatomicRegionSequence = DicomSequence([
            code_item(concept.value, concept.scheme_designator, concept.meaning)])
        item.FrameLaterality = "U" if paired else "B"  # B: unpaired (PS3.3 C.7.6.16.2.8.1)
    return item


def _evidence(sources: Sequence[Dataset]) -> DicomSequence:
    """Source Image Evidence: every source slice, by study and series."""
    by_series: dict[tuple[str, str], list[Dataset]] = {}
    for source in sources:
        item = instance_reference(source)
        if item is None:
            continue
        key = (str(source.get("StudyInstanceUID", "") or ""),
               str(source.get("SeriesInstanceUID", "") or ""))
        by_series.setdefault(key, []).append(item)
    studies = []
    for (study, series), items in by_series.items():
        entry = Dataset()
        entry.StudyInstanceUID = study or generate_uid()
        referenced = Dataset()
        referenced.SeriesInstanceUID = series or generate_uid()
        referenced.ReferencedSOPSequence = DicomSequence(items)
        entry.ReferencedSeriesSequence = DicomSequence([referenced])
        studies.append(entry)
    return DicomSequence(studies)


def _shared_groups(ds: Dataset, place: SliceGeometry, encoding: PixelEncoding,
                   spacing: float, irradiation_event: str) -> Dataset:
    group = Dataset()
    measures = Dataset()
    measures.PixelSpacing = place.pixel_spacing
    measures.SliceThickness = ds_number(place.thickness)
    measures.SpacingBetweenSlices = ds_number(spacing)
    group.PixelMeasuresSequence = DicomSequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = place.orientation
    group.PlaneOrientationSequence = DicomSequence([orientation])
    if ds.SOPClassUID in (ENHANCED_CT, ENHANCED_MR):  # SC keeps the rescale in its root
        transform = Dataset()
        transform.RescaleIntercept = ds_number(encoding.intercept)
        transform.RescaleSlope = ds_number(encoding.slope)
        transform.RescaleType = "HU" if ds.Modality == "CT" else "US"
        group.PixelValueTransformationSequence = DicomSequence([transform])
        group.FrameAnatomySequence = DicomSequence([_anatomy(ds)])
        frame_type = Dataset()
        frame_type.FrameType = ENHANCED_FRAME_TYPE
        frame_type.PixelPresentation = "MONOCHROME"
        frame_type.VolumetricProperties = "VOLUME"
        frame_type.VolumeBasedCalculationTechnique = "NONE"
        if ds.SOPClassUID == ENHANCED_MR:
            frame_type.ComplexImageComponent = "MAGNITUDE"
            frame_type.AcquisitionContrast = "UNKNOWN"
            group.MRImageFrameTypeSequence = DicomSequence([frame_type])
        else:
            group.CTImageFrameTypeSequence = DicomSequence([frame_type])
            event = Dataset()
            event.IrradiationEventUID = irradiation_event
            group.IrradiationEventIdentificationSequence = DicomSequence([event])
    return group


def _per_frame_group(ds: Dataset, k: int, place: SliceGeometry, encoding: PixelEncoding,
                     source: Dataset | None) -> Dataset:
    group = Dataset()
    if ds.SOPClassUID != MULTIFRAME_WORD_SC:  # SC has no Frame Content (nor stacks)
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        content.DimensionIndexValues = [1, k + 1]
        group.FrameContentSequence = DicomSequence([content])
    position = Dataset()
    position.ImagePositionPatient = place.position
    group.PlanePositionSequence = DicomSequence([position])
    reference = source_reference(source)
    # Derivation Image says "derived from these images by this operation" (Type 1 code):
    # only for a lossy step with a source instance; CID 7203 has no lossless re-encoding.
    if reference is not None and encoding.lossy:
        derivation = Dataset()
        if encoding.derivation:
            derivation.DerivationDescription = encoding.derivation[:1024]
        derivation.DerivationCodeSequence = DicomSequence([
            code_item("113040", "DCM", "Lossy Compression")])
        derivation.SourceImageSequence = DicomSequence([reference])
        group.DerivationImageSequence = DicomSequence([derivation])
    return group


def _dimensions(ds: Dataset) -> None:
    organization = generate_uid()
    item = Dataset()
    item.DimensionOrganizationUID = organization
    ds.DimensionOrganizationSequence = DicomSequence([item])
    indices = []
    for pointer, label in ((Tag("StackID"), "Stack ID"),
                           (Tag("InStackPositionNumber"), "In-Stack Position Number")):
        index = Dataset()
        index.DimensionOrganizationUID = organization
        index.DimensionIndexPointer = pointer
        index.FunctionalGroupPointer = Tag("FrameContentSequence")
        index.DimensionDescriptionLabel = label
        indices.append(index)
    ds.DimensionIndexSequence = DicomSequence(indices)


def _enhanced_image(ds: Dataset, first: Dataset | None) -> None:
    """Enhanced CT / MR Image module attributes of a DERIVED volume (PS3.3 C.8.15.2,
    C.8.13.1): the image-level frame description, the same as every frame's."""
    ds.ImageType = ENHANCED_FRAME_TYPE
    ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.PresentationLUTShape = "IDENTITY"
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.AcquisitionContextSequence = DicomSequence([])
    if ds.SOPClassUID == ENHANCED_MR:
        ds.ComplexImageComponent, ds.AcquisitionContrast = "MAGNITUDE", "UNKNOWN"
        # Type 1 without an "unknown" term: the source's, else IEC (60601-2-33), the agency
        # scanners report by default.
        ds.ApplicableSafetyStandardAgency = str(
            (first.get("ApplicableSafetyStandardAgency", "") if first is not None else "")
            or "IEC")


def _pixels(ds: Dataset, encoding: PixelEncoding, rows: int, columns: int) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, len(encoding.frames)
    # Every codestream declares 16-bit samples (see codecs.jpeg2k), so the header does too.
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if encoding.signed else 0
    if encoding.encapsulated:
        ds.PixelData = encapsulate(list(encoding.frames))  # with a Basic Offset Table
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = b"".join(encoding.frames)
        ds["PixelData"].VR = "OW"


def write_multiframe(volume: Volume, encoding: PixelEncoding, output: str | Path, *,
                     sources: Sequence[Dataset] | None = None,
                     template: Dataset | None = None, replace: bool = True) -> list[Path]:
    """Write ``volume`` (in frame order) as one multi-frame object in the folder ``output``,
    atomically: Enhanced CT / MR for those modalities, Multi-frame Grayscale Word SC
    (unsigned pixels only) otherwise; frames advance along the slice normal. ``sources``:
    each frame's source slice, if any."""
    geometry = slice_geometry(volume)
    if len(encoding.frames) != len(geometry):
        raise ValueError(f"{len(encoding.frames)} frames for {len(geometry)} slices")
    if sources is not None and len(sources) != len(geometry):
        raise ValueError(f"{len(sources)} source slices for {len(geometry)} slices")
    geometry, encoding, sources = along_normal(geometry, encoding, sources)
    first = sources[0] if sources else template
    shared = {"StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid()}
    ds = _root(first, volume.modality, shared)
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = next_series_number(ds)
    ds.InstanceNumber = 1
    now = datetime.datetime.now(datetime.UTC)
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    if ds.SOPClassUID == MULTIFRAME_WORD_SC:
        ds.ImageType = ["DERIVED", "SECONDARY"]
        _secondary_capture(ds, geometry, encoding)
    else:
        _enhanced_image(ds, first)
    spacing = float(volume.spacing[volume.axial_axis])
    ds.SharedFunctionalGroupsSequence = DicomSequence([
        _shared_groups(ds, geometry[0], encoding, spacing, _irradiation_event(first))])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([
        _per_frame_group(ds, k, place, encoding, sources[k] if sources else None)
        for k, place in enumerate(geometry)])
    if ds.SOPClassUID != MULTIFRAME_WORD_SC:
        _dimensions(ds)
    if encoding.derivation:
        ds.ImageComments = encoding.derivation[:10240]
    evidence = _evidence(sources or []) if encoding.lossy else DicomSequence([])
    if evidence:
        ds.SourceImageEvidenceSequence = evidence
    set_lossy(ds, encoding)
    _pixels(ds, encoding, *volume.slice_shape())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(encoding.transfer_syntax)
    ds.file_meta = meta
    name = "MF00001.dcm"
    with atomic_output(output, replace=replace) as folder:
        folder.mkdir()
        save(ds, folder / name, Path(output) / name)
    return [Path(output) / name]
