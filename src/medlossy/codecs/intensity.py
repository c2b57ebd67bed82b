"""Map a volume's values onto the 16-bit integers a JPEG 2000 codestream holds, and back.

Integer data that fits 16 bits passes through unchanged (lossless). Anything else (float MR,
wide integers) is rescaled linearly onto 0..65535; the scale and offset are stored and the
worst rounding error is reported, since that loss happens before the codec sees the data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_INT16 = np.iinfo(np.int16)
_UINT16 = np.iinfo(np.uint16)


@dataclass(frozen=True)
class CodeMapping:
    """value = code / scale + offset (the convention of numcodecs' FixedScaleOffset)."""

    original_dtype: str
    code_dtype: str
    offset: float = 0.0
    scale: float = 1.0

    @property
    def rescaled(self) -> bool:
        return self.offset != 0.0 or self.scale != 1.0

    @property
    def exact(self) -> bool:
        """True when codes map back to the original values without rounding."""
        return self.scale == 1.0 and float(self.offset).is_integer()

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
        codes = np.rint((values.astype(np.float64) - self.offset) * self.scale)
        return np.clip(codes, _UINT16.min, _UINT16.max).astype(np.uint16)

    def to_values(self, codes: np.ndarray) -> np.ndarray:
        """Codes back to the original dtype (integers rounded, as the source was integer)."""
        if not self.rescaled:
            return codes.astype(self.original_dtype, copy=False)
        values = codes.astype(np.float64) / self.scale + self.offset
        if np.issubdtype(np.dtype(self.original_dtype), np.integer):
            values = np.rint(values)
        return values.astype(self.original_dtype)

    def to_dict(self) -> dict:
        return {**asdict(self), "exact": self.exact,
                "max_rounding_error": self.max_rounding_error}


def plan_mapping(low: float, high: float, dtype: np.dtype, all_integral: bool) -> CodeMapping:
    """Choose how values in [low, high] of ``dtype`` become 16-bit codes.

    ``all_integral`` says whether a float array holds only whole numbers (CT saved as float).
    """
    dtype = np.dtype(dtype)
    exact = np.issubdtype(dtype, np.integer) or dtype == np.bool_ or all_integral
    if exact and _INT16.min <= low and high <= _INT16.max:
        return CodeMapping(dtype.str, "<i2")
    if exact and _UINT16.min <= low and high <= _UINT16.max:
        return CodeMapping(dtype.str, "<u2")
    if exact and high - low <= _UINT16.max:
        return CodeMapping(dtype.str, "<u2", offset=float(low), scale=1.0)
    span = float(high - low) or 1.0
    return CodeMapping(dtype.str, "<u2", offset=float(low), scale=_UINT16.max / span)
