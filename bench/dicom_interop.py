"""What independent tools say about the DICOM medlossy writes (issue 14's closing note).

Inputs: the demo CT series (TotalSegmentator's anonymised example_ct_dicom, 512x512x20, the
only real DICOM here; no patient DICOM is available), a synthetic phantom CT (medlossy's
phantom, case 0, 96x96x64, first written as an uncompressed DICOM series by medlossy), and the
demo MR NIfTI (117x91x20) written as MR and with its modality unknown.
Outputs: one file per slice and --multiframe, JPEG 2000 and HTJ2K at x20, lossless, and a
store decoded to uncompressed DICOM.
Tools: dciodvfy (dicom3tools), GDCM (python-gdcm's decoder; gdcmconv --raw where it reads
the syntax), pydicom (pylibjpeg-openjpeg) against medlossy's decoder (imagecodecs), dcm2niix
(on a GDCM-decoded copy where it cannot decode the syntax itself).

Run: PYTHONPATH=src python bench/dicom_interop.py   -> bench/results/dicom_interop.md
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.encaps import generate_frames

from medlossy.codecs import get_codec
from medlossy.compression import Target, compress_volume
from medlossy.data.demo import demo_reference_files
from medlossy.data.phantom import PhantomConfig, generate_case
from medlossy.dicom_export import compress_to_dicom, store_to_dicom
from medlossy.io import read_volume, write_volume

RESULTS = Path(__file__).resolve().parent / "results"
_HTJ2K = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203")


def _dciodvfy(files: list[Path], work: Path) -> tuple[collections.Counter, bool]:
    """Error and warning lines (numbers and UIDs blanked so that repeats count once) over
    every file; HTJ2K objects are checked relabelled as JPEG 2000, since Debian's dciodvfy
    (2022) predates HTJ2K and encapsulation is the same."""
    lines: collections.Counter = collections.Counter()
    relabelled = False
    for file in files:
        ds = pydicom.dcmread(file, stop_before_pixels=False)
        if ds.file_meta.TransferSyntaxUID in _HTJ2K:
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
            file = work / f"relabelled_{file.name}"
            ds.save_as(file)
            relabelled = True
        run = subprocess.run(["dciodvfy", str(file)], capture_output=True, text=True)
        for line in (run.stdout + run.stderr).splitlines():
            if line.startswith(("Error", "Warning")):
                lines[re.sub(r"\[\d+\] = <[^>]*>", "[..]", line)] += 1
    return lines, relabelled


def _gdcm_frames(file: Path) -> np.ndarray:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(file))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {file}")
    image = reader.GetImage()
    ds = pydicom.dcmread(file, stop_before_pixels=True)
    dtype = np.int16 if ds.PixelRepresentation else np.uint16
    data = image.GetBuffer().encode("utf-8", errors="surrogateescape")
    return np.frombuffer(data, dtype=dtype).reshape(-1, ds.Rows, ds.Columns)


def _gdcm_raw_copy(file: Path, out: Path) -> None:
    """An uncompressed copy with GDCM's decoded pixels, for dcm2niix (Debian's build decodes
    only single-fragment JPEG 2000, and no HTJ2K); the header stays medlossy's."""
    ds = pydicom.dcmread(file)
    ds.PixelData = _gdcm_frames(file).astype("<i2" if ds.PixelRepresentation else "<u2")\
        .tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)


def _decoders_agree(files: list[Path]) -> str:
    """GDCM vs pydicom (both OpenJPEG underneath for these syntaxes, and what medlossy's
    DICOM reader uses), then medlossy's codec decoder (OpenJPEG for JPEG 2000, OpenJPH for
    HTJ2K), every frame of every file."""
    frames, differing, largest = 0, 0, 0
    for file in files:
        ds = pydicom.dcmread(file)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        theirs = ds.pixel_array.reshape(count, ds.Rows, ds.Columns)
        if not np.array_equal(_gdcm_frames(file), theirs):
            return f"GDCM differs from pydicom in {file.name}"
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            codec = get_codec("htj2k" if ds.file_meta.TransferSyntaxUID in _HTJ2K
                              else "jpeg2k")
            ours = np.stack([codec.decode(f) for f in generate_frames(
                ds.PixelData, number_of_frames=count)])
            difference = np.abs(ours.astype(np.int32) - theirs)
            differing += int(np.count_nonzero(difference))
            largest = max(largest, int(difference.max()))
        frames += count
    total = frames * theirs.shape[1] * theirs.shape[2]
    codec_note = " = medlossy codec" if differing == 0 else (
        f"; medlossy codec (OpenJPH) differs by <= {largest} in "
        f"{100 * differing / total:.2f} % of pixels")
    return f"GDCM = pydicom{codec_note} ({frames} frames)"


