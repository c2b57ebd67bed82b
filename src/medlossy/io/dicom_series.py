"""A DICOM series (a folder of single-frame slices, or enhanced multi-frame files) as a Volume.

Data flow: read every file's header (pixels skipped) -> keep the image objects, note the others
(RTSTRUCT, SEG, SR...) -> require exactly one image series -> one frame record per slice
(position, orientation, spacing, rescale) -> sort along the slice normal and refuse gaps, uneven
spacing and duplicate positions -> decode the pixels (pydicom, with whichever decoder plugin the
transfer syntax needs) -> rescale into the smallest integer type that holds the values.

pydicom has no notion of a volume, so grouping, geometry checks and the affine are done here.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import iter_pixels

from medlossy.errors import MedlossyError
from medlossy.io.dicom_writer import shared_template
from medlossy.volume import Volume

SUFFIXES = (".dcm",)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Modalities of objects that travel with an image series but are not images of it.
NON_IMAGE_MODALITIES = frozenset({
    "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SEG", "SR", "PR", "KO", "REG", "DOC", "FID",
    "RWV", "PLAN", "AU", "ECG"})
#: Consecutive slice steps may differ from the series' typical step by this much (mm) or by
#: this fraction of it, whichever is larger: scanners round positions to about 0.001 mm.
STEP_TOLERANCE_MM = 0.01
STEP_TOLERANCE_FRACTION = 0.01
_ORIENTATION_TOLERANCE = 1e-4
#: What pydicom raises when a damaged element is parsed on first access.
_HEADER_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError,
                  NotImplementedError)


@dataclass(frozen=True)
class _Frame:
    """One 2D slice: where it lives (file, frame index) and where it lies in space."""

    file: Path
    index: int  # frame number inside a multi-frame file, 0 for single-frame files
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient: row direction, column direction
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slope: float
    intercept: float

    @property
    def name(self) -> str:
        return self.file.name if self.index == 0 else f"{self.file.name} frame {self.index + 1}"


def _modality(ds: pydicom.Dataset) -> str:
    return str(ds.get("Modality", "") or "").upper()


def _is_image(ds: pydicom.Dataset) -> bool:
    return "Rows" in ds and "Columns" in ds and _modality(ds) not in NON_IMAGE_MODALITIES


def _kind(ds: pydicom.Dataset) -> str:
    modality = _modality(ds)
    if modality:
        return modality
    sop_class = ds.get("SOPClassUID") or getattr(ds.get("file_meta", None),
                                                 "MediaStorageSOPClassUID", "")
    return pydicom.uid.UID(str(sop_class)).name if sop_class else "no modality"


def _dcmread(file: Path, **options: object) -> pydicom.Dataset:
    """pydicom.dcmread without its warning that a file holds the other VR encoding than its
    transfer syntax says: pydicom reads it right, and the two-line warning would bury the
    one-line summary (or error)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Expected (explicit|implicit) VR",
                                category=UserWarning)
        return pydicom.dcmread(file, **options)


def _read_header(file: Path) -> pydicom.Dataset | None:
    try:
        return _dcmread(file, stop_before_pixels=True)
    except InvalidDicomError:
        return None  # not DICOM: folders hold notes and thumbnails
    except Exception as error:  # pydicom's parser raises struct, EOF, value... errors
        with open(file, "rb") as handle:
            if handle.read(132)[128:] == b"DICM":
                raise MedlossyError(file, f"damaged DICOM file ({type(error).__name__}: "
                                          f"{error})") from None
        return None


def _describe_series(uid: str, headers: list[tuple[Path, pydicom.Dataset]]) -> str:
    ds = headers[0][1]
    description = str(ds.get("SeriesDescription", "") or "").strip()
    label = f"{_kind(ds)} series {uid or '(no UID)'}"
    if description:
        label += f" '{description}'"
    return f"{label}: {len(headers)} file(s), e.g. {headers[0][0].name}"


