"""Map a volume's values onto the integers a codec stores, and back.

Integer data that fits 16 bits passes through unchanged (lossless). Integers of 8 or 16 bits
are coded in their own type (uint8 as 8-bit codes, uint16 as unsigned 16-bit ones), so that a
lossy decoder that clamps its output to the codestream's sample range (OpenJPEG, libjxl and
CharLS do; see ``SliceCodec.clamps``) returns values within the source type's range to every
reader, stock zarr included.
Integers stored with a file's own scaling (NIfTI scl_slope/scl_inter) keep those integers as
codes and the file's scaling as the mapping, so nothing is rounded. Anything else (float MR,
wide integers) is rescaled linearly onto 0..65535; the scale and offset are stored and the
worst rounding error is reported, since that loss happens before the codec sees the data.
Wide integers use a power-of-two step and an offset that keeps every code within the type,
so that zarr's FixedScaleOffset (which truncates to the integer dtype, and wraps what does
not fit) returns exactly the integers medlossy's rounding gives. Codes go back to integer
types clipped to the type's range. Codecs that hold any dtype (Blosc) take the values
unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

_INT16 = np.iinfo(np.int16)
_UINT16 = np.iinfo(np.uint16)
#: Codes kept free above the top code for a lossy decoder that wraps what overshoots the code
#: type instead of clamping (OpenJPH): it overshot a bright edge by up to one quantisation
#: step, 6300 codes at HTJ2K's coarsest (measured), so a quarter of 16 bits leaves 2.5 times that.
WRAP_HEADROOM = 16384


@dataclass(frozen=True)
class CodeMapping:
    """value = code / scale + offset (the convention of numcodecs' FixedScaleOffset).

    ``slope`` is set when the codes are the source file's own stored integers (NIfTI
    scl_slope/scl_inter): values are then ``(code + shift) * slope + offset``, computed as
    the file's reader (nibabel) computes them, and ``scale`` is ``1 / slope`` for zarr's
    filter. ``shift`` moves signed stored integers into uint16 for codecs that take no
    others (JPEG XL, JPEG-LS, DICOM Secondary Capture); it is exact, being integer.
    """

    original_dtype: str
    code_dtype: str
    offset: float = 0.0
    scale: float = 1.0
    slope: float | None = None
    shift: int = 0

    @property
    def rescaled(self) -> bool:
        return self.offset != 0.0 or self.scale != 1.0

    @property
    def exact(self) -> bool:
        """True when codes map back to the original values without rounding."""
        return self.slope is not None or (self.scale == 1.0
                                           and float(self.offset).is_integer())

    @property
    def linear_offset(self) -> float:
        """The value of code 0, for decoders that apply one scale and offset (zarr's
        FixedScaleOffset, DICOM Rescale Intercept)."""
        if self.slope is None:
            return self.offset
        return self.shift * self.slope + self.offset

    @property
    def step(self) -> float:
        """Value units per code unit."""
        return abs(self.slope) if self.slope is not None else 1.0 / abs(self.scale)

    @property
    def max_rounding_error(self) -> float:
        """Largest error introduced by the mapping alone, in original units."""
        if self.exact:
            return 0.0
        if np.issubdtype(np.dtype(self.original_dtype), np.integer):
            # to_values rounds again to whole numbers: half a code step, rounded half up.
            return float(np.floor(0.5 / self.scale + 0.5))
        return 0.5 / self.scale

    def to_codes(self, values: np.ndarray) -> np.ndarray:
        if not self.rescaled:
            return values.astype(self.code_dtype, copy=False)
        if self.slope is not None:
            codes = np.rint((values.astype(np.float64) - self.offset) / self.slope)
            return (codes - self.shift).astype(self.code_dtype)
        codes = np.rint((values.astype(np.float64) - self.offset) * self.scale)
        return np.clip(codes, _UINT16.min, _UINT16.max).astype(np.uint16)

    @property
    def value_limits(self) -> tuple[int, int] | None:
        """The range of an integer source type, which decoded values are clipped to (a lossy
        decoder overshoots the source's extremes); None for floats."""
        original = np.dtype(self.original_dtype)
        if original.kind not in "iu":
            return None
        info = np.iinfo(original)
        return int(info.min), int(info.max)

    def clip(self, values: np.ndarray) -> np.ndarray:
        """``values`` (any dtype) within the source type's range, as ``to_values`` gives
        them (for readers that compute values themselves, e.g. at reduced resolution)."""
        limits = self.value_limits
        if limits is None or np.can_cast(values.dtype, self.original_dtype):
            return values
        return np.clip(values, *limits)

    def to_values(self, codes: np.ndarray) -> np.ndarray:
        """Codes back to the original dtype: integers rounded (the source was integer) and
        clipped to the type's range, never wrapped."""
        if not self.rescaled:
            return self.clip(codes).astype(self.original_dtype, copy=False)
        if self.slope is not None:
            values = (codes.astype(np.float64) + self.shift) * self.slope + self.offset
        else:
            values = codes.astype(np.float64) / self.scale + self.offset
        if np.issubdtype(np.dtype(self.original_dtype), np.integer):
            values = np.rint(values)
        return self.clip(values).astype(self.original_dtype)

    def to_dict(self) -> dict:
        document = {**asdict(self), "exact": self.exact,
                    "max_rounding_error": self.max_rounding_error}
        if self.slope is None:
            del document["slope"]
        if not self.shift:
            del document["shift"]
        return document


def _own_type_mapping(dtype: np.dtype, unsigned: bool) -> CodeMapping:
    """An 8- or 16-bit integer type coded in a type of its own range: itself, or (for
    ``unsigned`` codes of a signed 8-bit type) its unsigned twin offset by the type's minimum.
    Decoders clamp to the codestream's range, so decoded values stay within the type's."""
    if dtype.kind == "u" or not unsigned:
        return CodeMapping(dtype.str, dtype.str)
    return CodeMapping(dtype.str, np.dtype(f"u{dtype.itemsize}").str,
                       offset=float(np.iinfo(dtype).min), scale=1.0)


def _offset_within(dtype: np.dtype, low: float, step: float) -> float:
    """The offset (value of code 0) nearest ``low`` whose codes 0..65535 all map inside an
    integer ``dtype`` wider than them: zarr's FixedScaleOffset then never has to cast a value
    the type cannot hold, whatever a lossy decoder returns (``low`` for narrower types)."""
    if dtype.kind not in "iu":
        return float(low)
    info = np.iinfo(dtype)
    top = float(info.max) - _UINT16.max * step
    return float(low) if top <= info.min else float(max(info.min, min(low, top)))


def plan_mapping(low: float, high: float, dtype: np.dtype, all_integral: bool, *,
                 unsigned: bool = False, sixteen_bit: bool = False,
                 headroom: int = 0) -> CodeMapping:
    """Choose how values in [low, high] of ``dtype`` become 8- or 16-bit codes.

    ``all_integral`` says whether a float array holds only whole numbers (CT saved as float).
    ``unsigned``: the codec takes unsigned codes only (JPEG XL, JPEG-LS), so signed integer
    data is offset by its minimum (still exact). ``sixteen_bit``: 16-bit codes only (DICOM
    pixel data here), so 8-bit types are widened. ``headroom``: codes kept free below 65535
    where values are rescaled or offset (for a lossy decoder that wraps, ``WRAP_HEADROOM``).
    """
    dtype = np.dtype(dtype)
    # Signed 16-bit data as unsigned codes keeps the offset at the data's minimum, below: the
    # type's minimum would move CT to mid-scale, where JPEG XL's perceptual quantisation is
    # far coarser (measured on a CT slice: 2.7 times the error at a fifth of the bytes).
    own_type = dtype.kind in "iu" and (
        (dtype.itemsize == 1 and not sixteen_bit)
        or (dtype.itemsize == 2 and not (unsigned and dtype.kind == "i")))
    if own_type:
        return _own_type_mapping(dtype, unsigned)
    integral = np.issubdtype(dtype, np.integer) or dtype == np.bool_
    exact = integral or all_integral
    if exact and dtype.kind == "u" and high <= _UINT16.max:
        return CodeMapping(dtype.str, "<u2")  # unsigned codes clamp at 0, as the type does
    if exact and not unsigned and _INT16.min <= low and high <= _INT16.max:
        return CodeMapping(dtype.str, "<i2")
    if exact and _UINT16.min <= low and high <= _UINT16.max:
        return CodeMapping(dtype.str, "<u2")
    top = _UINT16.max - headroom
    if exact and high - low <= top:
        return CodeMapping(dtype.str, "<u2", offset=_offset_within(dtype, low, 1.0), scale=1.0)
    span = float(high - low) or 1.0
    if integral:
        # A power-of-two step: code * step + offset is exact in float64, so zarr's truncating
        # FixedScaleOffset and medlossy's rounding return the same integers.
        step = 2.0 ** math.ceil(math.log2(span / top))
        return CodeMapping(dtype.str, "<u2", offset=_offset_within(dtype, low, step),
                           scale=1.0 / step)
    return CodeMapping(dtype.str, "<u2", offset=float(low), scale=top / span)


def stored_integer_mapping(dtype: np.dtype, slope: float, inter: float, low: int,
                           high: int, *, unsigned: bool = False) -> CodeMapping | None:
    """Codes = the file's stored integers in [low, high] (shifted into uint16 when they do
    not fit as they are, or ``unsigned`` codes are needed), when they span 16 bits."""
    exact = {"offset": float(inter), "scale": 1.0 / slope, "slope": float(slope)}
    if not unsigned and _INT16.min <= low and high <= _INT16.max:
        return CodeMapping(np.dtype(dtype).str, "<i2", **exact)
    if _UINT16.min <= low and high <= _UINT16.max:
        return CodeMapping(np.dtype(dtype).str, "<u2", **exact)
    if high - low <= _UINT16.max:
        return CodeMapping(np.dtype(dtype).str, "<u2", **exact, shift=int(low))
    return None


def identity_mapping(dtype: np.dtype) -> CodeMapping:
    """Values stored as they are, for codecs that hold any dtype losslessly."""
    return CodeMapping(np.dtype(dtype).str, np.dtype(dtype).str)


def bits_needed(low: float, high: float) -> int:
    """Bits an integer code needs to hold every value in [low, high]."""
    return max(1, math.ceil(math.log2(float(high) - float(low) + 1)))
