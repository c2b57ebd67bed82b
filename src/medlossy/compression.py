"""Compress a volume into a store at a target ratio, PSNR or losslessly, and decompress it.

Data flow: stream the volume slab by slab (validate, plan the 16-bit mapping, fill the slice
buffer) -> encode every chunk (a slice, or a block of slices for 3D codecs) as the target's
mode decides (``medlossy.ratecontrol``: the setting, or mix of settings, that meets it) ->
decode every chunk and check it against its codes (shape, dtype, error bound) -> measure the
error against the source, slab by slab -> write the store under a temporary name and rename
it into place.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medlossy import __version__
from medlossy.atomic import atomic_output
from medlossy.checksums import crc32
from medlossy.codecs import Setting, SliceCodec, get_codec
from medlossy.codecs.intensity import (
    WRAP_HEADROOM,
    CodeMapping,
    bits_needed,
    identity_mapping,
    plan_mapping,
    stored_integer_mapping,
)
from medlossy.codecs.pool import SliceEncoder, default_workers, slice_encoder
from medlossy.codecs.verify import VerifyError, verify_chunks
from medlossy.decompression import read_store, volume_from_codes
from medlossy.errors import MedlossyError
from medlossy.metrics import (
    ErrorTally,
    bits_per_voxel,
    data_range_for,
    detect_modality,
    raw_bytes,
)
from medlossy.ratecontrol import (
    FAR_REACHING,
    RATIO_TOLERANCE,
    ByteCounter,
    Encodes,
    Target,
    max_error_codes,
    reachable_ratios,
    refuse_out_of_reach,
    require_target,
    search,
    search_ratios,
)
from medlossy.store.slice_store import (
    DEFAULT_ZARR_FORMAT,
    FORMAT_VERSION,
    StoreLayout,
    attributes_file,
    render_metadata,
    rewrite_attributes,
    stored_bytes,
    write_store,
)
from medlossy.volume import Volume

#: The smallest tile side: JPEG 2000 here needs 32x32 pixels (six resolutions).
MIN_TILE = 32
_READ_ERRORS = (OSError, EOFError, ValueError, OverflowError, zlib.error)
#: Called with (ratio, store attributes, decoded volume, decode seconds) as a store is written.
OnStore = Callable[[float, dict[str, Any], Volume, float], None]


@dataclass(frozen=True)
class _Scan:
    low: float
    high: float
    dtype: np.dtype
    all_integral: bool
    #: The file's stored integers (NIfTI scl_slope/scl_inter), when every value is exactly
    #: such an integer scaled; None otherwise.
    stored: _StoredIntegers | None = None

    def stored_mapping(self, *, unsigned: bool = False) -> CodeMapping | None:
        """The stored integers as 16-bit codes, if they span 16 bits."""
        return None if self.stored is None else self.stored.mapping(self.dtype,
                                                                    unsigned=unsigned)


class _StoredIntegers:
    """Checks, slab by slab, that values are the file's integers times slope plus inter."""

    def __init__(self, header: dict) -> None:
        self.slope, self.inter = header["scl_slope"], header["scl_inter"]
        self.low, self.high, self.exact = math.inf, -math.inf, True

    def add(self, slab: np.ndarray) -> None:
        if not self.exact:
            return
        stored = np.rint((slab.astype(np.float64) - self.inter) / self.slope)
        again = (stored * self.slope + self.inter).astype(slab.dtype)
        self.exact = bool(np.array_equal(again, slab))
        self.low, self.high = min(self.low, stored.min()), max(self.high, stored.max())

    def mapping(self, dtype: np.dtype, *, unsigned: bool = False) -> CodeMapping | None:
        if not self.exact:
            return None
        return stored_integer_mapping(dtype, self.slope, self.inter, int(self.low),
                                      int(self.high), unsigned=unsigned)