def _scan(path: Path) -> tuple[list[tuple[Path, pydicom.Dataset]], list[str]]:
    """The one image series under ``path`` and a description of every object left out."""
    if path.is_file():
        candidates = [path]
    else:
        candidates = sorted(p for p in path.rglob("*")
                            if p.is_file() and not any(part.startswith(".")
                                                       for part in p.relative_to(path).parts))
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    others: list[tuple[Path, pydicom.Dataset]] = []
    for file in candidates:
        ds = _read_header(file)
        if ds is None or "DICOMDIR" in file.name.upper():
            continue
        try:
            if _is_image(ds):
                series[str(ds.get("SeriesInstanceUID", "") or "")].append((file, ds))
            else:
                others.append((file, ds))
        except _HEADER_ERRORS as error:  # a damaged value pydicom parses only on access
            raise MedlossyError(file, f"malformed DICOM header ({type(error).__name__}: "
                                      f"{error})") from None
    ignored = [f"{file.relative_to(path) if path.is_dir() else file.name} ({_kind(ds)})"
               for file, ds in others]
    if not series:
        if others and path.is_file():
            raise MedlossyError(path, f"is a {_kind(others[0][1])} object, not an image; "
                                      "point to the image series it refers to")
        if others:
            raise MedlossyError(path, "holds no image series, only " + ", ".join(ignored[:5])
                                + (" ..." if len(ignored) > 5 else "")
                                + "; point to the image series these objects refer to")
        raise MedlossyError(path, "no DICOM files in this folder" if path.is_dir()
                            else "not a DICOM file")
    if len(series) > 1:
        listed = "; ".join(_describe_series(uid, files) for uid, files in sorted(series.items()))
        raise MedlossyError(path, f"holds {len(series)} image series ({listed}); point to the "
                                  "folder of one series")
    return next(iter(series.values())), ignored


