"""What a DICOM series folder written by medlossy holds, and whether it is whole.

Data flow: the folder's ``IM00001.dcm``... or ``MF00001.dcm`` files (``compress --format
dicom`` or ``decompress --format dicom``) -> their headers (SOP class, transfer syntax,
frames, the lossy-compression attributes and the derivation medlossy wrote) -> a summary.
``check_dicom_output`` also decodes every frame (pydicom with its JPEG 2000 plugins, as a
viewer would) and, for a compressed series, recomputes the ratio each file records: raw
16-bit bytes over the bytes of its encapsulated frames (each padded to even, as
``dicom_export.pixel_bytes`` counts them). DICOM holds no checksum of medlossy's, so a
frame that decodes to other values of the same size cannot be detected here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
from pydicom.encaps import generate_frames

from medlossy.errors import MedlossyError
from medlossy.outputs import is_dicom_output

#: Relative difference allowed between a recorded ratio (4 decimals) and the recomputed one.
_RATIO_TOLERANCE = 1e-3


def _files(folder: Path) -> list[Path]:
    if not is_dicom_output(folder):
        raise MedlossyError(folder, "is neither a medlossy store nor a DICOM series folder "
                                    "that medlossy wrote")
    return sorted(folder.iterdir())


def _frames(ds: pydicom.Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _pixel_bytes(ds: pydicom.Dataset) -> int:
    """Bytes of pixel data as the ratio counts them (encapsulated frames, or the raw data)."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return sum(len(frame) for frame in
                   generate_frames(ds.PixelData, number_of_frames=_frames(ds)))
    return len(ds.PixelData)


def _recorded_ratio(ds: pydicom.Dataset) -> float | None:
    """The last LossyImageCompressionRatio (earlier ones are the source's history)."""
    value = ds.get("LossyImageCompressionRatio")
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
    return float(values[-1])


def _inspect(file: Path, decode: bool = False) -> pydicom.Dataset:
    """``file`` read (and with ``decode`` its frames decoded and counted), or one line
    naming what is damaged."""
    try:
        with warnings.catch_warnings():  # a damaged file is reported below, in one line
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(file)
        shape = (int(ds.Rows), int(ds.Columns))
        ds.medlossy_pixel_bytes = _pixel_bytes(ds)
        if decode:
            decoded = ds.pixel_array
            expected = shape if _frames(ds) == 1 else (_frames(ds), *shape)
            if decoded.shape != expected:
                raise ValueError(f"decoded {decoded.shape}, header says {expected}")
    except Exception as error:  # pydicom and its decoder plugins raise many types
        raise MedlossyError(file, f"damaged DICOM ({type(error).__name__}: {error})") from None
    return ds


def _summary(folder: Path, count: int, datasets: list[pydicom.Dataset]) -> dict:
    first = datasets[0]
    syntax = first.file_meta.TransferSyntaxUID
    raw = sum(_frames(ds) * int(ds.Rows) * int(ds.Columns) * 2 for ds in datasets)
    stored = sum(ds.medlossy_pixel_bytes for ds in datasets)
    return {
        "folder": str(folder), "files": count, "sop_class": first.SOPClassUID.name,
        "modality": str(first.get("Modality", "")), "transfer_syntax": str(syntax),
        "transfer_syntax_name": syntax.name, "compressed": syntax.is_compressed,
        "frames": sum(_frames(ds) for ds in datasets), "rows": int(first.Rows),
        "columns": int(first.Columns),
        "lossy": str(first.get("LossyImageCompression", "")) == "01",
        "method": str(first.get("LossyImageCompressionMethod", "") or "") or None,
        "recorded_ratio": _recorded_ratio(first),
        "raw_bytes": raw, "pixel_bytes": stored,
        # Only compressed pixel data say what the series cost; a decoded series is as big as
        # its raw 16-bit data and records the ratio of the store it came from.
        "ratio": raw / stored if syntax.is_compressed and stored else None,
        "derivation": str(first.get("DerivationDescription", "")
                          or first.get("ImageComments", "")),
    }


def describe_dicom_output(folder: str | Path) -> dict:
    """Files, SOP class, transfer syntax, frames, bytes and ratios of a medlossy DICOM series
    folder."""
    files = _files(Path(folder))
    return _summary(Path(folder), len(files), [_inspect(file) for file in files])


def check_dicom_output(folder: str | Path) -> tuple[dict, list[str]]:
    """The summary of the files that read, and the problems found by decoding every frame
    and comparing the ratio each file records with the series' pixel data (medlossy records
    the whole series' ratio in every file); no problems when all hold."""
    files = _files(Path(folder))
    datasets, problems = [], []
    for file in files:
        try:
            datasets.append(_inspect(file, decode=True))
        except MedlossyError as error:
            problems.append(f"{file.name}: {error.problem}")
    if not datasets:
        return {"folder": str(folder), "files": len(files)}, problems
    summary = _summary(Path(folder), len(files), datasets)
    for ds in datasets:
        if _recorded_ratio(ds) != summary["recorded_ratio"]:
            problems.append(f"{Path(ds.filename).name}: records ratio x{_recorded_ratio(ds)}, "
                            f"the first file x{summary['recorded_ratio']}")
    recorded, actual = summary["recorded_ratio"], summary["ratio"]
    if len(datasets) == len(files) and summary["lossy"] and actual is not None \
            and recorded is not None and abs(actual / recorded - 1) > _RATIO_TOLERANCE:
        problems.append(f"records ratio x{recorded:g}, its frames hold x{actual:.4f}")
    return summary, problems