def _dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image | str:
    out.mkdir(parents=True)
    run = subprocess.run(["dcm2niix", "-z", "n", "-o", str(out), "-f", "v", str(folder)],
                         capture_output=True, text=True)
    found = sorted(out.glob("v*.nii"))
    if not found:
        error = [line for line in run.stdout.splitlines() if "rror" in line]
        return error[0] if error else "no output"
    return nib.load(found[0])


def _canonical(image: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Affine and values (scaling applied) in the closest canonical (RAS) voxel order."""
    image = nib.as_closest_canonical(image)
    return image.affine, np.asarray(image.get_fdata(dtype=np.float64))


def _geometry(files: list[Path], reference: tuple[np.ndarray, np.ndarray],
              work: Path) -> str:
    """dcm2niix's affine and voxel values for the written files against ``reference``
    (canonical RAS affine and values): a stack read in the wrong order fails the values
    even where the affine matches."""
    folder = work / "direct"
    folder.mkdir()
    for file in files:
        shutil.copy(file, folder / file.name)
    image = _dcm2niix(folder, work / "nii_direct")
    how = "direct"
    if isinstance(image, str):  # Debian's dcm2niix cannot decode this syntax/fragmenting
        raw = work / "raw"
        raw.mkdir()
        for file in files:
            _gdcm_raw_copy(file, raw / file.name)
        image = _dcm2niix(raw, work / "nii_raw")
        how = "after GDCM decoding"
        if isinstance(image, str):
            return f"dcm2niix failed: {image}"
    affine, values = _canonical(image)
    if values.shape != reference[1].shape:
        return f"dcm2niix gives {values.shape}, not {reference[1].shape} ({how})"
    return (f"{np.abs(affine - reference[0]).max():.1e} mm, values max abs difference "
            f"{np.abs(values - reference[1]).max():g} ({how})")


def _sources(work: Path) -> dict[str, tuple[Path, str]]:
    """name -> (source path, modality)."""
    reference = demo_reference_files()
    phantom = generate_case(0, PhantomConfig(shape=(96, 96, 64))).image
    write_volume(phantom, work / "phantom.nii.gz")
    compress_to_dicom(work / "phantom.nii.gz", work / "phantom_series", Target("lossless"),
                      workers=1)
    return {"demo CT series (DICOM, 512x512x20)": (reference / "example_ct_dicom", "OTHER"),
            "phantom CT series (DICOM, 96x96x64)": (work / "phantom_series", "OTHER"),
            "demo MR (NIfTI, --modality MR)": (reference / "example_mr_sm.nii.gz", "MR"),
            "demo MR (NIfTI, modality unknown)": (reference / "example_mr_sm.nii.gz",
                                                  "OTHER")}


def _reference(source: Path, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """Canonical affine and values of the source: what dcm2niix says about a source series
    itself, or the source NIfTI."""
    if source.is_dir():
        image = _dcm2niix(source, work / "nii_source")
        assert not isinstance(image, str), image
        return _canonical(image)
    return _canonical(nib.load(source))


def main() -> None:
    rows = []
    messages: dict[str, collections.Counter] = {}
    variants = [("J2K x20", "jpeg2k", Target("ratio", 20.0), False),
                ("J2K x20 --multiframe", "jpeg2k", Target("ratio", 20.0), True),
                ("HTJ2K x20", "htj2k", Target("ratio", 20.0), False),
                ("HTJ2K x20 --multiframe", "htj2k", Target("ratio", 20.0), True),
                ("J2K lossless", "jpeg2k", Target("lossless"), False),
                ("HTJ2K lossless", "htj2k", Target("lossless"), False)]
    with tempfile.TemporaryDirectory(prefix="dicom_interop_") as temporary:
        work = Path(temporary)
        for name, (source, modality) in _sources(work).items():
            reference = _reference(source, work / f"reference_{len(rows)}")
            for label, codec, target, multiframe in variants:
                case = work / f"case_{len(rows)}"
                case.mkdir()
                result = compress_to_dicom(source, case / "out", target, codec_name=codec,
                                           modality=modality, workers=2,
                                           multiframe=multiframe)
                row, lines = _row(name, label, result, case, reference)
                rows.append(row)
                messages[f"{name}, {label}"] = lines
            case = work / f"case_{len(rows)}"
            case.mkdir()
            attributes = compress_volume(read_volume(source, modality), case / "s.zarr",
                                         Target("ratio", 20.0), workers=2)
            result = store_to_dicom(case / "s.zarr", case / "out")
            result["max_abs_error"] = attributes["achieved"]["max_abs_error"]
            row, lines = _row(name, "store x20, decompress --format dicom", result, case,
                              reference)
            rows.append(row)
            messages[f"{name}, store decompressed"] = lines
    _write(rows, messages)


def _row(name: str, label: str, result: dict, case: Path,
         reference: tuple[np.ndarray, np.ndarray]) -> tuple[dict, collections.Counter]:
    files = sorted((case / "out").glob("*.dcm"))
    lines, relabelled = _dciodvfy(files, case)
    errors = sum(n for line, n in lines.items() if line.startswith("Error"))
    warnings = sum(n for line, n in lines.items() if line.startswith("Warning"))
    geometry = case / "geometry"
    geometry.mkdir()
    return {"input": name, "output": label, "class": result["sop_class"],
            "files": len(files), "ratio": result["ratio"],
            "dciodvfy": f"{errors} errors, {warnings} warnings"
                        + (" (HTJ2K relabelled)" if relabelled else ""),
            "decoders": _decoders_agree(files),
            "geometry": _geometry(files, reference, geometry)
                        + f"; medlossy reported max error {result['max_abs_error']:g}"}, lines


def _write(rows: list[dict], messages: dict[str, collections.Counter]) -> None:
    tools = {tool: subprocess.run(command, capture_output=True, text=True).stdout.strip()
             .splitlines()[0] if shutil.which(tool) else "missing"
             for tool, command in (("dcm2niix", ["dcm2niix", "--version"]),
                                   ("gdcmconv", ["gdcmconv", "--version"]))}
    import gdcm

    lines = ["# DICOM interoperability: what independent tools say",
             "", f"Command: `PYTHONPATH=src python bench/dicom_interop.py`; Debian "
             f"dicom3tools dciodvfy, dcm2niix ({tools['dcm2niix']}), GDCM (gdcmconv "
             f"{tools['gdcmconv'].split(' ')[2] if tools['gdcmconv'] != 'missing' else '-'}, "
             f"python-gdcm {gdcm.Version.GetVersion()}), pydicom {pydicom.__version__}.",
             "Geometry: dcm2niix's affine and voxel values, both in canonical RAS voxel "
             "order, against dcm2niix's for the source series or the source NIfTI's; max "
             "|difference| (values: 0 when lossless, the codec's error when lossy).", "",
             "| input | output | SOP class | files | ratio | dciodvfy | decoded pixels "
             "| dcm2niix affine and values |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['input']} | {row['output']} | {row['class']} | {row['files']} "
                     f"| {row['ratio']:.2f} | {row['dciodvfy']} | {row['decoders']} | "
                     f"{row['geometry']} |")
    lines += ["", "## dciodvfy messages (distinct lines, numbers blanked; count over files)",
              ""]
    for key, counter in messages.items():
        if counter:
            lines.append(f"- {key}:")
            lines += [f"  - {n} x `{line}`" for line, n in sorted(counter.items())]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dicom_interop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