def _scan(volume: Volume, source: str) -> _Scan:
    """One streaming pass: reject what cannot be compressed, collect the value range."""
    if len(volume.shape) != 3:
        raise MedlossyError(source, f"expected a 3D volume, got shape {volume.shape}")
    if min(volume.shape) == 0:
        raise MedlossyError(source, f"empty volume, shape {volume.shape}")
    linear = volume.affine[:3, :3]
    if not np.isfinite(volume.affine).all() or abs(np.linalg.det(linear)) < 1e-12 \
            or None in nib.aff2axcodes(volume.affine):
        raise MedlossyError(source, "unusable geometry: the voxel-to-world affine is not "
                                    "finite or collapses an axis (check qform/sform, pixdim)")
    low, high, all_integral, dtype = math.inf, -math.inf, True, None
    stored = _StoredIntegers(volume.header) if "scl_slope" in volume.header else None
    for _, slab in _read_slabs(volume, source):
        dtype = slab.dtype
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
                or dtype == np.bool_):
            raise MedlossyError(source, f"unsupported voxel type {dtype}")
        if np.issubdtype(dtype, np.floating):
            if not np.isfinite(slab).all():
                raise MedlossyError(source, "contains NaN or infinite values")
            all_integral = all_integral and bool(np.all(slab == np.round(slab)))
            if stored is not None:
                stored.add(slab)
        low, high = min(low, float(slab.min())), max(high, float(slab.max()))
    dtype = np.dtype(dtype)
    return _Scan(low, high, dtype, all_integral,
                 stored if stored is not None and stored.exact and dtype.kind == "f" else None)


def _read_slabs(volume: Volume, source: str):
    try:
        yield from volume.slabs()
    except _READ_ERRORS as error:
        raise MedlossyError(source, f"truncated or corrupt voxel data ({error})") from None


class _Measurer:
    """Total stored bytes of a candidate set of codestreams, metadata included."""

    def __init__(self, layout: StoreLayout, codec: SliceCodec, attributes: dict) -> None:
        self.layout, self.codec, self.attributes = layout, codec, attributes
        # The achieved block is written last; reserve room for it with a typical rendering.
        typical = ErrorTally(1.0, 3, 1.0)
        placeholder = _achieved_block(10**9, 10**8, (512, 512, 512), typical, 4096.0, True,
                                      12, (typical, typical))
        self.reserve = len(str(placeholder)) + 16

    def total(self, streams: list[bytes]) -> int:
        attributes = {**self.attributes, "chunk_crc32": [crc32(s) for s in streams]}
        metadata = render_metadata(self.layout, self.codec, attributes)
        return sum(map(len, streams)) + self.layout.index_bytes \
            + sum(map(len, metadata.values())) + self.reserve


def _round(value: float, digits: int = 6) -> float | None:
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def _errors(tally: ErrorTally, data_range: float) -> dict:
    return {"psnr_db": _round(tally.psnr(data_range)), "mse": _round(tally.mse),
            "max_abs_error": _round(tally.max_abs_error)}


def _achieved_block(stored: int, raw: int, shape: tuple[int, ...], tally: ErrorTally,
                    data_range: float, reached: bool, passes: int,
                    sources: tuple[ErrorTally, ErrorTally] | None = None) -> dict:
    block = {
        "stored_bytes": stored,
        "raw_bytes": raw,
        "ratio": _round(raw / stored),
        "bits_per_voxel": _round(bits_per_voxel(shape, stored)),
        "psnr_db": _round(tally.psnr(data_range)),
        "data_range": _round(data_range),
        "mse": _round(tally.mse),
        "max_abs_error": _round(tally.max_abs_error),
        "target_reached": reached,
        "encode_passes": passes,
    }
    if sources is not None:
        # Where the loss came from: the 16-bit intensity mapping alone (values -> codes ->
        # values) and the codec alone (codes -> decoded codes, in original units).
        block["error_sources"] = {"intensity_mapping": _errors(sources[0], data_range),
                                  "codec": _errors(sources[1], data_range)}
    return block


