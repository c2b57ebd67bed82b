"""Checksums used to tell finished outputs from damaged ones."""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from pathlib import Path

import numpy as np

#: The digest at the end of a decoded file's note. Notes of older versions ("; voxels sha256",
#: no geometry) do not match it: such files count as not medlossy's (refused, the safe side).
_VOXELS = re.compile(r"; voxels and geometry sha256 ([0-9a-f]{64})$")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def crc32(data: bytes) -> int:
    """Unsigned CRC-32 (zlib), as stored per chunk in a store."""
    return zlib.crc32(data) & 0xFFFFFFFF


def voxel_digest(array: np.ndarray, geometry: dict,
                 scaling: tuple[float, float] = (1.0, 0.0)) -> str:
    """Hex SHA-256 of an array's values (little-endian, C order), its dtype and shape, the
    file's ``geometry`` (header fields as canonical JSON: an edited affine is another
    file), and of the scaling (slope, intercept) that turns them into voxel values, where
    not 1, 0."""
    little = np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<"))
    prefix = f"{little.dtype.str} {little.shape}"
    slope, intercept = (float(value) for value in scaling)
    if (slope, intercept) != (1.0, 0.0):
        prefix += f" scaled {slope!r} {intercept!r}"
    prefix += " geometry " + json.dumps(geometry, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(prefix.encode())
    digest.update(little.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def with_voxel_digest(note: str, array: np.ndarray, geometry: dict,
                      scaling: tuple[float, float] = (1.0, 0.0)) -> str:
    """``note`` ending in the digest of the voxels and geometry it is written with (stored
    values, the scaling they are written under, the header's geometry fields)."""
    return f"{note}; voxels and geometry sha256 {voxel_digest(array, geometry, scaling)}"


def voxels_match_note(note: str, array: np.ndarray, geometry: dict,
                      scaling: tuple[float, float] = (1.0, 0.0)) -> bool:
    """Whether ``array`` under ``scaling``, placed by ``geometry``, is still what ``note``
    was written with (a file saved from another with its header copies the note, not the
    voxels; an edited scl_slope changes every voxel but no stored value; an edited affine
    puts every voxel elsewhere)."""
    match = _VOXELS.search(note)
    return match is not None and match.group(1) == voxel_digest(array, geometry, scaling)
