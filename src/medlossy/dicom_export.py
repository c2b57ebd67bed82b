"""DICOM out: a volume compressed into a JPEG 2000 / HTJ2K DICOM series, or a store decoded
into an uncompressed one.

Data flow (compress): read the source (a DICOM series keeps each slice's header) -> put the
volume in frame order (DICOM rows along the second array axis, as the reader gives it) -> plan
and encode with the store's rate control, counting only the pixel data bytes -> write one file
per slice (or one enhanced multi-frame object) with the transfer syntax of the codec and the
lossy-compression attributes.
Data flow (decompress): decode the store -> codes through its intensity mapping -> Explicit VR
Little Endian slices, still flagged lossy when the store was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
)

from medlossy import __version__
from medlossy.codecs.intensity import plan_mapping
from medlossy.compression import Target, encode_volume, plan_volume
from medlossy.decompression import read_store
from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.io.dicom_multiframe import write_multiframe
from medlossy.io.dicom_series import read_series_with_sources
from medlossy.io.dicom_writer import PixelEncoding, template_from_json, write_series
from medlossy.store import SliceStore
from medlossy.volume import Volume


@dataclass(frozen=True)
class DicomCodec:
    """What DICOM calls a codec: transfer syntaxes (lossy, lossless) and the method term."""

    lossy: str
    lossless: str
    method: str
    standard: str


#: PS3.5 A.4.4 / A.4.11 transfer syntaxes; methods are PS3.3 C.7.6.1.1.5.1 defined terms.
DICOM_CODECS = {
    "jpeg2k": DicomCodec(JPEG2000, JPEG2000Lossless, "ISO_15444_1", "JPEG 2000 (ISO 15444-1)"),
    "htj2k": DicomCodec(HTJ2K, HTJ2KLossless, "ISO_15444_15", "HTJ2K (ISO 15444-15)"),
}


def dicom_codec(name: str) -> DicomCodec:
    try:
        return DICOM_CODECS[name]
    except KeyError:
        raise MedlossyError(None, f"codec {name!r} has no DICOM transfer syntax; use "
                                  f"{' or '.join(DICOM_CODECS)} with --format dicom") from None


def pixel_bytes(streams: list[bytes]) -> int:
    """Bytes of encapsulated pixel data that the ratio counts: each frame padded to even."""
    return sum(len(s) + len(s) % 2 for s in streams)


def frame_order(volume: Volume) -> Volume:
    """The same volume with its two in-plane axes swapped, so that an axial plane is a DICOM
    frame (rows, columns): medlossy's readers put DICOM columns on the first array axis."""
    axis = volume.axial_axis
    first, second = (a for a in range(3) if a != axis)
    order = list(range(3))
    order[first], order[second] = second, first
    affine = volume.affine.copy()
    affine[:, :3] = volume.affine[:, order]
    return Volume(np.asarray(volume.array).transpose(order), affine,
                  modality=volume.modality, header=volume.header)


def _read(source: str | Path, modality: str, allow_gaps: bool):
    path = Path(source)
    if path.is_dir() or path.suffix.lower() == ".dcm":
        return read_series_with_sources(path, modality, allow_gaps=allow_gaps)
    return read_volume(path, modality), None


def single_frame_storage(modality: str) -> bool:
    """CT and MR have single-frame storage classes that carry geometry; other modalities
    (Secondary Capture) need the multi-frame object's functional groups for it."""
    return modality in ("CT", "MR")