def _decoded_slices(codec: SliceCodec, streams: list[bytes], layout: StoreLayout,
                    workers: int):
    """Every decoded slice of the volume, in order (blocks decoded a few at a time, tiles
    put together into their slice)."""
    grid, per_slice = layout.grid, layout.grid.per_slice
    shape = layout.chunk_shape if layout.depth > 1 else layout.chunk_shape[1:]

    def decode(stream: bytes) -> np.ndarray:
        return codec.decode(stream, shape=shape, dtype=layout.mapping.code_dtype)

    remaining = layout.slices
    with ThreadPoolExecutor(max_workers=workers) as threads:  # imagecodecs releases the GIL
        step = max(1, 64 // layout.depth) * per_slice
        for start in range(0, len(streams), step):
            decoded = list(threads.map(decode, streams[start : start + step]))
            for first in range(0, len(decoded), per_slice):
                block = grid.assemble(decoded[first : first + per_slice]).reshape(
                    -1, layout.rows, layout.columns)
                for plane in block[: min(len(block), remaining)]:
                    remaining -= 1
                    yield plane


def _measure_errors(volume: Volume, source: str, streams: list[bytes], codec: SliceCodec,
                    layout: StoreLayout, workers: int) -> tuple[ErrorTally, ErrorTally]:
    """Decode every codestream and compare with the source, slab by slab.

    Returns the total error (source vs decoded values) and the codec's own (codes vs decoded
    codes, in original units).
    """
    mapping = layout.mapping
    total, codec_only = ErrorTally(), ErrorTally()
    planes = _decoded_slices(codec, streams, layout, workers)
    for _, slab in _read_slabs(volume, source):
        decoded = np.stack([next(planes) for _ in range(len(slab))])
        total.add(slab, mapping.to_values(decoded))
        if not mapping.exact:
            codec_only.add(mapping.to_codes(slab).astype(np.float64) * mapping.step,
                           decoded.astype(np.float64) * mapping.step)
    # With an exact mapping, all of the error is the codec's.
    return total, codec_only if not mapping.exact else total


@dataclass(frozen=True)
class Plan:
    """What a compress decides before encoding: codec, 16-bit mapping, slicing, PSNR peak."""

    codec: SliceCodec
    mapping: CodeMapping
    layout: StoreLayout
    peak: float
    raw: int  # raw 16-bit bytes of the volume, the numerator of every ratio


@dataclass(frozen=True)
class Encoding:
    """The codestreams that met (or came closest to) the target, and their measured error."""

    setting: Setting
    streams: list[bytes]
    reached: bool
    tally: ErrorTally
    passes: int
    seconds: float
    #: The 16-bit intensity mapping's own error, and the codec's own.
    mapping_tally: ErrorTally
    codec_tally: ErrorTally


def _not_16_bit(scan: _Scan) -> str:
    """Why JPEG 2000 lossless cannot hold a volume's values exactly."""
    stored = scan.stored
    if stored is not None and stored.exact and stored.low <= stored.high:
        return (f"the file's stored integers (under scl_slope {stored.slope:g}, scl_inter "
                f"{stored.inter:g}) need {bits_needed(stored.low, stored.high)} bits")
    if np.issubdtype(scan.dtype, np.integer) or scan.all_integral:
        return f"values need {bits_needed(scan.low, scan.high)} bits"
    return f"values are fractional ({scan.dtype.name})"


#: What works instead when a lossless target cannot be met by a 16-bit codec.
LOSSLESS_INSTEAD = "use --codec blosc (lossless zstd, any dtype)"


def plan_volume(volume: Volume, codec_name: str | None = None,
                data_range: float | None = None, source: str = "<volume>",
                target: Target | None = None, *, unsigned: bool = False,
                sixteen_bit: bool = False, instead: str = LOSSLESS_INSTEAD,
                tile: int | None = None) -> Plan:
    """Scan ``volume`` once (rejecting what cannot be compressed) and plan its encoding;
    ``unsigned``: unsigned codes only (as for a codec that takes no others); ``sixteen_bit``:
    16-bit codes only (DICOM pixel data), 8-bit sources widened; ``instead``: what
    a refused lossless target should do (the output format decides what works); ``tile``:
    the side of the square tiles each slice is stored as (None: whole slices).

    ``codec_name`` None means JPEG 2000, or lossless Blosc when ``target`` is lossless and
    the values are not 16-bit integers (floats with fractions, wider integers). A lossless
    target that the chosen codec cannot hold exactly is refused.
    """
    scan = _scan(volume, source)
    # "OTHER" is what a reader gives when it does not know (--modality auto)
    volume.modality, _ = detect_modality("auto", scan.low, scan.high, known=volume.modality)
    mapping = plan_mapping(scan.low, scan.high, scan.dtype, scan.all_integral,
                           sixteen_bit=sixteen_bit)
    if not mapping.exact:
        mapping = scan.stored_mapping() or mapping
    lossless = target is not None and target.mode == "lossless"
    if codec_name is None:
        codec_name = "blosc" if lossless and not mapping.exact else "jpeg2k"
        if codec_name == "blosc":
            tile = None  # Blosc slices are stored whole: zstd decodes a slice in no time
    try:
        codec = get_codec(codec_name)
    except ValueError as error:
        raise MedlossyError(source, str(error)) from None
    if tile is not None:
        check_tile(codec, tile)
    # a decoder that wraps overshoot (no clamping) needs headroom: 8-bit sources get 16-bit
    # codes, and lossy rescaled or offset codes stop WRAP_HEADROOM below the top
    headroom = 0 if codec.clamps or target is None or lossless else WRAP_HEADROOM
    if not codec.clamps and np.dtype(mapping.code_dtype).itemsize == 1:
        sixteen_bit = True
    if not codec.clamps and mapping.slope is None:
        mapping = plan_mapping(scan.low, scan.high, scan.dtype, scan.all_integral,
                               sixteen_bit=sixteen_bit, headroom=headroom)
    if codec.any_dtype:
        if target is not None and not lossless:
            raise MedlossyError(source, f"codec {codec_name!r} is lossless only; use "
                                        "--lossless, or --codec jpeg2k for a ratio or PSNR")
        mapping = identity_mapping(scan.dtype)
    elif (codec.unsigned_only or unsigned) and np.dtype(mapping.code_dtype).kind != "u":
        stored = scan.stored_mapping(unsigned=True) if mapping.slope is not None else None
        mapping = stored or plan_mapping(scan.low, scan.high, scan.dtype, scan.all_integral,
                                         unsigned=True, sixteen_bit=sixteen_bit,
                                         headroom=headroom)
    if headroom:
        _refuse_wrapping(codec, mapping, scan, source)
    if lossless and not codec.any_dtype and not mapping.exact:
        raise MedlossyError(source, f"cannot store losslessly with {codec_name}: "
                                    f"{_not_16_bit(scan)}, and {codec_name} lossless here "
                                    f"holds 16-bit integers; {instead}")
    peak = data_range_for(volume.modality, scan.low, scan.high, data_range)
    rows, columns = volume.slice_shape()
    if not codec.any_dtype and min(rows, columns) < 32:
        raise MedlossyError(source, f"axial slices are {rows}x{columns}; {codec.name} here "
                                    "needs at least 32x32")
    layout = StoreLayout(volume.shape[volume.axial_axis], rows, columns, mapping,
                         codec.block_depth, tile)
    return Plan(codec, mapping, layout, peak, raw_bytes(volume.shape))


def _refuse_wrapping(codec: SliceCodec, mapping: CodeMapping, scan: _Scan,
                     source: str) -> None:
    """Refuse lossy coding whose codes come within ``WRAP_HEADROOM`` of the top of their
    type with a codec whose decoder wraps overshoot (16-bit data near its type's top)."""
    top = int(np.max(mapping.to_codes(np.array([scan.low, scan.high], dtype=scan.dtype))))
    limit = int(np.iinfo(mapping.code_dtype).max)
    if top > limit - WRAP_HEADROOM:
        raise MedlossyError(source, f"lossy {codec.name} cannot code values this near the top "
                                    f"of {np.dtype(mapping.code_dtype).name} (code {top} of "
                                    f"{limit}): its decoder wraps what overshoots past "
                                    f"{limit} to the bottom; use --codec jpeg2k")


def check_tile(codec: SliceCodec, tile: int, option: str = "--tile") -> None:
    """Refuse a tile size the codec cannot store; ``option`` names the setting in errors."""
    if not codec.tiles:
        raise MedlossyError(None, f"codec {codec.name!r} cannot store tiles; {option} works "
                                  "with jpeg2k and htj2k")
    if tile < MIN_TILE:
        raise MedlossyError(None, f"{option} must be at least {MIN_TILE} (JPEG 2000 needs "
                                  f"{MIN_TILE}x{MIN_TILE} pixels), got {tile}")


def _fill(encoder: SliceEncoder, volume: Volume, mapping: CodeMapping,
          source: str) -> ErrorTally:
    """Put the volume's 16-bit codes into the encoder; returns the mapping's own error."""
    mapping_tally = ErrorTally()
    for start, slab in _read_slabs(volume, source):
        codes = mapping.to_codes(slab)
        encoder.slices[start : start + len(slab)] = codes
        if not mapping.exact:
            mapping_tally.add(slab, mapping.to_values(codes))
    return mapping_tally


def encode_volume(volume: Volume, plan: Plan, target: Target, count_bytes: ByteCounter, *,
                  workers: int | None = None, show_progress: bool = False,
                  source: str = "<volume>", further: Sequence[str] = FAR_REACHING,
                  ) -> Encoding:
    """Encode every axial slice so that ``count_bytes`` of the codestreams meets ``target``.

    ``count_bytes`` says what a candidate costs in the output: the whole store with its
    metadata for a store, the pixel data for DICOM. Errors are measured against the source.
    A ratio no setting of the codec meets is refused, suggesting the codecs ``further``.
    """
    codec, layout, mapping = plan.codec, plan.layout, plan.mapping
    require_target(codec, target)
    codes = max_error_codes(target.value, codec, mapping, source) \
        if target.mode == "max_error" else 0
    workers = workers or default_workers()
    started = time.perf_counter()
    with slice_encoder(codec, (layout.slices, layout.rows, layout.columns),
                       mapping.code_dtype, workers, layout.tile) as encoder:
        mapping_tally = _fill(encoder, volume, mapping, source)
        encodes = Encodes(encoder, Path(source).name, show_progress=show_progress)
        # The search measures PSNR on codes: the peak in code units.
        found = search(target, encodes, count_bytes, plan.raw, plan.peak / mapping.step,
                       codes)
        refuse_out_of_reach(found, codec, target, plan.raw / count_bytes(found.streams),
                            source, further)
        try:
            verify_chunks(codec, encoder.chunk, found.streams, found.bound,
                          [encoder.held(i).start for i in range(encoder.chunks)], workers)
        except VerifyError as error:
            raise MedlossyError(source, str(error)) from None
    seconds = time.perf_counter() - started
    tally, codec_tally = _measure_errors(volume, source, found.streams, codec, layout, workers)
    return Encoding(found.setting, found.streams, found.reached, tally, encodes.passes,
                    seconds, mapping_tally, codec_tally)


def _base_attributes(volume: Volume, plan: Plan, target: Target, source: str) -> dict[str, Any]:
    """What a store records before its codec and results are known."""
    tiled = {"tile": list(plan.layout.chunk_shape[1:])} if plan.layout.grid.tiled else {}
    return {
        "format_version": FORMAT_VERSION,
        "software": f"medlossy {__version__}",
        "source": {"file": Path(source).name, **{k: v for k, v in volume.header.items()}},
        "modality": volume.modality,
        "geometry": {
            "shape": list(volume.shape),
            "axial_axis": volume.axial_axis,
            "affine": [[_round(v, 9) for v in row] for row in volume.affine.tolist()],
            "spacing": [_round(v, 9) for v in volume.spacing],
            "orientation": volume.orientation,
        },
        "intensity": plan.mapping.to_dict(),
        **tiled,
        "target": target.to_dict(),
    }


def _measurer(plan: Plan, target: Target, attributes: dict[str, Any]) -> _Measurer:
    return _Measurer(plan.layout, plan.codec, {**attributes, "codec": plan.codec.describe(
        Setting("lossless" if target.mode == "lossless" else "quality"))})


def compress_volume(volume: Volume, output: str | Path, target: Target, *,
                    codec_name: str | None = None, data_range: float | None = None,
                    workers: int | None = None, show_progress: bool = False,
                    source: str = "<volume>", tile: int | None = None,
                    replace: bool = True, zarr_format: int = DEFAULT_ZARR_FORMAT,
                    shard_slices: int | None = None) -> dict[str, Any]:
    """Compress ``volume`` into the store ``output``; returns the store's medlossy attributes
    and, under ``timing``, the run's ``encode_seconds`` (not stored: a store's bytes depend
    only on its input and settings, so identical runs write identical stores).

    ``data_range`` is the PSNR peak (default: 4096 for CT, the volume's max - min otherwise;
    pass the dataset-wide range for MR). ``source`` names the input in error messages.
    ``codec_name`` None: JPEG 2000, or lossless Blosc for data JPEG 2000 cannot hold exactly.
    ``tile``: store each slice as square tiles of this side, one codestream each (slice
    codecs with ``tiles``), so that readers decode only the tiles a region touches.
    ``replace`` False: refuse, at the end, an ``output`` that exists by then.
    ``zarr_format`` 3: a sharded OME-Zarr 0.5 store, ``shard_slices`` slices per shard file
    (None: one shard); the ratio counts the shard indexes too.
    """
    plan = _stored_as(plan_volume(volume, codec_name, data_range, source, target, tile=tile),
                      zarr_format, shard_slices)
    attributes = _base_attributes(volume, plan, target, source)
    found = encode_volume(volume, plan, target, _measurer(plan, target, attributes).total,
                          workers=workers, show_progress=show_progress, source=source)
    return _write_encoding(output, plan, volume.shape, target, attributes, found,
                           replace=replace)


def _stored_as(plan: Plan, zarr_format: int, shard_slices: int | None) -> Plan:
    """``plan`` with its store written in ``zarr_format`` (3: sharded)."""
    return dataclasses.replace(plan, layout=dataclasses.replace(
        plan.layout, zarr_format=zarr_format, shard_slices=shard_slices))


def ratio_reach(volume: Volume, codec_name: str | None = None, *,
                workers: int | None = None, source: str = "<volume>",
                tile: int | None = None, zarr_format: int = DEFAULT_ZARR_FORMAT,
                shard_slices: int | None = None) -> tuple[float, float | None]:
    """What ``--ratio`` can ask of ``codec_name`` (None: JPEG 2000) on ``volume``, every
    stored byte counted: the ratio of its coarsest setting and, for a codec without a
    lossless mode, of its finest lossy setting (None for the others: lossless takes over).
    ``tile``: as stored in tiles of this side."""
    target = Target("ratio", 2.0)  # any ratio: the store's metadata is the same
    plan = _stored_as(plan_volume(volume, codec_name or "jpeg2k", None, source, target,
                                  tile=tile), zarr_format, shard_slices)
    codec, layout, mapping = plan.codec, plan.layout, plan.mapping
    count_bytes = _measurer(plan, target, _base_attributes(volume, plan, target, source)).total
    with slice_encoder(codec, (layout.slices, layout.rows, layout.columns),
                       mapping.code_dtype, workers or default_workers(),
                       layout.tile) as encoder:
        _fill(encoder, volume, mapping, source)
        return reachable_ratios(encoder, count_bytes, plan.raw)


def _write_encoding(output: str | Path, plan: Plan, shape: tuple[int, ...], target: Target,
                    attributes: dict[str, Any], found: Encoding, *, replace: bool = True,
                    ) -> dict[str, Any]:
    """Write ``found``'s codestreams as the store ``output`` (atomically), with the achieved
    block counting every byte written, itself included."""
    codec, layout, peak, raw = plan.codec, plan.layout, plan.peak, plan.raw
    tally, passes = found.tally, found.passes
    attributes["codec"] = {**codec.describe(found.setting), "setting": {
        "mode": found.setting.mode, "value": _round(found.setting.value, 8)}}
    attributes["chunk_crc32"] = [crc32(s) for s in found.streams]

    def achieved(stored: int) -> dict:
        reached = found.reached
        if target.mode == "ratio":
            reached = abs(raw / stored / target.value - 1.0) <= RATIO_TOLERANCE
        return _achieved_block(stored, raw, shape, tally, peak, reached, passes,
                               (found.mapping_tally, found.codec_tally))

    with atomic_output(output, replace=replace) as temporary:
        attributes["achieved"] = achieved(sum(map(len, found.streams)))
        write_store(temporary, layout, codec, found.streams, attributes)
        for _ in range(5):  # the byte count is written inside what it counts: iterate to fit
            update = achieved(stored_bytes(temporary))
            if update == attributes["achieved"]:
                break
            attributes["achieved"] = update
            rewrite_attributes(temporary, attributes)
        else:  # no fixed point (the count's own digits move it): state a total, pad up to it
            others = stored_bytes(temporary) - attributes_file(temporary).stat().st_size
            total = stored_bytes(temporary)
            while True:
                attributes["achieved"] = achieved(total)
                written = rewrite_attributes(temporary, attributes, size=total - others)
                if others + written == total:
                    break
                total = others + written
    return {**attributes, "timing": {"encode_seconds": _round(found.seconds, 4)}}


def compress_volume_ratios(volume: Volume, outputs: dict[float, str | Path], *,
                           codec_name: str | None = None, data_range: float | None = None,
                           workers: int | None = None, layered: bool = True,
                           on_store: OnStore | None = None,
                           keep: Collection[float] | None = None,
                           show_progress: bool = False, source: str = "<volume>",
                           tile: int | None = None, zarr_format: int = DEFAULT_ZARR_FORMAT,
                           shard_slices: int | None = None) -> dict[float, dict[str, Any]]:
    """Compress ``volume`` at several ratios (1 = lossless) into one store each, reading and
    encoding it as few times as possible; returns each store's attributes by ratio.

    The volume is read once. With ``layered`` (JPEG 2000), the lossy ratios come from one
    layered survey encode and a few final passes (``medlossy.ratecontrol.layered``) instead
    of a search per ratio; a ratio those passes cannot meet, and every ratio without
    ``layered``, is searched alone as ``compress_volume`` would. Each store is what
    ``compress_volume`` writes, except that ``encode_passes`` and ``timing.encode_seconds``
    are the whole group's. ``on_store(ratio, attributes, decoded volume, decode seconds)``
    runs as each store is written, with the volume decoded from exactly the stored
    codestreams (callers need not decode again). ``keep``: the ratios to write (default
    all); the others are encoded all the same, so that each store is the same whichever
    ratios a rerun has left to do.
    ``tile``: stores in tiles of this side, each ratio then searched on its own (the layered
    encode cuts whole slices). ``zarr_format``, ``shard_slices``: as for ``compress_volume``.
    """
    stored_as = {"zarr_format": zarr_format, "shard_slices": shard_slices}
    keep = set(outputs if keep is None else keep)
    ratios = sorted(outputs)
    lossy = [r for r in ratios if r != 1]
    if get_codec(codec_name or "jpeg2k").block_depth > 1 or tile is not None:
        # 3D blocks, tiles: one ratio at a time
        return _compress_each(volume, outputs, keep, codec_name=codec_name,
                              data_range=data_range, workers=workers, on_store=on_store,
                              source=source, tile=tile, **stored_as)
    plan = _stored_as(plan_volume(volume, codec_name, data_range, source,
                                  Target("ratio", lossy[0]) if lossy else Target("lossless")),
                      zarr_format, shard_slices)
    written: dict[float, dict[str, Any]] = {}
    if 1 in outputs and (not lossy or not plan.mapping.exact):
        # Lossless alone, or values JPEG 2000 cannot hold exactly (compress_volume then picks
        # another codec): ratio 1 on its own.
        written.update(_compress_each(volume, {1: outputs[1]}, keep, codec_name=codec_name,
                                      data_range=data_range, workers=workers,
                                      on_store=on_store, source=source, tile=None,
                                      **stored_as))
        ratios = lossy
        if not ratios:
            return written
    targets = {r: Target("lossless") if r == 1 else Target("ratio", r) for r in ratios}
    bases = {r: _base_attributes(volume, plan, targets[r], source) for r in ratios}
    counters = {r: _measurer(plan, targets[r], bases[r]).total for r in ratios}
    codec, layout, mapping = plan.codec, plan.layout, plan.mapping
    workers = workers or default_workers()
    started = time.perf_counter()
    with slice_encoder(codec, (layout.slices, layout.rows, layout.columns),
                       mapping.code_dtype, workers) as encoder:
        mapping_tally = _fill(encoder, volume, mapping, source)
        encodes = Encodes(encoder, Path(source).name, show_progress=show_progress)
        found = search_ratios(encodes, counters, plan.raw, layered=layered, source=source)
        seconds = time.perf_counter() - started
        for ratio in [r for r in ratios if r in keep]:  # one decode: errors, caller's volume
            streams = found[ratio].streams
            decode_started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=workers) as threads:  # decode releases the GIL
                decoded = list(threads.map(codec.decode, streams))
            decode_seconds = time.perf_counter() - decode_started
            _verify_decoded(codec, encoder.slices, decoded, found[ratio].bound, source)
            if mapping.exact:  # the codes are the source's values: no need to read it again
                tally = ErrorTally()
                for codes, plane in zip(encoder.slices, decoded, strict=True):
                    tally.add(mapping.to_values(codes), mapping.to_values(plane))
                codec_tally = tally
            else:
                tally, codec_tally = _measure_errors(volume, source, streams, codec, layout,
                                                     workers)
            encoding = Encoding(found[ratio].setting, streams, found[ratio].reached, tally,
                                encodes.passes, seconds, mapping_tally, codec_tally)
            written[ratio] = _write_encoding(outputs[ratio], plan, volume.shape,
                                             targets[ratio], bases[ratio], encoding)
            if on_store is not None:
                on_store(ratio, written[ratio],
                         volume_from_codes(decoded, mapping, written[ratio]), decode_seconds)
    return written


