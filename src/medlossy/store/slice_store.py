"""Write and read the store; the layout is documented in docs/store-format.md.

A store (format version 2) is an OME-Zarr (NGFF 0.4) image in Zarr format 2: a root group
whose ``.zattrs`` hold the NGFF ``multiscales`` and, beside them, the medlossy attributes; the
full-resolution array at ``0/``: shape (slices, rows, columns), one chunk per axial slice (slice
codecs) or per block of ``depth`` slices (3D codecs; the last block is padded by repeating its
last slice, as zarr's edge chunks are full size) or, with tiles (``compress --tile``), per
tile of a slice, and every chunk file is a plain codestream (``0/0.0.0`` ... ``0/N.0.0``;
tiled: ``0/z.y.x``). Stock ``zarr`` opens it
once ``imagecodecs.numcodecs.register_codecs()`` has run, ome-zarr-py recognises it, any
JPEG 2000 tool reads a chunk file directly, and a DICOM encapsulated frame can carry it
unchanged. Format 2 is the default: zarr 3.x reads imagecodecs' numcodecs codecs in format 2
with imagecodecs alone, while format 3 needs medlossy's adapter (docs/store-format.md).

With ``--zarr-version 3`` the same array is written in Zarr format 3 as an OME-Zarr 0.5 image:
``zarr.json`` (group, NGFF ``ome`` attribute beside the medlossy attributes) and
``0/zarr.json`` (array), the chunks kept as inner chunks of the sharding codec
(``sharding_indexed``): one shard file per volume or per ``shard_slices`` slices
(``0/c/k/0/0``), each the chunks' codestreams back to back and an index of (offset, length)
per inner chunk with its CRC-32C at the end, so a reader fetches the index, then only the
chunks it needs. Stock zarr reads the image codecs through ``medlossy.codecs.zarr3``.

Version 1 stores (the bare array at the root, medlossy attributes in its ``.zattrs``) are
still read: ``SliceStore`` finds the array and the attributes in either layout.

The medlossy attributes (key ``medlossy``) carry geometry, intensity mapping, codec
parameters, the tile size of a tiled store, the achieved ratio and errors, a CRC-32 per
chunk (chunks numbered tile by tile within a slice, slice by slice), and ``metadata_sha256``:
a digest of each part of the metadata that decides the decoded values (``SEALED`` and the
array's ``.zarray``), so that an edited offset, dtype, axis or shape is refused instead of
decoded into other values. Stores written before it have none and are read as unprotected.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import FixedScaleOffset
from numcodecs.abc import Codec as NumcodecsCodec
from zarr.codecs import BloscCodec, BytesCodec
from zarr.codecs.numcodecs import FixedScaleOffset as FixedScaleOffsetV3

from medlossy.checksums import crc32
from medlossy.codecs import SliceCodec, codec_names
from medlossy.codecs.intensity import CodeMapping
from medlossy.codecs.tiles import TileGrid
from medlossy.codecs.zarr3 import array_bytes_codec
from medlossy.errors import MedlossyError
from medlossy.store.ngff import AXIS_NAMES, LEVEL0, multiscales, ome_attributes
from medlossy.store.remote import StoreFiles, Unreachable

FORMAT_VERSION = 3
#: Versions this reader opens (1: bare array at the root, before OME-Zarr; 2: before the
#: metadata was sealed).
READABLE_VERSIONS = (1, 2, 3)
#: The first version whose stores always carry ``metadata_sha256``: one without it was
#: edited (its seal removed), not written before seals existed.
SEALED_SINCE = 3
ATTRIBUTE_KEY = "medlossy"
#: The medlossy attribute holding the digests of the metadata that decides decoded values.
METADATA_KEY = "metadata_sha256"
#: The medlossy attributes that decide what a store decodes to (values, dtype, geometry, the
#: header a decoded file is written with, the chunks' checksums); ``target``, ``achieved``,
#: ``software`` and ``created`` describe the store and are not sealed.
SEALED = ("format_version", "modality", "geometry", "intensity", "codec", "tile", "source",
          "chunk_crc32")
#: The section that seals the array metadata (dtype, shape, chunks, compressor, filters).
ARRAY_SECTION = ".zarray"
#: The same in Zarr format 3 stores (the file ``0/zarr.json``, its attributes left out).
ARRAY_SECTION_V3 = "zarr.json"
#: Zarr formats a store can be written in.
ZARR_FORMATS = (2, 3)
#: The format ``compress`` writes unless told (docs/store-format.md says why).
DEFAULT_ZARR_FORMAT = 2
#: Bytes of one inner chunk's entry in a shard index (offset and length, two uint64).
INDEX_ENTRY = 16
#: Bytes of the CRC-32C that ends a shard index.
INDEX_CHECKSUM = 4
#: Offset and length of an inner chunk that a shard does not hold.
EMPTY = 2**64 - 1
_BLOSC_SHUFFLE = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}


def shard_depth(slices: int, depth: int, wanted: int | None) -> int:
    """Slices per shard when ``wanted`` (None: all) are asked for: whole chunks of ``depth``
    slices, at most the volume's (its last block padded)."""
    whole = -(-slices // depth) * depth
    return min(whole, -(-(wanted or whole) // depth) * depth)


@dataclass(frozen=True)
class StoreLayout:
    """Shape and encoding of the slice array, independent of its contents."""

    slices: int
    rows: int
    columns: int
    mapping: CodeMapping
    #: Slices per chunk (1: one codestream per slice; more: 3D codecs' blocks).
    depth: int = 1
    #: Side of the square tiles a slice is cut into (None: one codestream per slice).
    tile: int | None = None
    #: Zarr format: 2 (one file per chunk) or 3 (chunks inside shard files).
    zarr_format: int = 2
    #: Slices per shard file in format 3, rounded up to whole chunks (None: one shard).
    shard_slices: int | None = None

    def __post_init__(self) -> None:
        if self.zarr_format not in ZARR_FORMATS:
            raise ValueError(f"Zarr format must be 2 or 3, got {self.zarr_format!r}")
        if self.shard_slices is not None and self.shard_slices < 1:
            raise ValueError(f"slices per shard must be positive, got {self.shard_slices}")

    @property
    def grid(self) -> TileGrid:
        return TileGrid.of(self.rows, self.columns, self.tile)

    @property
    def chunks(self) -> int:
        return -(-self.slices // self.depth) * self.grid.per_slice

    @property
    def chunk_shape(self) -> tuple[int, int, int]:
        return (self.depth, self.grid.tile_rows, self.grid.tile_columns)

    @property
    def shard_depth(self) -> int:
        """Slices per shard (format 3)."""
        return shard_depth(self.slices, self.depth, self.shard_slices)

    @property
    def shard_shape(self) -> tuple[int, int, int]:
        grid = self.grid
        down, across = grid.shape
        return (self.shard_depth, down * grid.tile_rows, across * grid.tile_columns)

    @property
    def chunks_per_shard(self) -> int:
        return self.shard_depth // self.depth * self.grid.per_slice

    @property
    def index_bytes(self) -> int:
        """Bytes of the shard indexes: none in format 2; in format 3 an entry per inner chunk
        of every shard (a last, partial shard's too) and a CRC-32C each."""
        if self.zarr_format == 2:
            return 0
        shards = -(-self.slices // self.shard_depth)
        return shards * (self.chunks_per_shard * INDEX_ENTRY + INDEX_CHECKSUM)

    @property
    def array_dtype(self) -> str:
        # Codes that are the values store the codes' own dtype; rescaled ones store the
        # original dtype and let zarr's FixedScaleOffset filter turn codes back into values.
        return self.mapping.original_dtype if self.mapping.rescaled \
            else self.mapping.code_dtype

    def filters(self) -> list[NumcodecsCodec] | None:
        if self.array_dtype == self.mapping.code_dtype:
            return None
        return [FixedScaleOffset(offset=self.mapping.linear_offset, scale=self.mapping.scale,
                                 dtype=self.mapping.original_dtype,
                                 astype=self.mapping.code_dtype)]


def chunk_key(index: int, grid: TileGrid | None = None) -> str:
    """The file name of chunk ``index`` (tile by tile within a slice, slice by slice)."""
    if grid is None or not grid.tiled:
        return f"{index}.0.0"
    plane, tile = divmod(index, grid.per_slice)
    down, across = grid.position(tile)
    return f"{plane}.{down}.{across}"


def _compact_json(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=True).encode()


def _section_digest(value: Any) -> str:
    """First 16 hex digits of the SHA-256 of ``value`` as canonical JSON (sorted keys, no
    spaces): 64 bits, against edits and damage rather than forgery (anyone can recompute)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def metadata_digests(attributes: dict[str, Any], zarray: Any,
                     array_section: str = ARRAY_SECTION) -> dict[str, str]:
    """The digest of each sealed section (an absent attribute is sealed as null)."""
    sections = {name: attributes.get(name) for name in SEALED}
    sections[array_section] = zarray
    return {name: _section_digest(value) for name, value in sections.items()}


def unmatched_sections(attributes: dict[str, Any], zarray: Any,
                       array_section: str = ARRAY_SECTION) -> list[str] | None:
    """The sealed sections that no longer match their recorded digest; None for a store
    written before metadata was sealed (version 1 or 2 without ``metadata_sha256``:
    unprotected)."""
    recorded = attributes.get(METADATA_KEY)
    if recorded is None:
        return [METADATA_KEY] if attributes.get("format_version", 0) >= SEALED_SINCE else None
    if not isinstance(recorded, dict):
        return [METADATA_KEY]
    expected = metadata_digests(attributes, zarray, array_section)
    return sorted(name for name in expected.keys() | recorded.keys()
                  if recorded.get(name) != expected.get(name))


def root_attributes(attributes: dict[str, Any], zarray: dict[str, Any],
                    zarr_format: int = 2) -> bytes:
    """The root group's attributes, sealed against ``zarray`` (the array metadata as
    written): format 2, the ``.zattrs`` file with NGFF 0.4 multiscales beside the medlossy
    attributes; format 3, the group's ``zarr.json`` with NGFF 0.5 (``ome``) beside them."""
    name = attributes.get("source", {}).get("file", "")
    if zarr_format == 2:
        sealed = {**attributes, METADATA_KEY: metadata_digests(attributes, zarray)}
        return _compact_json({"multiscales": multiscales(attributes["geometry"], name),
                              ATTRIBUTE_KEY: sealed})
    sealed = {**attributes, METADATA_KEY: metadata_digests(attributes, zarray,
                                                            ARRAY_SECTION_V3)}
    return _compact_json({"zarr_format": 3, "node_type": "group", "attributes": {
        "ome": ome_attributes(attributes["geometry"], name), ATTRIBUTE_KEY: sealed}})


def _v3_codecs(layout: StoreLayout, codec: SliceCodec) -> dict[str, Any]:
    """``create_array``'s filters, serializer and compressors for a format 3 store: the same
    chunk bytes as format 2 (a codestream, or a Blosc frame of the chunk's values)."""
    numcodec = codec.store_codec(layout.chunk_shape, layout.mapping.code_dtype)
    filters = [FixedScaleOffsetV3(**{k: v for k, v in f.get_config().items() if k != "id"})
               for f in layout.filters() or []]
    config = numcodec.get_config()
    if config["id"] != "blosc":
        return {"filters": filters, "serializer": array_bytes_codec(numcodec),
                "compressors": None}
    blosc = BloscCodec(cname=config["cname"], clevel=config["clevel"],
                       shuffle=_BLOSC_SHUFFLE[config["shuffle"]],
                       typesize=np.dtype(layout.array_dtype).itemsize,
                       blocksize=config.get("blocksize", 0))
    return {"filters": filters, "serializer": BytesCodec(endian="little"),
            "compressors": [blosc]}


def _render_v3(layout: StoreLayout, codec: SliceCodec, attributes: dict[str, Any],
               ) -> dict[str, bytes]:
    with warnings.catch_warnings():  # "numcodecs codecs are not in the Zarr 3 spec": known
        warnings.simplefilter("ignore")
        array = zarr.create_array(
            store=zarr.storage.MemoryStore(),
            shape=(layout.slices, layout.rows, layout.columns),
            chunks=layout.chunk_shape,
            shards=layout.shard_shape,
            dtype=layout.array_dtype,
            fill_value=0,
            zarr_format=3,
            dimension_names=AXIS_NAMES,
            **_v3_codecs(layout, codec),
        )
    document = array.metadata.to_dict()
    document.pop("attributes", None)
    rendered = _compact_json(document)
    return {"zarr.json": root_attributes(attributes, json.loads(rendered), 3),
            f"{LEVEL0}/zarr.json": rendered}


def render_metadata(layout: StoreLayout, codec: SliceCodec, attributes: dict[str, Any],
                    ) -> dict[str, bytes]:
    """The metadata files (relative path -> bytes) of a store, built by zarr itself."""
    if layout.zarr_format == 3:
        return _render_v3(layout, codec, attributes)
    array = zarr.create_array(
        store=zarr.storage.MemoryStore(),
        shape=(layout.slices, layout.rows, layout.columns),
        chunks=layout.chunk_shape,
        dtype=layout.array_dtype,
        compressors=codec.store_codec(layout.chunk_shape, layout.mapping.code_dtype),
        filters=layout.filters(),
        fill_value=0,
        zarr_format=2,
    )
    zarray = array.metadata.to_dict()
    zarray.pop("attributes", None)
    rendered = _compact_json(zarray)
    # Sealed as readers parse it back (tuples become lists)
    return {".zgroup": _compact_json({"zarr_format": 2}),
            ".zattrs": root_attributes(attributes, json.loads(rendered)),
            f"{LEVEL0}/.zarray": rendered}


def shard_key(shard: int) -> str:
    """The file (under the array) of shard ``shard``: zarr's default key encoding."""
    return f"c/{shard}/0/0"


def shard_file(codestreams: Sequence[bytes]) -> bytes:
    """A shard (``sharding_indexed``, index at the end): the inner chunks back to back, then
    (offset, length) of each as little-endian uint64 (``EMPTY`` for chunks past the array)
    and the index's CRC-32C."""
    index = np.full((len(codestreams), 2), EMPTY, dtype="<u8")
    offset = 0
    for position, stream in enumerate(codestreams):
        if stream is not None:
            index[position] = offset, len(stream)
            offset += len(stream)
    table = index.tobytes()
    checksum = google_crc32c.value(table).to_bytes(INDEX_CHECKSUM, "little")
    return b"".join(s for s in codestreams if s is not None) + table + checksum


def chunk_files(layout: StoreLayout, codestreams: Sequence[bytes]) -> dict[str, bytes]:
    """The chunk files (path under the array -> bytes): one per chunk in format 2, one per
    shard in format 3."""
    if layout.zarr_format == 2:
        return {chunk_key(index, layout.grid): stream
                for index, stream in enumerate(codestreams)}
    per_shard = layout.chunks_per_shard
    files = {}
    for shard, first in enumerate(range(0, len(codestreams), per_shard)):
        held = list(codestreams[first : first + per_shard])
        files[shard_key(shard)] = shard_file(held + [None] * (per_shard - len(held)))
    return files


def write_store(directory: Path, layout: StoreLayout, codec: SliceCodec,
                codestreams: Sequence[bytes], attributes: dict[str, Any]) -> int:
    """Write a store into an empty ``directory``; returns the bytes written."""
    directory.mkdir(parents=True, exist_ok=False)
    files = {**render_metadata(layout, codec, attributes),
             **{f"{LEVEL0}/{key}": content
                for key, content in chunk_files(layout, codestreams).items()}}
    for name, content in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(content)
    return sum(map(len, files.values()))


def attributes_file(directory: Path) -> Path:
    """The file holding a store's medlossy attributes (``.zattrs``; ``zarr.json`` in
    Zarr format 3)."""
    v3 = directory / "zarr.json"
    return v3 if v3.is_file() else directory / ".zattrs"


def rewrite_attributes(directory: Path, attributes: dict[str, Any], size: int = 0) -> int:
    """Replace the medlossy attributes of a store that is still being written.

    The file is padded with trailing spaces (still valid JSON) up to ``size`` bytes; returns
    its length.
    """
    target = attributes_file(directory)
    if target.name == "zarr.json":
        zarray = json.loads((directory / LEVEL0 / "zarr.json").read_bytes())
        content = root_attributes(attributes, zarray, 3)
    else:
        zarray = json.loads((directory / LEVEL0 / ".zarray").read_bytes())
        content = root_attributes(attributes, zarray)
    content += b" " * (size - len(content))
    target.write_bytes(content)
    return len(content)


def stored_bytes(directory: Path) -> int:
    """Every byte of every file in the store: the footprint that the ratio counts."""
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(directory) for name in names)


class _Malformed(Exception):
    """A metadata value that medlossy needs is missing or unusable."""


def _number(value: Any, name: str, *, nonzero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not np.isfinite(value) or (nonzero and value == 0):
        raise _Malformed(f"{name} is {value!r}")
    return float(value)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"{name} is {value!r}")
    return value


def _dtype(value: Any, name: str) -> str:
    try:
        dtype = np.dtype(value) if isinstance(value, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise _Malformed(f"{name} is {value!r}")
    return value


def _section(attributes: dict, name: str) -> dict:
    value = attributes.get(name)
    if not isinstance(value, dict):
        raise _Malformed(f"{name} is {'missing' if value is None else repr(value)}")
    return value


def check_metadata(attributes: dict, zarray: Any) -> CodeMapping:
    """Check what readers use (geometry, slice array, checksums, codec, intensity mapping)
    against itself, so damage shows as one error instead of a crash later; returns the
    intensity mapping. A value rewritten to another valid one passes here: the metadata
    digests (``unmatched_sections``) catch those."""
    geometry = _section(attributes, "geometry")
    shape, axis = geometry.get("shape"), geometry.get("axial_axis")
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise _Malformed(f"geometry.shape is {shape!r}")
    if axis not in (0, 1, 2) or isinstance(axis, bool):
        raise _Malformed(f"geometry.axial_axis is {axis!r}")
    affine = geometry.get("affine")
    try:
        matrix = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        matrix = np.zeros(0)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise _Malformed("geometry.affine is not a finite 4x4 matrix")
    array_shape = zarray.get("shape") if isinstance(zarray, dict) else None
    expected = [shape[axis]] + [n for i, n in enumerate(shape) if i != axis]
    if array_shape != expected:
        raise _Malformed(f"array shape {array_shape!r} does not match geometry {shape}")
    chunks = zarray.get("chunks")
    tile = attributes.get("tile")
    if tile is not None and not (isinstance(tile, list) and len(tile) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and 0 < n <= limit
            for n, limit in zip(tile, expected[1:], strict=True))):
        raise _Malformed(f"tile is {tile!r}")
    planes = expected[1:] if tile is None else tile
    if not (isinstance(chunks, list) and len(chunks) == 3 and chunks[1:] == planes
            and isinstance(chunks[0], int) and not isinstance(chunks[0], bool)
            and chunks[0] > 0 and (tile is None or chunks[0] == 1)):
        what = "slices or blocks of slices" if tile is None else f"tiles of {tile}"
        raise _Malformed(f"array chunks {chunks!r} are not {what}")
    count = -(-expected[0] // chunks[0]) * TileGrid(*expected[1:], *planes).per_slice
    crcs = attributes.get("chunk_crc32")
    if not (isinstance(crcs, list) and len(crcs) == count
            and all(isinstance(c, int) and not isinstance(c, bool) for c in crcs)):
        raise _Malformed(f"chunk_crc32 does not hold one checksum per chunk ({count})")
    name = _section(attributes, "codec").get("name")
    if name not in codec_names():
        raise _Malformed(f"unknown codec {name!r}")
    if attributes.get("modality", "OTHER") not in ("CT", "MR", "OTHER"):
        raise _Malformed(f"modality is {attributes.get('modality')!r}")
    if not isinstance(attributes.get("source", {}), dict):
        raise _Malformed("source is not a mapping")
    intensity = _section(attributes, "intensity")
    slope = intensity.get("slope")
    return CodeMapping(_dtype(intensity.get("original_dtype"), "intensity.original_dtype"),
                       _dtype(intensity.get("code_dtype"), "intensity.code_dtype"),
                       _number(intensity.get("offset"), "intensity.offset"),
                       _number(intensity.get("scale"), "intensity.scale", nonzero=True),
                       None if slope is None else _number(slope, "intensity.slope",
                                                          nonzero=True),
                       _integer(intensity.get("shift", 0), "intensity.shift"))


def _sharded_view(meta: Any) -> dict[str, Any]:
    """Shape, inner chunks and shard shape of a Zarr format 3 array as medlossy writes it
    (a regular grid of shards, ``sharding_indexed`` with its CRC-32C-checked index at the
    end, default chunk keys)."""
    try:
        sharding = meta["codecs"][0]
        config = sharding["configuration"]
        view = {"shape": meta.get("shape"), "chunks": config.get("chunk_shape"),
                "shards": meta["chunk_grid"]["configuration"]["chunk_shape"]}
        usual = (meta.get("zarr_format") == 3 and len(meta["codecs"]) == 1
                 and sharding["name"] == "sharding_indexed"
                 and config.get("index_location", "end") == "end"
                 and config["index_codecs"] == [{"name": "bytes", "configuration": {
                     "endian": "little"}}, {"name": "crc32c"}]
                 and meta["chunk_grid"]["name"] == "regular"
                 and meta["chunk_key_encoding"] == {"name": "default",
                                                    "configuration": {"separator": "/"}})
    except (KeyError, IndexError, TypeError, AttributeError):
        usual = False
    if not usual:
        raise _Malformed("the array is not sharded as medlossy writes it (one "
                         "sharding_indexed codec, its index at the end)")
    return view


def _check_shards(view: dict[str, Any], grid: TileGrid) -> None:
    """Shards of whole chunks deep and of the whole (tiled) slice across."""
    shards, depth = view["shards"], view["chunks"][0]
    down, across = grid.shape
    if not (isinstance(shards, list) and len(shards) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) for n in shards)
            and shards[0] > 0 and shards[0] % depth == 0
            and shards[1:] == [down * grid.tile_rows, across * grid.tile_columns]):
        raise _Malformed(f"shards {shards!r} are not whole chunks of whole slices")


def _holds_dicom(folder: Path) -> bool:
    """Whether one of the first few files of ``folder`` is a DICOM file ("DICM" preamble)."""
    for entry in sorted(folder.iterdir())[:8]:
        try:
            with entry.open("rb") as file:
                if file.read(132)[128:] == b"DICM":
                    return True
        except OSError:  # a folder, unreadable: not what tells a DICOM folder
            continue
    return False


class _MissingFile(Exception):
    """A metadata file the store lacks (its name relative to the store)."""


class MetadataMismatch(MedlossyError):
    """Store metadata that no longer matches its recorded digests (edited or damaged)."""


class SliceStore:
    """Read access to a store written by medlossy: its metadata checked against its digests
    (refused when edited), every chunk against its CRC-32."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        #: Byte access to the store's files: a local folder or a URL (``store.remote``).
        self.files = StoreFiles(path)
        #: The store's folder, or its URL.
        self.path = self.files.root
        if not self.files.remote:
            if self.path.is_file():
                raise MedlossyError(self.path, "is a file, not a medlossy store (a store is a "
                                               "folder written by `medlossy compress`)")
            if not self.path.is_dir():
                raise MedlossyError(self.path, "no such store (expected a directory)")
        try:
            attributes = self._read_metadata()
        except _MissingFile as missing:
            if not self.files.remote and _holds_dicom(self.path):
                raise MedlossyError(self.path, "is a DICOM series folder, not a medlossy store "
                                               "(this command reads stores)") from None
            if self.files.remote and str(missing) == ".zattrs":
                raise MedlossyError(self.path, "no such store (neither zarr.json nor .zattrs "
                                               "at this URL)") from None
            raise MedlossyError(self.path, f"not a medlossy store: {missing} is missing"
                                ) from None
        section = ARRAY_SECTION if self.zarr_format == 2 else ARRAY_SECTION_V3
        if self.zarr_format == 3 and isinstance(attributes, dict):
            attributes = attributes.get("attributes")
            multiscales_found = attributes.get("ome", {}).get("multiscales") \
                if isinstance(attributes, dict) and isinstance(attributes.get("ome"), dict) \
                else None
        else:
            multiscales_found = attributes.get("multiscales") \
                if isinstance(attributes, dict) else None
        medlossy = attributes.get(ATTRIBUTE_KEY) if isinstance(attributes, dict) else None
        self.attributes: dict[str, Any] = medlossy if isinstance(medlossy, dict) else {}
        self.format_version = self.attributes.get("format_version")
        if self.format_version not in READABLE_VERSIONS or isinstance(self.format_version,
                                                                      bool):
            raise MedlossyError(self.path, "not a medlossy store (no medlossy attributes of "
                                           "format version "
                                           f"{' or '.join(map(str, READABLE_VERSIONS))})")
        # Sealed values edited since compress (an offset, an axis, a shape), named as such
        # before the checks below would call an inconsistent edit corrupt
        unmatched = unmatched_sections(self.attributes, self.array_metadata, section)
        #: Whether the metadata carries digests (stores written before them do not).
        self.protected = unmatched is not None
        if unmatched:
            if METADATA_KEY not in self.attributes:
                raise MetadataMismatch(self.path, f"{METADATA_KEY} is missing: a version "
                                       f"{self.format_version} store always carries it, so "
                                       "its metadata was edited since compress")
            raise MetadataMismatch(self.path, "metadata no longer matches its checksum ("
                                   f"{', '.join(unmatched)} changed since compress)")
        try:
            #: Shape and chunks (the inner chunks of a sharded store; and its shards).
            self.zarray = self.array_metadata if self.zarr_format == 2 \
                else _sharded_view(self.array_metadata)
            self.mapping = check_metadata(self.attributes, self.zarray)
            if self.zarr_format == 3:
                _check_shards(self.zarray, TileGrid(*self.zarray["shape"][1:],
                                                    *self.zarray["chunks"][1:]))
        except _Malformed as error:
            raise MedlossyError(self.path, f"corrupt store metadata ({error})") from None
        if self.protected and multiscales_found is not None \
                and multiscales_found != self._derived_multiscales():
            # What OME-Zarr viewers read (voxel spacing, origin) is derived from the sealed
            # geometry at write time: an edit there misplaces the image in every viewer.
            raise MetadataMismatch(self.path, "metadata no longer matches its checksum "
                                   "(multiscales changed since compress: the OME-NGFF scale "
                                   "and translation no longer follow the sealed geometry)")
        #: The tiles of a slice (one tile, the slice itself, in an untiled store).
        self.grid = TileGrid(*self.slice_shape, int(self.zarray["chunks"][1]),
                             int(self.zarray["chunks"][2]))
        #: Inner chunks per shard (format 3); 1 in format 2, where each chunk is a file.
        #: Computed once: every chunk read of a patch needs it (see _chunk_range).
        self.chunks_per_shard = 1 if self.zarr_format == 2 else \
            int(self.zarray["shards"][0]) // self.depth * self.grid.per_slice
        self._indexes: dict[int, list[tuple[int, int]]] = {}
        # a patch reads hundreds of chunks from a few shards: each shard's path built once
        self._shard_paths: dict[int, str | Path] = {}
        # decoding threads (read_store) share one store: a shard's index is fetched once
        self._index_lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_index_lock"]  # a lock does not cross processes
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._index_lock = threading.Lock()

    def _metadata(self, name: str) -> bytes:
        try:
            return self.files.read(name)
        except FileNotFoundError:
            raise _MissingFile(name) from None

    def _read_metadata(self) -> Any:
        """Read the array metadata (``self.array_metadata``) and return the root attributes
        document; finds the Zarr format (``zarr.json``: 3) and the array (version 1: at the
        root)."""
        try:
            group = self._metadata("zarr.json")
            #: 2, or 3 for a sharded store (its group metadata in ``zarr.json``).
            self.zarr_format = 3
        except _MissingFile:
            group, self.zarr_format = None, 2
        try:
            if self.zarr_format == 3:
                self._array = f"{LEVEL0}/"
                #: The array metadata as written (what the seal covers).
                self.array_metadata = json.loads(self._metadata(f"{LEVEL0}/zarr.json"))
                return json.loads(group)
            attributes = self._metadata(".zattrs")
            try:  # version 1 kept the array at the root; version 2 is a group, array at "0"
                zarray, self._array = self._metadata(".zarray"), ""
            except _MissingFile:
                zarray, self._array = self._metadata(f"{LEVEL0}/.zarray"), f"{LEVEL0}/"
            self.array_metadata = json.loads(zarray)
            return json.loads(attributes)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise MedlossyError(self.path, f"corrupt store metadata ({error})") from None

    @property
    def remote(self) -> bool:
        """Whether the store is read from a URL."""
        return self.files.remote

    @property
    def array_path(self) -> str | Path:
        """The full-resolution array's folder (or URL)."""
        return self.files.where(self._array.rstrip("/"))

    def stored_bytes(self) -> int | None:
        """Every byte of every file of the store (None at a URL that cannot be listed)."""
        return self.files.total_bytes() if self.remote else stored_bytes(self.path)

    def _derived_multiscales(self) -> Any:
        """The ``multiscales`` that compress wrote for this geometry, as JSON reads it back."""
        name = self.attributes.get("source", {}).get("file", "")
        return json.loads(json.dumps(multiscales(self.attributes["geometry"], name,
                                                 self.zarr_format)))

    @property
    def slices(self) -> int:
        return int(self.zarray["shape"][0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        return int(self.zarray["shape"][1]), int(self.zarray["shape"][2])

    @property
    def depth(self) -> int:
        """Slices per chunk: 1 for slice codecs, the block depth for 3D codecs."""
        return int(self.zarray["chunks"][0])

    @property
    def chunks(self) -> int:
        return -(-self.slices // self.depth) * self.grid.per_slice

    def chunk_slices(self, index: int) -> range:
        """The slices chunk ``index`` holds (the padding of a last block excluded)."""
        start = index // self.grid.per_slice * self.depth
        return range(start, min(start + self.depth, self.slices))

    def chunk_window(self, index: int) -> tuple[range, slice, slice]:
        """The slices, rows and columns of the volume (store order) chunk ``index`` holds."""
        grid = self.grid
        return (self.chunk_slices(index), *grid.window(index % grid.per_slice))

    def chunk_name(self, index: int) -> str:
        """How messages name chunk ``index``: "slice 7", "block 2 (slices 32-47)", or
        "slice 7 tile 1.2" (tile row 1, tile column 2)."""
        grid = self.grid
        if grid.tiled:
            plane, tile = divmod(index, grid.per_slice)
            down, across = grid.position(tile)
            return f"slice {plane} tile {down}.{across}"
        if self.depth == 1:
            return f"slice {index}"
        held = self.chunk_slices(index)
        return f"block {index} (slices {held.start}-{held.stop - 1})"

    @property
    def shard_slices(self) -> int | None:
        """Slices per shard file (format 3); None in format 2."""
        return int(self.zarray["shards"][0]) if self.zarr_format == 3 else None

    def chunk_path(self, index: int) -> str | Path:
        """The file holding chunk ``index``'s codestream (slice ``index`` for slice codecs;
        its shard in format 3): a path, or a URL."""
        if self.zarr_format == 3:
            return self._shard_path(index // self.chunks_per_shard)
        return self.files.where(self._array + chunk_key(index, self.grid))

    def _shard_path(self, shard: int) -> str | Path:
        """The file of shard ``shard`` (a path, or a URL), built once per store."""
        path = self._shard_paths.get(shard)
        if path is None:  # threads racing here build the same value: no lock needed
            path = self._shard_paths[shard] = self.files.where(self._array + shard_key(shard))
        return path

    def read_range(self, file: str | Path, offset: int, length: int) -> bytes:
        """``length`` bytes (-1: all) of ``file`` from ``offset`` (negative: from the end);
        every read of chunk data goes through here (one range request at a URL)."""
        return self.files.read_at(file, offset, length)

    def _shard_index(self, shard: int) -> list[tuple[int, int]]:
        """The (offset, length) of each inner chunk of ``shard``, its CRC-32C checked."""
        if shard in self._indexes:
            return self._indexes[shard]
        with self._index_lock:
            if shard not in self._indexes:
                self._indexes[shard] = self._read_shard_index(shard)
        return self._indexes[shard]

    def _read_shard_index(self, shard: int) -> list[tuple[int, int]]:
        """``_shard_index`` read from the shard file (a suffix range at a URL), as Python
        integers: one conversion per shard instead of one per chunk read."""
        file = self._shard_path(shard)
        size = self.chunks_per_shard * INDEX_ENTRY + INDEX_CHECKSUM
        try:
            raw = self.read_range(file, -size, size)
        except FileNotFoundError:  # deleted, or a 404 at a URL: not a damaged index
            raise MedlossyError(file, f"shard {shard} is missing from the store") from None
        except OSError:  # shorter than its index
            raw = b""
        if len(raw) != size or google_crc32c.value(raw[:-INDEX_CHECKSUM]) != \
                int.from_bytes(raw[-INDEX_CHECKSUM:], "little"):
            raise MedlossyError(file, f"shard {shard} is corrupt (its index fails its "
                                      "CRC-32C)")
        return [(offset, length) for offset, length in
                np.frombuffer(raw[:-INDEX_CHECKSUM], "<u8").reshape(-1, 2).tolist()]

    def _chunk_range(self, index: int) -> tuple[str | Path, int, int]:
        """(file, offset, length) of chunk ``index``'s bytes (length -1: the whole file);
        FileNotFoundError for an inner chunk its shard does not hold."""
        file = self.chunk_path(index)
        if self.zarr_format == 2:
            return file, 0, -1
        shard, inner = divmod(index, self.chunks_per_shard)
        offset, length = self._shard_index(shard)[inner]
        if offset == EMPTY:
            raise FileNotFoundError(file)
        return file, offset, length

    def _missing(self, index: int) -> MedlossyError:
        return MedlossyError(self.chunk_path(index), f"{self.chunk_name(index)} is missing "
                                                     "from the store")

    def _checked(self, index: int, data: bytes) -> bytes:
        if crc32(data) != self.attributes["chunk_crc32"][index]:
            raise MedlossyError(self.chunk_path(index), f"{self.chunk_name(index)} is corrupt "
                                                        "(CRC-32 mismatch)")
        return data

    def codestream(self, index: int) -> bytes:
        """The raw codestream of chunk ``index``, after its checksum is verified."""
        try:
            data = self.read_range(*self._chunk_range(index))
        except FileNotFoundError:
            raise self._missing(index) from None
        return self._checked(index, data)

    def codestreams(self, indices: Sequence[int]) -> list[bytes]:
        """``codestream`` of each chunk; at a URL fetched together, as concurrent requests
        (a patch's tiles or slices: one round trip's wait instead of one per chunk)."""
        if not self.remote:
            return [self.codestream(index) for index in indices]
        ranges = []
        for index in indices:
            try:
                ranges.append(self._chunk_range(index))
            except FileNotFoundError:
                raise self._missing(index) from None
        fetched = self.files.read_many(ranges)
        for index, data in zip(indices, fetched, strict=True):
            if isinstance(data, FileNotFoundError):
                raise self._missing(index)
        return [self._checked(index, data) for index, data in zip(indices, fetched,
                                                                  strict=True)]

    def decode_chunk(self, index: int, codec: SliceCodec) -> np.ndarray:
        """Chunk ``index`` as (slices, rows, columns) 16-bit codes of what it holds
        (``chunk_window``: padding dropped)."""
        data = self.codestream(index)
        grid = self.grid
        if grid.tiled:
            expected: tuple[int, ...] = (grid.tile_rows, grid.tile_columns)
        else:
            expected = (self.depth, *self.slice_shape) if self.depth > 1 else self.slice_shape
        try:
            codes = codec.decode(data, shape=expected, dtype=self.mapping.code_dtype)
        except Exception as error:  # decoder errors come in library-specific types
            raise MedlossyError(self.chunk_path(index), f"{self.chunk_name(index)} cannot be "
                                f"decoded ({error})") from None
        if codes.shape != expected:
            raise MedlossyError(self.chunk_path(index), f"{self.chunk_name(index)} decodes to "
                                f"{codes.shape}, expected {expected}")
        if grid.tiled:
            return grid.trim(codes, index % grid.per_slice)[np.newaxis]
        return codes.reshape(-1, *self.slice_shape)[: len(self.chunk_slices(index))]

    def decode_codes(self, index: int, codec: SliceCodec) -> np.ndarray:
        """Slice ``index`` as the 16-bit codes that were encoded."""
        grid = self.grid
        if not grid.tiled:
            return self.decode_chunk(index // self.depth, codec)[index % self.depth]
        first = index * grid.per_slice
        return grid.assemble([self.decode_chunk(first + tile, codec)[0]
                              for tile in range(grid.per_slice)])

    def verify(self) -> list[int]:
        """Indices of chunks whose file is missing or whose checksum does not match."""
        bad = []
        for index in range(self.chunks):
            try:
                self.codestream(index)
            except Unreachable:  # the server, not the chunk: no verdict on the store
                raise
            except MedlossyError:
                bad.append(index)
        return bad
