"""Checksums used to tell finished outputs from damaged ones."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path


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