def _compress_each(volume: Volume, outputs: dict[float, str | Path], keep: Collection[float],
                   *, codec_name: str | None, data_range: float | None, workers: int | None,
                   on_store: OnStore | None, source: str, tile: int | None,
                   zarr_format: int = DEFAULT_ZARR_FORMAT, shard_slices: int | None = None,
                   ) -> dict[float, dict[str, Any]]:
    """``compress_volume_ratios`` the plain way: each kept ratio compressed on its own."""
    written = {}
    for ratio in sorted(r for r in outputs if r in keep):
        target = Target("lossless") if ratio == 1 else Target("ratio", ratio)
        written[ratio] = compress_volume(volume, outputs[ratio], target,
                                         codec_name=None if ratio == 1 else codec_name,
                                         data_range=data_range, workers=workers,
                                         source=source, tile=tile, zarr_format=zarr_format,
                                         shard_slices=shard_slices)
        if on_store is not None:
            started = time.perf_counter()
            decoded = read_store(outputs[ratio], workers=workers)
            on_store(ratio, written[ratio], decoded, time.perf_counter() - started)
    return written


def _verify_decoded(codec: SliceCodec, codes: np.ndarray, decoded: list[np.ndarray],
                    bound: float | None, source: str) -> None:
    """What ``verify_chunks`` checks, on slices already decoded: shape, dtype, error bound."""
    for index, (expected, plane) in enumerate(zip(codes, decoded, strict=True)):
        problem = None
        if plane.shape != expected.shape or plane.dtype != expected.dtype:
            problem = f"decodes to {plane.shape} {plane.dtype}, encoded {expected.shape} " \
                      f"{expected.dtype}"
        elif bound is not None:
            worst = int(np.abs(plane.astype(np.int32) - expected.astype(np.int32)).max())
            if worst > bound:
                problem = f"decodes with error {worst} codes, more than its bound {bound:g}"
        if problem is not None:
            raise MedlossyError(source, f"slice {index}: codec {codec.name!r} returned a bad "
                                        f"codestream: {problem}")