def _float_list(ds: pydicom.Dataset, keyword: str, count: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        array = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        array = np.empty(0)
    if array.shape != (count,) or not np.isfinite(array).all():
        raise MedlossyError(where, f"missing or malformed {keyword} ({value!r})")
    return array


def _rescale(ds: pydicom.Dataset, where: str) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise MedlossyError(where, "malformed RescaleSlope/RescaleIntercept") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise MedlossyError(where, "RescaleSlope/RescaleIntercept is not a finite number")
    return slope, intercept


def _frames_of_single(file: Path, ds: pydicom.Dataset) -> list[_Frame]:
    where = str(file)
    orientation = _float_list(ds, "ImageOrientationPatient", 6, where).reshape(2, 3)
    position = _float_list(ds, "ImagePositionPatient", 3, where)
    spacing = _float_list(ds, "PixelSpacing", 2, where)
    return [_Frame(file, 0, position, orientation, (spacing[0], spacing[1]),
                   *_rescale(ds, where))]


def _group(ds: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset | None:
    """A functional group item of ``frame``: per-frame first, then shared (PS3.3 C.7.6.16)."""
    for sequence in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(sequence)
        if not groups:
            continue
        item = groups[frame] if sequence.startswith("PerFrame") and frame < len(groups) \
            else groups[0]
        inner = item.get(keyword)
        if inner:
            return inner[0]
    return None


def _frames_of_enhanced(file: Path, ds: pydicom.Dataset) -> list[_Frame]:
    """Frames of an enhanced (functional groups) multi-frame object."""
    count = _int(ds, "NumberOfFrames", 1, file)
    frames = []
    for index in range(count):
        where = f"{file} frame {index + 1}"
        plane = _group(ds, index, "PlanePositionSequence")
        orient = _group(ds, index, "PlaneOrientationSequence")
        measures = _group(ds, index, "PixelMeasuresSequence")
        if plane is None or orient is None or measures is None:
            raise MedlossyError(where, "no plane position, orientation or pixel spacing in "
                                       "its functional groups")
        transform = _group(ds, index, "PixelValueTransformationSequence")
        spacing = _float_list(measures, "PixelSpacing", 2, where)
        frames.append(_Frame(
            file, index, _float_list(plane, "ImagePositionPatient", 3, where),
            _float_list(orient, "ImageOrientationPatient", 6, where).reshape(2, 3),
            (spacing[0], spacing[1]), *_rescale(transform if transform is not None else ds,
                                                where)))
    return frames


def _int(ds: pydicom.Dataset, keyword: str, default: int, where: str | Path) -> int:
    value = ds.get(keyword, default)
    try:
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        raise MedlossyError(where, f"malformed {keyword} ({value!r})") from None


def _frames_of(file: Path, ds: pydicom.Dataset) -> list[_Frame]:
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _frames_of_enhanced(file, ds)
    if _int(ds, "NumberOfFrames", 1, file) > 1:
        raise MedlossyError(file, "multi-frame object without functional groups (no "
                                  "position per frame); cannot place its slices")
    return _frames_of_single(file, ds)


def _frames(headers: list[tuple[Path, pydicom.Dataset]]) -> list[_Frame]:
    frames: list[_Frame] = []
    for file, ds in headers:
        try:
            frames.extend(_frames_of(file, ds))
        except _HEADER_ERRORS as error:  # a damaged value pydicom parses only on access
            raise MedlossyError(file, f"malformed DICOM header ({type(error).__name__}: "
                                      f"{error})") from None
    return frames


def _check_same_plane(path: Path, frames: list[_Frame]) -> np.ndarray:
    """All frames share orientation and pixel spacing; returns the slice normal."""
    first = frames[0]
    row, column = first.orientation
    normal = np.cross(row, column)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise MedlossyError(first.file, "ImageOrientationPatient is not two orthogonal unit "
                                        f"vectors ({first.orientation.ravel().tolist()})")
    for frame in frames[1:]:
        if not np.allclose(frame.orientation, first.orientation, atol=_ORIENTATION_TOLERANCE):
            raise MedlossyError(path, f"slices have different orientations ({first.name} and "
                                      f"{frame.name}); a volume needs parallel slices")
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise MedlossyError(path, f"slices have different pixel spacings ({first.name}: "
                                      f"{first.pixel_spacing}, {frame.name}: "
                                      f"{frame.pixel_spacing})")
    return normal


def _distance_list(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit
                                       else "")


def check_spacing(path: Path, frames: list[_Frame], offsets: np.ndarray,
                  allow_gaps: bool) -> str | None:
    """Refuse duplicate positions always, and gaps or uneven steps unless ``allow_gaps``.

    ``frames`` and ``offsets`` (mm along the normal) are sorted. Returns a note describing the
    irregular spacing that was allowed, or None when the spacing is regular.
    """
    steps = np.diff(offsets)
    tolerance = STEP_TOLERANCE_MM
    same = np.flatnonzero(np.abs(steps) <= tolerance)
    if same.size:
        first = int(same[0])
        group = [frames[first].name]
        index = first + 1
        while index < len(frames) and abs(offsets[index] - offsets[first]) <= tolerance:
            group.append(frames[index].name)
            index += 1
        files = {frames[k].file for k in range(first, index)}
        copies = " (identical files: copies of one slice)" if len(files) > 1 and len(
            {f.read_bytes() for f in files}) == 1 else ""
        raise MedlossyError(path, f"{len(group)} slices share the position "
                                  f"{offsets[first]:.3f} mm along the slice normal: "
                                  f"{_distance_list(group)}{copies}; remove the duplicates")
    if len(steps) < 2:
        return None
    typical = float(np.median(steps))
    tolerance = _step_tolerance(typical)
    off = np.flatnonzero(np.abs(steps - typical) > tolerance)
    if not off.size:
        return None
    problems = []
    for k in off[:3]:
        step = float(steps[k])
        missing = _missing(step, typical)
        what = f"{missing} slice(s) missing" if missing else "uneven step"
        problems.append(f"{what} between {frames[k].name} ({offsets[k]:.3f} mm) and "
                        f"{frames[k + 1].name} ({offsets[k + 1]:.3f} mm): {step:.3f} mm")
    intervals = _slice_intervals(offsets)
    mean = (offsets[-1] - offsets[0]) / intervals
    summary = (f"slice spacing is not regular (typical step {typical:.3f} mm, steps "
               f"{steps.min():.3f} to {steps.max():.3f} mm; "
               + "; ".join(problems) + (f"; {len(off) - 3} more" if len(off) > 3 else "")
               + f"; the affine uses the mean step {mean:.3f} mm along the slice normal, "
               f"slices up to {_largest_misplacement(offsets, mean):.3f} mm from it)")
    if not allow_gaps:
        raise MedlossyError(path, summary + "; pass --allow-gaps to accept it")
    return summary


def _step_tolerance(typical: float) -> float:
    return max(STEP_TOLERANCE_MM, STEP_TOLERANCE_FRACTION * typical)


def _missing(step: float, typical: float) -> int:
    """How many slices a step skips: the step is a whole multiple (2 or more) of the typical
    step, within tolerance per interval; 0 for a step that is merely uneven."""
    intervals = round(step / typical)
    if intervals >= 2 and abs(step - intervals * typical) <= _step_tolerance(typical) * intervals:
        return intervals - 1
    return 0


def _slice_intervals(offsets: np.ndarray) -> int:
    """Slice intervals between the first and last of sorted ``offsets``, counting the slices
    missing from gaps: the mean step is then the nominal one across a gap, and the mean of
    uneven steps elsewhere."""
    steps = np.diff(offsets)
    if steps.size < 2:
        return max(steps.size, 1)
    typical = float(np.median(steps))
    return int(steps.size + sum(_missing(float(step), typical) for step in steps))


def _largest_misplacement(offsets: np.ndarray, mean: float) -> float:
    """The largest distance (mm) between a slice and where a grid of ``mean`` steps from the
    first slice puts it, skipping the missing slices."""
    steps = np.diff(offsets)
    typical = float(np.median(steps))
    index = np.concatenate([[0], np.cumsum([1 + _missing(float(s), typical) for s in steps])])
    return float(np.abs(offsets - offsets[0] - index * mean).max())


def _slice_column(frames: list[_Frame], offsets: np.ndarray, normal: np.ndarray,
                  irregular: bool) -> np.ndarray:
    """The affine's slice column (LPS mm per slice index).

    Regular spacing: first to last position over the slice count, which keeps a gantry tilt's
    shear and places every slice where its header says. Irregular (--allow-gaps): along the
    slice normal with the mean step over the nominal intervals; a per-coordinate median of
    uneven steps pointed off the normal (0.27 degrees on a GE MR), which NIfTI's qform cannot
    hold, so NIfTI and NRRD readers disagreed about the same store.
    """
    if not irregular:
        return (frames[-1].position - frames[0].position) / (len(frames) - 1)
    return normal * (offsets[-1] - offsets[0]) / _slice_intervals(offsets)


def _decode_file(file: Path, count: int) -> np.ndarray:
    """Stored pixel values of every frame of ``file``: (frames, rows, columns)."""
    try:
        ds = _dcmread(file)
    except Exception as error:  # the header read before: the file changed or is truncated
        raise MedlossyError(file, f"cannot read DICOM file ({error})") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise MedlossyError(file, "has no pixel data")
    samples = _int(ds, "SamplesPerPixel", 1, file)
    if samples != 1:  # named by the count: PhotometricInterpretation may still say MONOCHROME2
        kind = "colour (3 samples per pixel)" if samples == 3 else f"{samples} samples per pixel"
        raise MedlossyError(file, f"{kind} DICOM is not supported; medlossy compresses "
                                  "greyscale CT/MR")
    try:
        with warnings.catch_warnings():
            # pydicom warns when it drops padding after the pixel data: nothing is lost, and
            # its multi-line warning would bury the one-line summary.
            warnings.filterwarnings("ignore", message=".*excess padding", category=UserWarning)
            pixels = ds.pixel_array
    except Exception as error:  # decoder plugins raise their own types
        raise MedlossyError(file, f"cannot decode DICOM pixel data{_bad_frame(ds, count)} "
                                  f"({type(error).__name__}: {error})") from None
    rows, columns = _int(ds, "Rows", 0, file), _int(ds, "Columns", 0, file)
    if pixels.size != count * rows * columns or pixels.dtype.kind not in "iuf":
        raise MedlossyError(file, f"pixel data ({pixels.shape} {pixels.dtype}) does not match "
                                  f"{count} frame(s) of Rows x Columns = {rows}x{columns}")
    return pixels.reshape((count, rows, columns))


def _bad_frame(ds: pydicom.Dataset, count: int) -> str:
    """" of frame N" naming the first frame of a multi-frame object that does not decode."""
    if count <= 1:
        return ""
    decoded = 0
    try:
        for _ in iter_pixels(ds):
            decoded += 1
    except Exception:  # the frame the whole decode stumbled on
        return f" of frame {decoded + 1} of {count}"
    return ""


def _smallest_dtype(low: float, high: float) -> np.dtype:
    """The smallest integer type that holds [low, high]; int16 before uint16, as dcm2niix and
    SimpleITK give CT (a signed type keeps HU arithmetic safe)."""
    for dtype in (np.uint8, np.int8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float64)


def _values(path: Path, frames: list[_Frame]) -> tuple[np.ndarray, dict]:
    """Decode and rescale every frame; (slices, rows, columns) in ``frames`` order, and the
    scaling to record when the values are the stored integers under one fractional rescale
    (``scl_slope``, ``scl_inter``, ``scl_dtype``, as for a scaled NIfTI), else {}."""
    by_file: dict[Path, list[int]] = defaultdict(list)
    for position, frame in enumerate(frames):
        by_file[frame.file].append(position)
    counts = {file: 1 + max(frames[p].index for p in positions)
              for file, positions in by_file.items()}
    stored: list[np.ndarray | None] = [None] * len(frames)
    shape = None
    for file, positions in by_file.items():
        decoded = _decode_file(file, counts[file])
        if shape is None:
            shape = decoded.shape[1:]
        if decoded.shape[1:] != shape:
            raise MedlossyError(path, f"slices of different sizes in one series ({file.name} is "
                                      f"{decoded.shape[1]}x{decoded.shape[2]}, others "
                                      f"{shape[0]}x{shape[1]})")
        for position in positions:
            stored[position] = decoded[frames[position].index]
    planes = [p for p in stored if p is not None]
    integral = all(f.slope.is_integer() and f.intercept.is_integer() for f in frames) and all(
        np.issubdtype(p.dtype, np.integer) for p in planes)
    if not integral:
        one_rescale = len({(f.slope, f.intercept) for f in frames}) == 1
        if one_rescale and all(np.issubdtype(p.dtype, np.integer) for p in planes):
            # float64, exactly integer * slope + intercept: lossless stores keep the stored
            # integers and the rescale (float32 could not hold these values exactly).
            slope, intercept = frames[0].slope, frames[0].intercept
            return (np.stack([p.astype(np.float64) * slope + intercept for p in planes]),
                    {"scl_slope": slope, "scl_inter": intercept,
                     "scl_dtype": np.result_type(*planes).str})
        # Computed in float64, then rounded once: in float32 a large intercept cancelling a
        # large product loses digits (6.37 read as 6.370026 under intercept -511.26).
        return np.stack([(p.astype(np.float64) * f.slope + f.intercept).astype(np.float32)
                         for p, f in zip(planes, frames, strict=True)]), {}
    low = min(float(p.min()) * f.slope + f.intercept if f.slope >= 0
              else float(p.max()) * f.slope + f.intercept for p, f in zip(planes, frames,
                                                                           strict=True))
    high = max(float(p.max()) * f.slope + f.intercept if f.slope >= 0
               else float(p.min()) * f.slope + f.intercept for p, f in zip(planes, frames,
                                                                            strict=True))
    dtype = _smallest_dtype(low, high)
    if dtype.itemsize > 4:  # beyond int32 is no CT/MR value: keep it exact enough as float64
        return np.stack([p.astype(np.float64) * f.slope + f.intercept
                         for p, f in zip(planes, frames, strict=True)]), {}
    out = np.empty((len(planes), *planes[0].shape), dtype=dtype)
    for k, (plane, frame) in enumerate(zip(planes, frames, strict=True)):
        if frame.slope == 1 and frame.intercept == 0:
            out[k] = plane
        else:
            out[k] = plane.astype(np.int64) * int(frame.slope) + int(frame.intercept)
    return out, {}


def read_dicom_series(path: Path, modality: str = "OTHER", *,
                      allow_gaps: bool = False) -> Volume:
    """Read one image series; see ``read_series_with_sources``."""
    return read_series_with_sources(path, modality, allow_gaps=allow_gaps)[0]


def read_series_with_sources(path: Path, modality: str = "OTHER", *, allow_gaps: bool = False
                             ) -> tuple[Volume, list[pydicom.Dataset] | None]:
    """Read one image series; slices sorted along their normal, values in real units (HU).

    ``path`` is a folder (searched recursively; non-image objects such as RTSTRUCT or SEG are
    left out and listed in ``volume.header["ignored"]``) or one multi-frame file. Gaps, uneven
    spacing and duplicate positions are refused; ``allow_gaps`` accepts gaps and uneven
    spacing, and the store then records every slice's true position.

    Also returns the header of each slice's source file in slice order (None for enhanced
    multi-frame sources, whose frames share one header), for writing derived series.
    """
    path = Path(path)
    if not path.exists():
        raise MedlossyError(path, "no such file or folder")
    headers, ignored = _scan(path)
    by_file = dict(headers)
    frames = _frames(headers)
    normal = _check_same_plane(path, frames)
    offsets = np.array([float(np.dot(normal, f.position)) for f in frames])
    order = np.argsort(offsets, kind="stable")
    frames, offsets = [frames[k] for k in order], offsets[order]
    irregular = check_spacing(path, frames, offsets, allow_gaps)
    slices, scaling = _values(path, frames)
    # DICOM rows run along the column direction: array axes (column, row, slice) give i, j, k.
    array = np.ascontiguousarray(np.moveaxis(slices, 0, -1).transpose(1, 0, 2))
    first = frames[0]
    row_step, column_step = first.pixel_spacing
    row_dir, column_dir = first.orientation
    if len(frames) > 1:
        slice_step = _slice_column(frames, offsets, normal, irregular is not None)
    else:
        try:
            thickness = float(headers[0][1].get("SliceThickness", 1) or 1)
        except (TypeError, ValueError):
            thickness = 1.0
        slice_step = normal * thickness
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * column_step
    affine_lps[:3, 1] = column_dir * row_step
    affine_lps[:3, 2] = slice_step
    affine_lps[:3, 3] = first.position
    series_modality = _modality(headers[0][1])
    if modality == "OTHER" and series_modality in ("CT", "MR"):
        modality = series_modality
    header: dict = {"format": "dicom", **scaling}
    if ignored:
        header["ignored"] = ignored
    if irregular:
        header["irregular_spacing"] = irregular
        header["slice_offsets_mm"] = [round(float(o - offsets[0]), 6) for o in offsets]
    header["dicom"] = shared_template(headers[0][1])
    enhanced = any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in headers)
    sources = None if enhanced else [by_file[f.file] for f in frames]
    volume = Volume(array, _LPS_TO_RAS @ affine_lps, modality=modality, header=header)
    return volume, sources
