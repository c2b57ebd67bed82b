"""NRRD through pynrrd; geometry converted between NRRD's LPS/RAS spaces and the RAS affine."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np

from medlossy.checksums import with_voxel_digest
from medlossy.errors import MedlossyError
from medlossy.volume import Volume

SUFFIXES = (".nrrd", ".nhdr")
NOTE_FIELD = "medlossy"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_SPACE_TO_RAS = {
    "left-posterior-superior": _LPS_TO_RAS,
    "LPS": _LPS_TO_RAS,
    "right-anterior-superior": np.eye(3),
    "RAS": np.eye(3),
}


def read_nrrd(path: Path, modality: str = "OTHER") -> Volume:
    """Read a 3D NRRD file with a known world space (LPS or RAS)."""
    if not path.exists():
        raise MedlossyError(path, "no such file")
    try:
        with path.open("rb") as handle:
            header = nrrd.read_header(handle)
            _check_data_file(path, header)
            array = nrrd.read_data(header, handle, str(path), index_order="F")
    except MedlossyError:
        raise
    except Exception as error:  # pynrrd raises NRRDError, ValueError, OSError, ...
        raise MedlossyError(path, f"not a readable NRRD file ({error})") from None
    to_ras = _SPACE_TO_RAS.get(header.get("space", "left-posterior-superior"))
    if to_ras is None:
        raise MedlossyError(path, f"unsupported NRRD space {header.get('space')!r}")
    affine = np.eye(4)
    if "space directions" in header:
        directions = np.asarray(header["space directions"], dtype=float)
        affine[:3, :3] = to_ras @ directions.T
    if "space origin" in header:
        affine[:3, 3] = to_ras @ np.asarray(header["space origin"], dtype=float)
    return Volume(array, affine, modality=modality, header={"format": "nrrd"})


def geometry_fields(header: dict) -> dict:
    """The fields that place the voxels in the world, as plain numbers (what a note's digest
    covers; pynrrd writes floats with 17 digits, so they read back equal)."""
    fields = {"space": header.get("space")}
    for key in ("space directions", "space origin"):
        value = header.get(key)
        fields[key] = None if value is None else np.asarray(value, dtype=float).tolist()
    return fields


def _check_data_file(path: Path, header: dict) -> None:
    """A detached header may name only one data file in its own folder: a header is input
    that anyone can craft, and ``data file: ../../etc/passwd`` would otherwise be read and
    stored as if it were the scan."""
    name = header.get("data file", header.get("datafile"))
    if name is None:
        return
    name = str(name).strip()
    if name.startswith("LIST") or len(name.split()) > 1:
        raise MedlossyError(path, f"data file {name!r}: lists and patterns of data files are "
                                  "not supported (name one data file beside the header)")
    folder = path.absolute().parent
    data = (folder / name).resolve()
    if not data.is_relative_to(folder.resolve()):
        raise MedlossyError(path, f"data file {name!r} ({data}) is outside the header's folder "
                                  f"{folder}; refused (put the header beside its data file)")


def write_nrrd(volume: Volume, path: Path, *, note: str | None = None) -> None:
    """Write ``volume`` as NRRD in LPS space, gzip-encoded; ``note`` goes in the key/value
    field ``medlossy`` (what wrote the file), ending in the digest of the voxels and
    geometry written."""
    header = {
        "space": "left-posterior-superior",
        "space directions": (_LPS_TO_RAS @ volume.affine[:3, :3]).T,
        "space origin": _LPS_TO_RAS @ volume.affine[:3, 3],
        "encoding": "gzip",
    }
    if note is not None:
        header[NOTE_FIELD] = with_voxel_digest(note, np.asarray(volume.array),
                                               geometry_fields(header))
    nrrd.write(str(path), volume.array, header, index_order="F")
    _drop_write_time(path)


def _drop_write_time(path: Path) -> None:
    """Remove the "# on <date time>(GMT)." comment pynrrd always writes as the header's third
    line (it has no option to leave it out), so that decoding a store twice gives the same
    bytes; the header has no offsets, so dropping a comment line moves nothing else."""
    blob = Path(path).read_bytes()
    magic, generated, written, rest = blob.split(b"\n", 3)
    if written.startswith(b"# on ") and written.endswith(b"(GMT)."):
        Path(path).write_bytes(b"\n".join((magic, generated, rest)))
