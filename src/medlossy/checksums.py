"""Checksums used to tell finished outputs from damaged ones."""

from __future__ import annotations

import hashlib
import re
import zlib
from pathlib import Path

import numpy as np

_VOXELS = re.compile(r"; voxels sha256 ([0-9a-f]{64})$")


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


def voxel_digest(array: np.ndarray) -> str:
    """Hex SHA-256 of an array's values (little-endian, C order), its dtype and shape."""
    little = np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<"))
    digest = hashlib.sha256(f"{little.dtype.str} {little.shape}".encode())
    digest.update(little.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def with_voxel_digest(note: str, array: np.ndarray) -> str:
    """``note`` ending in the digest of the voxels it is written with."""
    return f"{note}; voxels sha256 {voxel_digest(array)}"


def voxels_match_note(note: str, array: np.ndarray) -> bool:
    """Whether ``array`` still holds the voxels ``note`` was written with (a file saved
    from another with its header copies the note, not the voxels)."""
    match = _VOXELS.search(note)
    return match is not None and match.group(1) == voxel_digest(array)
