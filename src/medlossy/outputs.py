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
#: A chunk index as zarr writes it in a key (no sign, no leading zeros).
_INDEX = re.compile(r"0|[1-9]\d*")
#: How ``decompress`` marks the volume files it writes (the start of their note).
DECOMPRESSED_NOTE = "written by medlossy decompress"
#: Temporaries of an interrupted atomic write (see atomic.py): never user files.
_TEMPORARY = re.compile(r"\..*\.(partial|old)-[0-9a-f]{8}.*")


def is_store(path: Path) -> bool:
    """A folder with medlossy store attributes (``.zattrs``; ``zarr.json`` in format 3)."""
    try:
        if (path / "zarr.json").is_file():
            attributes = json.loads((path / "zarr.json").read_bytes()).get("attributes")
        else:
            attributes = json.loads((path / ".zattrs").read_bytes())
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(attributes, dict) and isinstance(attributes.get("medlossy"), dict)


class _StoreFiles:
    """The files a store is made of: group and array metadata and the chunk keys of the
    array's own chunk grid (from its ``.zarray``: shape, chunks, dimension separator; in
    Zarr format 3 from ``zarr.json``: the shard files ``c/z/y/x``). The array is at ``0/``
    (version 1 stores kept it at the root; see store/slice_store.py)."""

    def __init__(self, path: Path) -> None:
        #: Zarr format 3: chunk keys start with this folder.
        self.keys = ""
        if (path / "zarr.json").is_file():
            self.array, self.keys = LEVEL0, "c"
            self.metadata = {"zarr.json", f"{LEVEL0}/zarr.json"}
            self.grid, self.separator = self._grid_v3(path / LEVEL0 / "zarr.json")
            return
        self.array = "" if (path / ".zarray").is_file() else LEVEL0
        prefix = f"{self.array}/" if self.array else ""
        self.metadata = {".zattrs", ".zgroup", f"{prefix}.zarray"}
        self.grid, self.separator = self._grid(path / self.array / ".zarray")

    @staticmethod
    def _grid_v3(metadata: Path) -> tuple[list[int], str]:
        """Shards along each axis of a format 3 array; no shards when unreadable."""
        try:
            document = json.loads(metadata.read_bytes())
            shards = document["chunk_grid"]["configuration"]["chunk_shape"]
            return _StoreFiles._grid_of(document["shape"], shards), "/"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return [], "/"

    @staticmethod
    def _grid_of(shape: list[int], chunks: list[int]) -> list[int]:
        if not (len(shape) == len(chunks) and all(type(n) is int and n >= 0 for n in shape)
                and all(type(c) is int and c > 0 for c in chunks)):
            return []
        return [-(-n // c) for n, c in zip(shape, chunks, strict=True)]

    @staticmethod
    def _grid(zarray: Path) -> tuple[list[int], str]:
        """Chunks along each axis and the key separator; no chunks when unreadable."""
        try:
            document = json.loads(zarray.read_bytes())
            separator = document.get("dimension_separator") or "."
            grid = _StoreFiles._grid_of(document["shape"], document["chunks"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return [], "."
        return (grid, separator) if separator in (".", "/") else ([], ".")

    def _indices(self, entry: str) -> list[str] | None:
        """The chunk key parts of ``entry`` (relative to the store), None when it is not
        under the array."""
        if self.array:
            if not entry.startswith(f"{self.array}/"):
                return None
            entry = entry[len(self.array) + 1:]
        if self.keys:
            if not entry.startswith(f"{self.keys}/"):
                return None
            entry = entry[len(self.keys) + 1:]
        return entry.split(self.separator)

    def _in_grid(self, parts: list[str]) -> bool:
        return all(_INDEX.fullmatch(part) and int(part) < count
                   for part, count in zip(parts, self.grid, strict=False))

    def is_file(self, entry: str) -> bool:
        if entry in self.metadata:
            return True
        parts = self._indices(entry)
        return parts is not None and len(parts) == len(self.grid) > 0 and self._in_grid(parts)

    def is_folder(self, entry: str) -> bool:
        """The array's folder, or one level of a nested key ("/" separator: ``0/z/y``)."""
        if entry == self.array or (self.keys and entry == f"{self.array}/{self.keys}"):
            return True
        parts = self._indices(entry)
        return (self.separator == "/" and parts is not None
                and 0 < len(parts) < len(self.grid) and self._in_grid(parts))


def foreign_store_files(path: Path) -> list[str]:
    """Files and folders inside a store that a store is not made of (a user's notes, a file
    named like a chunk outside the store's chunk grid, say)."""
    ours = _StoreFiles(path)
    foreign = []
    for root, folders, names in os.walk(path):
        relative = Path(root).relative_to(path)
        foreign += [entry for entry in ((relative / name).as_posix() for name in names)
                    if not ours.is_file(entry)]
        foreign += [f"{(relative / name).as_posix()}/" for name in folders
                    if not ours.is_folder((relative / name).as_posix())]
        folders[:] = [name for name in folders if ours.is_folder((relative / name).as_posix())]
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
    header note says so, and the voxels and geometry are still those the note's digest was
    taken of (a mask saved with the decoded image's header inherits the note, not the
    voxels; an edited affine keeps the voxels, not the geometry)."""
    if not path.is_file() or path.is_symlink():
        return False
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            from medlossy.io.nifti import geometry_fields, notes

            ours = [note for note in notes(path) if note.startswith(DECOMPRESSED_NOTE)]
            image = nib.load(path)
            proxy = image.dataobj
            return bool(ours) and voxels_match_note(
                ours[-1], np.asanyarray(proxy.get_unscaled()), geometry_fields(image.header),
                (proxy.slope, proxy.inter))
        if name.endswith(".nrrd"):
            import nrrd

            from medlossy.io.nrrd_format import NOTE_FIELD, geometry_fields

            note = nrrd.read_header(str(path)).get(NOTE_FIELD, "")
            if not (isinstance(note, str) and note.startswith(DECOMPRESSED_NOTE)):
                return False
            values, header = nrrd.read(str(path), index_order="F")
            return voxels_match_note(note, values, geometry_fields(header))
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