def compress_to_dicom(source: str | Path, output: str | Path, target: Target, *,
                      codec_name: str | None = "jpeg2k", modality: str = "OTHER",
                      data_range: float | None = None, workers: int | None = None,
                      allow_gaps: bool = False, show_progress: bool = False,
                      multiframe: bool = False, replace: bool = True) -> dict:
    """Compress ``source`` (a DICOM series, NIfTI or NRRD) into the DICOM series folder
    ``output`` at ``target``; the ratio counts raw 16-bit bytes over pixel data bytes.

    One file per slice (CT / MR Image Storage), or with ``multiframe`` one Enhanced CT / MR
    object; a volume that is neither CT nor MR is always one Multi-frame Grayscale Word
    Secondary Capture object (unsigned codes). ``replace`` False refuses an ``output`` that
    exists by the time the series is written."""
    codec_name = codec_name or "jpeg2k"
    codec = dicom_codec(codec_name)
    volume, sources = _read(source, modality, allow_gaps)
    volume = frame_order(volume)
    name = str(source)
    instead = ("DICOM pixel data holds 16-bit integers: write a store instead (no --format "
               "dicom), where --codec blosc keeps any dtype exactly")
    plan = plan_volume(volume, codec_name, data_range, name, target,  # may recognise CT
                       sixteen_bit=True, instead=instead)
    if not single_frame_storage(volume.modality):
        multiframe = True
        if np.dtype(plan.mapping.code_dtype).kind == "i":
            plan = plan_volume(volume, codec_name, data_range, name, target, unsigned=True,
                               sixteen_bit=True, instead=instead)
    encoding = encode_volume(volume, plan, target, pixel_bytes, workers=workers,
                             show_progress=show_progress, source=name,
                             further=())  # its other codec, HTJ2K, reaches no further
    lossless = encoding.setting.mode == "lossless"
    stored = pixel_bytes(encoding.streams)
    ratio = plan.raw / stored
    mapping = plan.mapping
    psnr = encoding.tally.psnr(plan.peak)
    description = (f"{'Lossless' if lossless else 'Lossy'} {codec.standard} compression of "
                   f"the whole series to x{ratio:.2f} by medlossy {__version__}")
    if not lossless:
        description += f" (PSNR {psnr:.2f} dB at r={plan.peak:g})"
    pixels = PixelEncoding(
        codec.lossless if lossless else codec.lossy, encoding.streams,
        signed=np.dtype(mapping.code_dtype).kind == "i", slope=mapping.slope or 1.0 / mapping.scale,
        intercept=mapping.linear_offset, lossy=not lossless, ratio=ratio, method=codec.method,
        derivation=description)
    template = _template(volume) if sources is None else None
    writer = write_multiframe if multiframe else write_series
    files = writer(volume, pixels, output, sources=sources, template=template,
                   replace=replace)
    reached = (abs(ratio / target.value - 1.0) <= 0.01 if target.mode == "ratio"
               else encoding.reached)
    return {"files": len(files), "transfer_syntax": pixels.transfer_syntax,
            "pixel_bytes": stored, "raw_bytes": plan.raw, "ratio": ratio,
            "psnr_db": None if lossless or not np.isfinite(psnr) else psnr,
            "max_abs_error": encoding.tally.max_abs_error, "target_reached": reached,
            "lossless": lossless, "sop_class": _sop_class(files[0])}


def _sop_class(file: Path) -> str:
    return pydicom.dcmread(file, stop_before_pixels=True).SOPClassUID.name


def _template(volume: Volume):
    document = volume.header.get("dicom")
    return template_from_json(document) if document else None


def store_to_dicom(store_path: str | Path, output: str | Path, *,
                   workers: int | None = None, multiframe: bool = False,
                   replace: bool = True) -> dict:
    """Decode a store into an uncompressed DICOM series (Explicit VR Little Endian), flagged
    lossy with the store's achieved ratio when its codestreams were lossy. Objects as in
    ``compress_to_dicom``: single-frame or enhanced CT / MR, multi-frame SC otherwise;
    ``replace`` as there."""
    store = SliceStore(store_path)
    attributes = store.attributes
    mapping = store.mapping
    if np.dtype(mapping.code_dtype).itemsize > 2 or np.dtype(mapping.code_dtype).kind == "f":
        raise MedlossyError(store_path, f"holds {np.dtype(mapping.code_dtype).name} values "
                                        "(lossless Blosc); DICOM pixel data holds 16-bit "
                                        "integers: decompress to NIfTI or NRRD instead")
    volume = frame_order(read_store(store_path, workers=workers))
    unsigned = not single_frame_storage(volume.modality)  # SC holds unsigned pixels only
    multiframe = multiframe or unsigned
    code_type = np.dtype(mapping.code_dtype)
    if code_type.itemsize == 1 or (unsigned and code_type.kind == "i"):  # 16-bit pixels
        array = np.asarray(volume.array)
        mapping = plan_mapping(float(array.min()), float(array.max()), array.dtype,
                               bool(np.all(np.mod(array, 1) == 0)), unsigned=unsigned,
                               sixteen_bit=True)
    axis = volume.axial_axis
    frames = [np.ascontiguousarray(mapping.to_codes(plane)).astype(
        np.dtype(mapping.code_dtype).newbyteorder("<")).tobytes()
        for plane in np.moveaxis(np.asarray(volume.array), axis, 0)]
    lossy = attributes["codec"].get("setting", {}).get("mode") != "lossless"
    codec_name = attributes["codec"]["name"]
    method = DICOM_CODECS[codec_name].method if codec_name in DICOM_CODECS else codec_name
    ratio = attributes["achieved"]["ratio"]
    description = (f"Decoded from a medlossy store ({codec_name}, x{ratio:.2f}"
                   f"{', lossless' if not lossy else ''}) by medlossy {__version__}")
    pixels = PixelEncoding(ExplicitVRLittleEndian, frames,
                           signed=np.dtype(mapping.code_dtype).kind == "i",
                           slope=mapping.slope or 1.0 / mapping.scale,
                           intercept=mapping.linear_offset, lossy=lossy, ratio=ratio,
                           method=method[:16], derivation=description)
    writer = write_multiframe if multiframe else write_series
    files = writer(volume, pixels, output, template=_template(volume), replace=replace)
    return {"files": len(files), "transfer_syntax": str(ExplicitVRLittleEndian),
            "lossy": lossy, "ratio": ratio, "sop_class": _sop_class(files[0])}
