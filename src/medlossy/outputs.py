"""Outputs that cannot destroy: ``--force`` replaces only what medlossy itself wrote.

An existing output is recognised by medlossy's own metadata before anything is removed: a
store by the ``medlossy`` attributes in its ``.zattrs`` and by holding nothing but the files a
store is made of, a DICOM series folder by its file names and the "by medlossy" derivation
every slice carries, a decoded volume by the note ``decompress`` writes in its header (a
NIfTI comment extension, an NRRD ``medlossy`` field). Folders that commands write into (a
dataset sweep, a study, a reader study) must be new, empty, or already laid out by that
command. Anything else is refused with one line, so a mistyped path never costs a user their
files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import numpy as np

from medlossy.checksums import voxels_match_note
from medlossy.errors import MedlossyError
from medlossy.store.ngff import LEVEL0

_DICOM_NAME = re.compile(r"(IM|MF)\d{5}\.dcm")  # single-frame slices, multi-frame object
#: Every file of a store, relative to it: group and array metadata, chunks "z.y.x" of the
#: array "0" (see store/slice_store.py); version 1 stores kept the array at the root.
_STORE_FILE = re.compile(rf"\.zattrs|\.zgroup|({LEVEL0}/)?\.zarray|({LEVEL0}/)?\d+\.\d+\.\d+")
#: How ``decompress`` marks the volume files it writes (the start of their note).
DECOMPRESSED_NOTE = "written by medlossy decompress"
#: Temporaries of an interrupted atomic write (see atomic.py): never user files.
_TEMPORARY = re.compile(r"\..*\.(partial|old)-[0-9a-f]{8}.*")


def is_store(path: Path) -> bool:
    """A folder with medlossy store attributes."""
    try:
        attributes = json.loads((path / ".zattrs").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(attributes, dict) and isinstance(attributes.get("medlossy"), dict)


def foreign_store_files(path: Path) -> list[str]:
    """Files and folders inside a store that a store is not made of (a user's notes, say)."""
    foreign = []
    for root, folders, names in os.walk(path):
        relative = Path(root).relative_to(path)
        foreign += [entry for entry in ((relative / name).as_posix() for name in names)
                    if not _STORE_FILE.fullmatch(entry)]
        foreign += [f"{(relative / name).as_posix()}/" for name in folders
                    if (relative / name).as_posix() != LEVEL0]
        folders[:] = [name for name in folders if (relative / name).as_posix() == LEVEL0]
    return sorted(foreign)


def _medlossy_dicom(entry: Path) -> bool:
    """A file named like medlossy's DICOM output (``IM00001.dcm``, ``MF00001.dcm``) whose
    derivation or comments say medlossy wrote it."""
    import pydicom

    if not _DICOM_NAME.fullmatch(entry.name) or not entry.is_file():
        return False
    try:
        ds = pydicom.dcmread(entry, stop_before_pixels=True,
                             specific_tags=["DerivationDescription", "ImageComments"])
    except Exception:  # pydicom raises many types for files that are no DICOM
        return False
    # Single-frame slices carry the derivation; a multi-frame object's top level has it in
    # its comments (its derivation lives in functional groups).
    return any("by medlossy" in str(ds.get(keyword, ""))
               for keyword in ("DerivationDescription", "ImageComments"))


def _dicom_output_entries(path: Path) -> tuple[int, list[str]]:
    """How many of medlossy's DICOM files ``path`` holds, and its other entries (folders
    with a trailing slash)."""
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return 0, []
    others = [f"{e.name}/" if e.is_dir() else e.name
              for e in entries if not _medlossy_dicom(e)]
    return len(entries) - len(others), others


def is_dicom_output(path: Path) -> bool:
    """A folder of ``IM00001.dcm``... (or ``MF00001.dcm``) that medlossy wrote (their
    derivation or comments say so)."""
    ours, others = _dicom_output_entries(path)
    return ours > 0 and not others


def is_decompressed_volume(path: Path) -> bool:
    """A NIfTI or NRRD file that ``medlossy decompress`` wrote and nobody changed since: its
    header note says so, and the voxels are still those the note's digest was taken of (a
    mask saved with the decoded image's header inherits the note, not the voxels)."""
    if not path.is_file() or path.is_symlink():
        return False
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            from medlossy.io.nifti import notes

            ours = [note for note in notes(path) if note.startswith(DECOMPRESSED_NOTE)]
            proxy = nib.load(path).dataobj
            return bool(ours) and voxels_match_note(
                ours[-1], np.asanyarray(proxy.get_unscaled()), (proxy.slope, proxy.inter))
        if name.endswith(".nrrd"):
            import nrrd

            from medlossy.io.nrrd_format import NOTE_FIELD

            note = nrrd.read_header(str(path)).get(NOTE_FIELD, "")
            if not (isinstance(note, str) and note.startswith(DECOMPRESSED_NOTE)):
                return False
            return voxels_match_note(note, nrrd.read(str(path), index_order="F")[0])
    except Exception:  # nibabel and pynrrd raise many types for damaged files
        return False
    return False


def _and_more(names: list[str]) -> str:
    return f" and {len(names) - 1} more" if len(names) > 1 else ""


def medlossy_output(path: Path) -> bool:
    """A store or DICOM series folder written by medlossy (what compress may replace), or an
    empty folder (nothing to lose).

    A store or DICOM series folder that also holds other files is refused here, naming one:
    replacing it whole would delete them."""
    if not path.is_dir() or path.is_symlink():
        return False
    if not any(path.iterdir()):
        return True
    if is_store(path):
        foreign = foreign_store_files(path)
        if foreign:
            raise MedlossyError(path, f"is a medlossy store that also holds {foreign[0]!r}"
                                      f"{_and_more(foreign)}, which medlossy did not write: "
                                      "--force would delete it; move it out first")
        return True
    ours, others = _dicom_output_entries(path)
    if ours and others:
        raise MedlossyError(path, f"is a medlossy DICOM series folder that also holds "
                                  f"{others[0]!r}{_and_more(others)}, which medlossy did not "
                                  "write: --force would delete it; move it out first")
    return ours > 0 and not others


def check_replaceable(path: str | os.PathLike[str], force: bool,
                      recognise: Callable[[Path], bool], what: str) -> None:
    """Refuse to touch an existing ``path`` unless ``force`` and medlossy wrote it."""
    target = Path(path)
    if not (target.exists() or target.is_symlink()):
        return
    if not force:
        raise MedlossyError(path, "already exists (use --force to replace it)")
    if target.is_symlink() or not recognise(target):
        kind = "a folder" if target.is_dir() else "a file"
        raise MedlossyError(path, f"is {kind} that medlossy did not write (not {what}); "
                                  "--force replaces only medlossy's own outputs: remove or "
                                  "rename it yourself")


def check_not_input(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]],
                    ) -> None:
    """Refuse an output that is, holds, or lies inside one of the inputs."""
    final = Path(output).absolute().resolve()
    for source in inputs:
        resolved = Path(source).absolute().resolve()
        if resolved == final or final in resolved.parents:
            raise MedlossyError(output, f"would replace the input {source}")
        if resolved in final.parents:
            raise MedlossyError(output, f"lies inside the input {source}: write it elsewhere")


