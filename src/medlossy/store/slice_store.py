"""Write and read the store; the layout is documented in docs/store-format.md.

A store is a Zarr format 2 array in a directory: shape (slices, rows, columns), one chunk per
axial slice, and every chunk file is a plain codestream (``0.0.0`` ... ``N.0.0``). Stock
``zarr`` opens it once ``imagecodecs.numcodecs.register_codecs()`` has run, any JPEG 2000 tool
reads a chunk file directly, and a DICOM encapsulated frame can carry it unchanged. Format 2
rather than 3: zarr 3.x reads imagecodecs' numcodecs codecs only in format 2; format 3 would
need an adapter that other tools do not have.

The medlossy attributes (``.zattrs`` key ``medlossy``) carry geometry, intensity mapping, codec
parameters, the achieved ratio and errors, and a CRC-32 per chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import FixedScaleOffset
from numcodecs.abc import Codec as NumcodecsCodec

from medlossy.checksums import crc32
from medlossy.codecs import SliceCodec
from medlossy.codecs.intensity import CodeMapping
from medlossy.errors import MedlossyError

FORMAT_VERSION = 1
ATTRIBUTE_KEY = "medlossy"


@dataclass(frozen=True)
class StoreLayout:
    """Shape and encoding of the slice array, independent of its contents."""

    slices: int
    rows: int
    columns: int
    mapping: CodeMapping

    @property
    def array_dtype(self) -> str:
        # Exact mappings store the codes' own dtype; rescaled ones store the original dtype and
        # let zarr's FixedScaleOffset filter turn codes back into values.
        return self.mapping.code_dtype if self.mapping.exact and self.mapping.offset == 0 \
            else self.mapping.original_dtype

    def filters(self) -> list[NumcodecsCodec] | None:
        if self.array_dtype == self.mapping.code_dtype:
            return None
        return [FixedScaleOffset(offset=self.mapping.offset, scale=self.mapping.scale,
                                 dtype=self.mapping.original_dtype,
                                 astype=self.mapping.code_dtype)]


def chunk_key(index: int) -> str:
    return f"{index}.0.0"


def _compact_json(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=True).encode()


def render_metadata(layout: StoreLayout, codec: SliceCodec, attributes: dict[str, Any],
                    ) -> dict[str, bytes]:
    """The metadata files (name -> bytes) of a store, built by zarr itself."""
    array = zarr.create_array(
        store=zarr.storage.MemoryStore(),
        shape=(layout.slices, layout.rows, layout.columns),
        chunks=(1, layout.rows, layout.columns),
        dtype=layout.array_dtype,
        compressors=codec.store_codec(),
        filters=layout.filters(),
        fill_value=0,
        zarr_format=2,
    )
    zarray = array.metadata.to_dict()
    zarray.pop("attributes", None)
    return {".zarray": _compact_json(zarray),
            ".zattrs": _compact_json({ATTRIBUTE_KEY: attributes})}


def write_store(directory: Path, layout: StoreLayout, codec: SliceCodec,
                codestreams: Sequence[bytes], attributes: dict[str, Any]) -> int:
    """Write a store into an empty ``directory``; returns the bytes written."""
    directory.mkdir(parents=True, exist_ok=False)
    total = 0
    for name, content in render_metadata(layout, codec, attributes).items():
        (directory / name).write_bytes(content)
        total += len(content)
    for index, stream in enumerate(codestreams):
        (directory / chunk_key(index)).write_bytes(stream)
        total += len(stream)
    return total


def rewrite_attributes(directory: Path, attributes: dict[str, Any], size: int = 0) -> int:
    """Replace the medlossy attributes of a store that is still being written.

    The file is padded with trailing spaces (still valid JSON) up to ``size`` bytes; returns
    its length.
    """
    content = _compact_json({ATTRIBUTE_KEY: attributes})
    content += b" " * (size - len(content))
    (directory / ".zattrs").write_bytes(content)
    return len(content)


def stored_bytes(directory: Path) -> int:
    """Every byte of every file in the store: the footprint that the ratio counts."""
    return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())


class SliceStore:
    """Read access to a store written by medlossy, every chunk checked against its CRC-32."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise MedlossyError(self.path, "no such store (expected a directory)")
        try:
            self.zarray = json.loads((self.path / ".zarray").read_bytes())
            attributes = json.loads((self.path / ".zattrs").read_bytes())
        except FileNotFoundError as error:
            raise MedlossyError(self.path, f"not a medlossy store: {Path(error.filename).name} "
                                           "is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise MedlossyError(self.path, f"corrupt store metadata ({error})") from None
        self.attributes: dict[str, Any] = attributes.get(ATTRIBUTE_KEY, {})
        if self.attributes.get("format_version") != FORMAT_VERSION:
            raise MedlossyError(self.path, "not a medlossy store (no medlossy attributes of "
                                           f"format version {FORMAT_VERSION})")
        self.mapping = CodeMapping(**{key: self.attributes["intensity"][key] for key in
                                      ("original_dtype", "code_dtype", "offset", "scale")})

    @property
    def slices(self) -> int:
        return int(self.zarray["shape"][0])

    def codestream(self, index: int) -> bytes:
        """The raw codestream of slice ``index``, after its checksum is verified."""
        file = self.path / chunk_key(index)
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise MedlossyError(file, f"slice {index} is missing from the store") from None
        if crc32(data) != self.attributes["chunk_crc32"][index]:
            raise MedlossyError(file, f"slice {index} is corrupt (CRC-32 mismatch)")
        return data

    def decode_codes(self, index: int, codec: SliceCodec) -> np.ndarray:
        """Slice ``index`` as the 16-bit codes that were encoded."""
        data = self.codestream(index)
        try:
            codes = codec.decode(data)
        except Exception as error:  # decoder errors come in library-specific types
            raise MedlossyError(self.path / chunk_key(index),
                                f"slice {index} cannot be decoded ({error})") from None
        expected = (int(self.zarray["shape"][1]), int(self.zarray["shape"][2]))
        if codes.shape != expected:
            raise MedlossyError(self.path / chunk_key(index),
                                f"slice {index} decodes to {codes.shape}, expected {expected}")
        return codes

    def verify(self) -> list[int]:
        """Indices of slices whose file is missing or whose checksum does not match."""
        bad = []
        for index in range(self.slices):
            try:
                self.codestream(index)
            except MedlossyError:
                bad.append(index)
        return bad
