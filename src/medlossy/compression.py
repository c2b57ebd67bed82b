"""Compress a volume into a store at a target ratio, PSNR or losslessly, and decompress it.

Data flow: stream the volume slab by slab (validate, plan the 16-bit mapping, fill the slice
buffer) -> encode every chunk (a slice, or a block of slices for 3D codecs), searching the
codec setting that meets the target -> decode every chunk and check it against its codes
(shape, dtype, error bound) -> measure the error against the source, slab by slab -> write
the store under a temporary name and rename it into place.
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
from typing import Any, Literal

import nibabel as nib
import numpy as np

from medlossy import __version__
from medlossy.atomic import atomic_output
from medlossy.checksums import crc32
from medlossy.codecs import CodecError, Setting, SliceCodec, get_codec, require_mode
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
from medlossy.layered_rate import encode_ratios
from medlossy.metrics import (
    ErrorTally,
    bits_per_voxel,
    data_range_for,
    detect_modality,
    raw_bytes,
)
from medlossy.ratecontrol import (
    Trial,
    choose_per_slice,
    fill_budget,
    land_budget,
    solve_budget,
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
#: A ratio is met when the whole store is within this fraction of the target.
RATIO_TOLERANCE = 0.01
#: The search aims tighter, so that the metadata written afterwards cannot tip it over.
SEARCH_TOLERANCE = 0.004
_PSNR_TOLERANCE_DB = 0.1
#: Knobs (dB from the search's last) whose encodes help a ladder mix land on its budget.
_LADDER_KNOBS = (-6.0, -3.0, -1.0, 1.0, 3.0)
#: Knobs (dB from the two closest trials) encoded when a search's mix misses its budget.
_REFINE_KNOBS = (-1.0, -0.5, -0.2, 0.2, 0.5, 1.0)
_DB_PER_DOUBLING = 6.02  # bytes roughly double per 6 dB (one bit per sample)
_READ_ERRORS = (OSError, EOFError, ValueError, OverflowError, zlib.error)
#: Total bytes that a candidate set of codestreams costs in the output (store or DICOM).
ByteCounter = Callable[[list[bytes]], int]
#: Called with (ratio, store attributes, decoded volume, decode seconds) as a store is written.
OnStore = Callable[[float, dict[str, Any], Volume, float], None]


@dataclass(frozen=True)
class Target:
    """What to aim for.

    ``mode``: "ratio" (value = raw 16-bit bytes / stored bytes), "psnr" (value in dB, the
    study's definition), "max_error" (value = largest absolute error, in the volume's units)
    or "lossless". ``allocation`` (ratio mode): "psnr" spreads bytes so
    every slice gets the same distortion target; "equal" gives every slice the same ratio;
    "optimal" runs both searches and picks, slice by slice, the encoding that removes the most
    error per byte within the budget (never worse than either, about 30% more encoding).
    """

    mode: Literal["ratio", "psnr", "max_error", "lossless"]
    value: float = 0.0
    allocation: Literal["psnr", "equal", "optimal"] = "psnr"

    def __post_init__(self) -> None:
        if self.mode == "ratio" and not self.value > 1.0:
            raise ValueError(f"a lossy ratio must be greater than 1, got {self.value:g}")
        if self.mode == "psnr" and not self.value > 0.0:
            raise ValueError(f"a PSNR target must be positive, got {self.value:g}")
        if self.mode == "max_error" and not self.value > 0.0:
            raise ValueError(f"a maximum error must be positive, got {self.value:g}")
        if self.allocation not in ("psnr", "equal", "optimal"):
            raise ValueError("allocation must be 'psnr', 'equal' or 'optimal', got "
                             f"{self.allocation!r}")

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"mode": self.mode}
        if self.mode != "lossless":
            document["value"] = self.value
        if self.mode == "ratio":
            document["allocation"] = self.allocation
        return document


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
class _Found:
    setting: Setting
    streams: list[bytes]
    reached: bool
    #: Largest error (codes) any chunk may show; None when the setting promises none.
    bound: float | None = None
    #: No setting of the codec meets the ratio: ``streams`` are its closest end.
    out_of_reach: bool = False


def _bound(codec: SliceCodec, settings: list[Setting]) -> float | None:
    bounds = [codec.error_bound(s) for s in settings]
    return None if any(b is None for b in bounds) else max(bounds)


def _codes_bound(target: Target, mapping: CodeMapping, source: str) -> int:
    """The whole number of codes a maximum-error target allows (mapping rounding included)."""
    allowed = (target.value - mapping.max_rounding_error) / mapping.step
    codes = math.floor(allowed + 1e-9)
    if codes < 1:
        quantum = mapping.step
        raise MedlossyError(source, f"maximum error {target.value:g} is below the data's "
                                    f"quantum ({quantum:g} per code, rounding "
                                    f"{mapping.max_rounding_error:g}); use --lossless")
    return codes

def _search(encode, encoder: SliceEncoder, count_bytes: ByteCounter, target: Target, raw: int,
            data_range: float, max_error_codes: int = 0) -> _Found:
    """Encode until the target is met; ``encode(setting)`` encodes the whole volume once."""
    codec = encoder.codec
    if target.mode == "lossless":
        return _Found(Setting("lossless"), encode(Setting("lossless")), True, 0.0)
    if target.mode == "max_error":
        setting = Setting("max_error", float(max_error_codes))
        return _Found(setting, encode(setting), True, codec.error_bound(setting))
    if target.mode == "psnr":
        return _search_psnr(encode, encoder, target, data_range)
    budget = int(raw / target.value)
    if codec.discrete:
        return _search_discrete(encode, encoder, count_bytes, budget)
    found = []
    bounds: list[float | None] = []  # error bounds of the settings that went into a mix
    beyond = False  # a search ended at an end of the codec's range
    if target.allocation in ("psnr", "optimal"):
        def measure_quality(knob: float):
            streams = encode(Setting("quality", knob))
            return count_bytes(streams), streams
        outcome = solve_budget(measure_quality, budget, codec.quality_range,
                               start=codec.quality_for_psnr(50.0, 4096.0),
                               slope=math.log(2) / _DB_PER_DOUBLING, tolerance=SEARCH_TOLERANCE)
        found.append((Setting("quality", outcome.best.knob), outcome.best))
        beyond = outcome.out_of_reach
        if outcome.under is not None and outcome.over is not None:
            # Sizes jump across the budget (ZFP's fixed rate, SZ3): mix the two closest
            # encodes chunk by chunk, then re-encode single chunks at knobs between the two
            # to spend what the mix leaves (few chunks: a short volume in 16-slice blocks).
            streams = _mix_two(encoder, count_bytes, [outcome.over.payload,
                                                      outcome.under.payload], budget)
            if abs(count_bytes(streams) / budget - 1.0) >= abs(outcome.best.error(budget)):
                streams = outcome.best.payload
            streams, knobs = _refine_chunks(encode, encoder, count_bytes, streams,
                                            outcome.under, outcome.over, budget)
            if streams is not outcome.best.payload:
                bounds.extend(codec.error_bound(Setting("quality", k)) for k in
                              (outcome.under.knob, outcome.over.knob, *knobs))
                found[-1] = (Setting("mixed"), Trial(outcome.best.knob, count_bytes(streams),
                                                     streams))
        laddered = _ladder_mix(encode, encoder, count_bytes, found[-1][1].payload,
                               outcome.best.knob, budget, land=beyond)
        if laddered is not None:
            streams, used = laddered
            bounds.extend(codec.error_bound(s) for s in used)
            found[-1] = (Setting("mixed"), Trial(outcome.best.knob, count_bytes(streams),
                                                 streams))
    if target.allocation in ("equal", "optimal"):
        # The knob -log(per-slice ratio) grows with bytes.
        def measure_ratio(knob: float):
            streams = encode(Setting("ratio", math.exp(-knob)))
            return count_bytes(streams), streams
        outcome = solve_budget(measure_ratio, budget, (-math.log(1e5), 0.0),
                               start=-math.log(target.value), slope=1.0,
                               tolerance=SEARCH_TOLERANCE)
        found.append((Setting("ratio", math.exp(-outcome.best.knob)), outcome.best))
        beyond = beyond or outcome.out_of_reach
    setting, best = found[0]
    streams = best.payload
    bound = _bound(codec, [s for s, _ in found])
    if bounds:
        bound = None if bound is None or None in bounds else max(bound, *bounds)
    if best.total_bytes < budget * (1.0 - RATIO_TOLERANCE) and "lossless" in codec.modes:
        # Even the best lossy quality is under budget (x2 on some CT): if lossless fits too,
        # it is both exact and smaller, so store that and report the ratio achieved.
        lossless = encode(Setting("lossless"))
        if count_bytes(lossless) <= budget * (1.0 + RATIO_TOLERANCE):
            return _Found(Setting("lossless"), lossless, False, 0.0)
        if beyond:  # the budget lies between the best lossy quality and lossless: mix them
            streams = _mix_two(encoder, count_bytes, [lossless, streams], budget)
            total = count_bytes(streams)
            return _Found(Setting("mixed"), streams,
                          abs(total / budget - 1.0) <= RATIO_TOLERANCE, bound)
    if len(found) == 2:
        setting, streams = _best_mix(encoder, count_bytes, found, budget)
    reached = abs(count_bytes(streams) / budget - 1.0) <= RATIO_TOLERANCE
    return _Found(setting, streams, reached, bound, beyond and not reached)


def _search_discrete(encode, encoder: SliceEncoder, count_bytes: ByteCounter,
                     budget: int) -> _Found:
    """Ratio for a codec with whole-number maximum errors only (JPEG-LS NEAR): find the two
    neighbouring errors whose volumes bracket the budget, then choose chunk by chunk between
    them (least total error within the budget)."""
    codec = encoder.codec
    encoded: dict[int, list[bytes]] = {}

    def size(near: int) -> int:
        if near not in encoded:
            encoded[near] = encode(Setting("max_error", float(near)))
        return count_bytes(encoded[near])

    top = int(codec.quality_range[1])
    low, high = 0, 1  # bytes fall as NEAR grows: find high with size(high) <= budget
    while size(high) > budget and high < top:
        low, high = high, min(2 * high, top)
    if size(high) > budget:
        setting = Setting("max_error", float(high))
        reached = abs(size(high) / budget - 1.0) <= RATIO_TOLERANCE
        return _Found(setting, encoded[high], reached, float(high), not reached)
    if low == 0 and size(0) <= budget * (1.0 + RATIO_TOLERANCE):
        # Even lossless fits the budget: exact and within it, so store that (as _search).
        return _Found(Setting("lossless"), encoded[0], False, 0.0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if size(middle) > budget else (low, middle)
    streams = _mix_two(encoder, count_bytes, [encoded[low], encoded[high]], budget)
    used = sorted({low if s is encoded[low][i] else high for i, s in enumerate(streams)})
    setting = Setting("max_error", float(used[0])) if len(used) == 1 else Setting("mixed")
    reached = abs(count_bytes(streams) / budget - 1.0) <= RATIO_TOLERANCE
    return _Found(setting, streams, reached, float(high))


def _mix_two(encoder: SliceEncoder, count_bytes: ByteCounter, candidates: list[list[bytes]],
             budget: int) -> list[bytes]:
    """Per chunk, one of two encodings of the volume: least total error within ``budget``."""
    sizes = np.array([[len(c[i]) for c in candidates] for i in range(len(candidates[0]))])
    errors = np.stack([_squared_errors(encoder, c) for c in candidates], axis=1)
    overhead = count_bytes(candidates[0]) - int(sizes[:, 0].sum())
    choice = choose_per_slice(sizes, errors, budget - overhead)
    choice = fill_budget(sizes, errors, choice, budget - overhead)
    window = (budget * (1.0 - SEARCH_TOLERANCE) - overhead,
              budget * (1.0 + SEARCH_TOLERANCE) - overhead)
    choice = land_budget(sizes, errors, choice, window)
    return [candidates[c][i] for i, c in enumerate(choice)]


def _refine_chunks(encode, encoder: SliceEncoder, count_bytes: ByteCounter,
                   streams: list[bytes], under: Trial, over: Trial,
                   budget: int) -> tuple[list[bytes], list[float]]:
    """Land ``streams`` (chunks encoded at ``under``'s or ``over``'s quality knob) within the
    search tolerance of ``budget``: encode the volume at a few knobs around the two and
    choose chunk by chunk among all of these encodes (least total error, then the switch
    that lands). Chunk sizes step, and with SZ3 wander, from knob to knob: more candidates
    per chunk give totals close to any budget. Returns the streams and the knobs encoded
    (``streams`` and no knob when it is already within the tolerance or nothing helps).
    """
    def miss(candidate: list[bytes]) -> float:
        return abs(count_bytes(candidate) / budget - 1.0)

    if miss(streams) <= SEARCH_TOLERANCE:
        return streams, []
    centre = (under.knob + over.knob) / 2
    knobs = [min(max(centre + k, encoder.codec.quality_range[0]),
                 encoder.codec.quality_range[1]) for k in _REFINE_KNOBS]
    candidates = [over.payload, under.payload,
                  *(encode(Setting("quality", k)) for k in knobs)]
    mixed = _mix_two(encoder, count_bytes, candidates, budget)
    return (mixed, knobs) if miss(mixed) < miss(streams) else (streams, [])


def _ladder_mix(encode, encoder: SliceEncoder, count_bytes: ByteCounter,
                streams: list[bytes], knob: float, budget: int, *, land: bool,
                ) -> tuple[list[bytes], list[Setting]] | None:
    """Mix ``streams`` (the answer of the quality knob, last tried at ``knob``) chunk by
    chunk with encodes of the codec's ``ratio_ladder`` around the budget (the two that
    bracket it and one on either side, found by bisection) and, to land, with encodes at a
    few knobs around ``knob``. Returns the mix and the settings used, or None when the codec
    has no ladder, or the mix lands less well (with ``land``: not within the search
    tolerance) or with more error than ``streams``."""
    ladder = encoder.codec.ratio_ladder()
    if not ladder:
        return None
    encoded: dict[int, list[bytes]] = {}

    def size(index: int) -> int:
        if index not in encoded:
            encoded[index] = encode(ladder[index])
        return count_bytes(encoded[index])

    fine, coarse = 0, len(ladder) - 1  # bytes fall along the ladder
    if size(fine) < budget or size(coarse) > budget:
        return None  # the knob alone reaches further than the ladder
    while coarse - fine > 1:
        middle = (fine + coarse) // 2
        fine, coarse = (middle, coarse) if size(middle) > budget else (fine, middle)
    low, high = encoder.codec.quality_range
    rungs = [i for i in (fine - 1, fine, coarse, coarse + 1) if 0 <= i < len(ladder)]
    knobs = [Setting("quality", min(max(knob + step, low), high)) for step in _LADDER_KNOBS]
    candidates = [streams, *(encoded.get(i) or encode(ladder[i]) for i in rungs),
                  *(encode(setting) for setting in knobs)]
    used = [*(ladder[i] for i in rungs), *knobs]
    mixed = _mix_two(encoder, count_bytes, candidates, budget)

    def miss(candidate: list[bytes]) -> float:
        return abs(count_bytes(candidate) / budget - 1.0)

    limit = SEARCH_TOLERANCE if land else max(miss(streams), SEARCH_TOLERANCE)
    if miss(mixed) > limit or \
            _squared_errors(encoder, mixed).sum() >= _squared_errors(encoder, streams).sum():
        return None
    return mixed, used


def _squared_errors(encoder: SliceEncoder, streams: list[bytes]) -> np.ndarray:
    codec = encoder.codec
    errors = np.empty(len(streams))
    for index, stream in enumerate(streams):
        codes = encoder.chunk(index)
        decoded = codec.decode(stream, shape=codes.shape, dtype=codes.dtype)
        # A padded block's repeats and an edge tile's padding are not the volume's.
        difference = encoder.trim(index, codes).astype(np.float64) \
            - encoder.trim(index, decoded)
        errors[index] = float(np.dot(difference.ravel(), difference.ravel()))
    return errors


def _best_mix(encoder: SliceEncoder, count_bytes: ByteCounter, found: list, budget: int):
    """Per slice, the candidate (one per search) with the best error for its bytes; the mix is
    kept only if it meets the budget with less total error than every single candidate."""
    candidates = [trial.payload for _, trial in found]
    sizes = np.array([[len(c[i]) for c in candidates] for i in range(len(candidates[0]))])
    errors = np.stack([_squared_errors(encoder, c) for c in candidates], axis=1)
    overhead = count_bytes(candidates[0]) - int(sizes[:, 0].sum())
    choice = choose_per_slice(sizes, errors, budget - overhead)
    mixed = [candidates[c][i] for i, c in enumerate(choice)]
    options = [(float(errors[:, k].sum()), found[k][0], candidates[k])
               for k in range(len(candidates))]
    options.append((float(errors[np.arange(len(choice)), choice].sum()),
                    Setting("mixed"), mixed))
    fitting = [o for o in options
               if abs(count_bytes(o[2]) / budget - 1.0) <= RATIO_TOLERANCE] or options
    _, setting, streams = min(fitting, key=lambda option: option[0])
    return setting, streams


def _search_psnr(encode, encoder: SliceEncoder, target: Target, data_range: float):
    """Aim the codec's PSNR knob, then correct it by the PSNR actually measured on the codes."""
    codec = encoder.codec
    knob = codec.quality_for_psnr(target.value, data_range)
    streams: list[bytes] = []
    achieved = -math.inf
    for _ in range(4):
        streams = encode(Setting("quality", knob))
        tally = ErrorTally()
        for index, stream in enumerate(streams):
            codes = encoder.chunk(index)
            decoded = codec.decode(stream, shape=codes.shape, dtype=codes.dtype)
            tally.add(encoder.trim(index, codes), encoder.trim(index, decoded))
        achieved = tally.psnr(data_range)
        if achieved >= target.value and achieved - target.value <= _PSNR_TOLERANCE_DB:
            break
        knob = min(max(knob + (target.value - achieved) + 0.02, codec.quality_range[0]),
                   codec.quality_range[1])
    setting = Setting("quality", knob)
    return _Found(setting, streams, achieved >= target.value - _PSNR_TOLERANCE_DB,
                  codec.error_bound(setting))