def check_own_folder(path: str | os.PathLike[str], layout: Iterable[str], what: str,
                     ) -> None:
    """A folder a command writes into must be new, empty, or hold its layout already."""
    folder = Path(path)
    if not (folder.exists() or folder.is_symlink()):
        return
    if not folder.is_dir():
        raise MedlossyError(path, f"is a file, not {what}")
    names = {entry.name for entry in folder.iterdir() if not _TEMPORARY.fullmatch(entry.name)}
    if names and not names & set(layout):
        raise MedlossyError(path, f"is a folder with other files, not {what}: choose a new or "
                                  "empty folder")


def check_only(path: str | os.PathLike[str], names: Collection[str] | re.Pattern[str],
               what: str) -> None:
    """A folder that a command replaces, or writes its whole layout into, may exist only if
    it holds nothing but entries that command writes (``names``, or names the pattern
    matches)."""
    folder = Path(path)
    if not (folder.exists() or folder.is_symlink()):
        return
    if folder.is_symlink() or not folder.is_dir():
        raise MedlossyError(path, f"is a file, not {what}")
    ours = names.fullmatch if isinstance(names, re.Pattern) else names.__contains__
    foreign = sorted(entry.name for entry in folder.iterdir()
                     if not _TEMPORARY.fullmatch(entry.name) and not ours(entry.name))
    if foreign:
        raise MedlossyError(path, f"holds {foreign[0]!r}{_and_more(foreign)}, which medlossy "
                                  f"did not write: not {what}; choose a new or empty folder")