#: Codecs that reach the highest ratios (suggested when another cannot).
FAR_REACHING = ("jpeg2k", "sperr")


def _refuse_out_of_reach(found: _Found, codec: SliceCodec, target: Target, ratio: float,
                         source: str, further: Sequence[str] = FAR_REACHING) -> None:
    """Stop, writing nothing, when no setting of the codec meets the ratio; ``ratio`` is what
    its closest end gives (every stored byte counted); ``further``: codecs to suggest."""
    if not found.out_of_reach:
        return
    if ratio < target.value:
        others = [n for n in further if n != codec.name]
        advice = f"use --codec {' or '.join(others)}, or a lower ratio" if others \
            else "use a lower ratio (or a larger volume)"
        raise MedlossyError(source, f"codec {codec.name!r} cannot reach x{target.value:g}: "
                                    f"its coarsest setting gives x{ratio:.2f}; {advice}")
    raise MedlossyError(source, f"codec {codec.name!r} cannot reach x{target.value:g}: its "
                                f"finest lossy setting gives x{ratio:.2f} and it has no "
                                "lossless mode; use a higher ratio, or --codec jpeg2k")


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
    try:
        require_mode(codec, target.mode)
        if target.mode == "ratio" and target.allocation != "psnr" and not codec.per_chunk_ratio:
            raise CodecError(f"codec {codec.name!r} has no per-chunk ratio: use the default "
                             "allocation (psnr)")
    except CodecError as error:
        raise MedlossyError(None, str(error)) from None
    max_error_codes = _codes_bound(target, mapping, source) if target.mode == "max_error" else 0
    if codec.discrete and max_error_codes > codec.quality_range[1]:
        raise MedlossyError(source, f"codec {codec.name!r} allows a maximum error of at most "
                                    f"{codec.quality_range[1]:g} codes, asked {max_error_codes}")
    workers = workers or default_workers()
    started = time.perf_counter()
    passes = 0
    with slice_encoder(codec, (layout.slices, layout.rows, layout.columns),
                       mapping.code_dtype, workers, layout.tile) as encoder:
        mapping_tally = _fill(encoder, volume, mapping, source)

        def encode(setting: Setting) -> list[bytes]:
            nonlocal passes
            passes += 1
            return encoder.encode_all(setting, label=f"{Path(source).name} pass {passes}",
                                      show_progress=show_progress)

        # The search measures PSNR on codes: the peak in code units.
        found = _search(encode, encoder, count_bytes, target, plan.raw,
                        plan.peak / mapping.step, max_error_codes)
        _refuse_out_of_reach(found, codec, target, plan.raw / count_bytes(found.streams),
                             source, further)
        try:
            verify_chunks(codec, encoder.chunk, found.streams, found.bound,
                          [encoder.held(i).start for i in range(encoder.chunks)], workers)
        except VerifyError as error:
            raise MedlossyError(source, str(error)) from None
    seconds = time.perf_counter() - started
    tally, codec_tally = _measure_errors(volume, source, found.streams, codec, layout, workers)
    return Encoding(found.setting, found.streams, found.reached, tally, passes, seconds,
                    mapping_tally, codec_tally)


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
    coarsest = Setting("max_error", codec.quality_range[1]) if codec.discrete \
        else Setting("quality", codec.quality_range[0])
    with slice_encoder(codec, (layout.slices, layout.rows, layout.columns),
                       mapping.code_dtype, workers or default_workers(),
                       layout.tile) as encoder:
        _fill(encoder, volume, mapping, source)
        highest = plan.raw / count_bytes(encoder.encode_all(coarsest))
        if "lossless" in codec.modes:
            return highest, None
        finest = encoder.encode_all(Setting("quality", codec.quality_range[1]))
        return highest, plan.raw / count_bytes(finest)


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
    layered survey encode and a few final passes (``medlossy.layered_rate``) instead of a
    search per ratio; a ratio those passes cannot meet, and every ratio without ``layered``,
    is searched alone as ``compress_volume`` would. Each store is what ``compress_volume``
    writes, except that ``encode_passes`` and ``timing.encode_seconds`` are the whole group's.
    ``on_store(ratio, attributes, decoded volume, decode seconds)`` runs as each store is
    written, with the volume decoded from exactly the stored codestreams (callers need not
    decode again). ``keep``: the ratios to write (default all); the others are encoded all
    the same, so that each store is the same whichever ratios a rerun has left to do.
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
    passes = 0
    found: dict[float, _Found] = {}
    with slice_encoder(codec, (layout.slices, layout.rows, layout.columns),
                       mapping.code_dtype, workers) as encoder:
        mapping_tally = _fill(encoder, volume, mapping, source)

        def encode(setting: Setting) -> list[bytes]:
            nonlocal passes
            passes += 1
            return encoder.encode_all(setting, label=f"{Path(source).name} pass {passes}",
                                      show_progress=show_progress)

        lossless: list[bytes] | None = None
        if 1 in ratios:
            lossless = encode(Setting("lossless"))
            found[1] = _Found(Setting("lossless"), lossless, True, 0.0)
        if layered and lossy and hasattr(codec, "encode_layers"):
            budgets = {r: int(plan.raw / r) for r in lossy}
            cut, layered_passes, beyond = encode_ratios(
                encoder, budgets, {r: counters[r] for r in lossy}, codec.quality_range,
                tolerance=SEARCH_TOLERANCE, show_progress=show_progress)
            passes += layered_passes
            for ratio, result in cut.items():
                setting = Setting("mixed") if result.quality is None \
                    else Setting("quality", result.quality)
                found[ratio] = _Found(setting, result.streams, result.reached)
            for ratio in lossy:
                if ratio in found or ratio not in beyond:
                    continue
                # Even the best lossy quality is under budget (x2 on most CT): lossless if
                # it fits, as the search would decide.
                if lossless is None:
                    lossless = encode(Setting("lossless"))
                if counters[ratio](lossless) <= budgets[ratio] * (1.0 + RATIO_TOLERANCE):
                    found[ratio] = _Found(Setting("lossless"), lossless, False, 0.0)
        for ratio in lossy:
            if ratio not in found:
                found[ratio] = _search(encode, encoder, counters[ratio], targets[ratio],
                                       plan.raw, plan.peak / mapping.step)
            _refuse_out_of_reach(found[ratio], codec, targets[ratio],
                                 plan.raw / counters[ratio](found[ratio].streams), source)
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
                                passes, seconds, mapping_tally, codec_tally)
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
