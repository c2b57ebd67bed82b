"""ZFP (block transform, 3D) through imagecodecs: fixed rate, fixed accuracy or reversible.

ZFP's accuracy mode rounds its tolerance down to a power of two, so whole-volume sizes jump
by about 2x between neighbouring tolerances: a ratio or PSNR is searched in fixed-rate mode
(quality knob = 6.02 dB per bit per value), the maximum error in fixed-accuracy mode. Fixed
rate is poor on CT (shared/CODECS.md: 33 dB at x50), so a ratio search also mixes, block by
block, fixed-accuracy encodes around the budget with fixed-rate ones (``ratio_ladder``).

ZFP's tolerance is a loose bound: on CT blocks the error stays at a quarter of it or less. A
maximum-error target therefore tries each block at doubling tolerances and keeps the
largest whose decoded, rounded block is within the target (measured, not assumed).
"""

from __future__ import annotations

import imagecodecs
import numpy as np

from medlossy.codecs.base import Setting, register
from medlossy.codecs.blocks import ROUNDING_MARGIN, FloatBlockCodec

_DB_PER_BIT = 6.02
#: Doublings of the tolerance tried beyond ZFP's guarantee for a maximum error.
_WIDENINGS = 4
#: Maximum errors 1, 2, 4 ... 2**15 codes offered to a ratio search.
_LADDER_STEPS = 16


@register
class ZfpCodec(FloatBlockCodec):
    """ZFP 3D on float32 blocks."""

    name = "zfp"
    available = bool(imagecodecs.ZFP.available)
    library = imagecodecs.zfp_version() if available else "ZFP"
    extra = "imagecodecs built with ZFP (the PyPI wheels of imagecodecs>=2024.9.22)"
    standard = "ZFP stream with header, one per block of slices"
    transform = "4x4x4 decorrelating block transform, embedded coding"
    modes = frozenset({"ratio", "psnr", "max_error", "lossless"})
    # Fixed rate from 0.1 to 24 bits per value.
    quality_range = (0.6, 144.0)

    def encode_float(self, block: np.ndarray, setting: Setting) -> bytes:
        if setting.mode == "lossless":
            return imagecodecs.zfp_encode(block, mode="R")
        if setting.mode == "max_error":
            return self._widest_within(block, setting.value)
        return imagecodecs.zfp_encode(block, setting.value / _DB_PER_BIT, mode="r")

    def _widest_within(self, block: np.ndarray, bound: float) -> bytes:
        tolerance = bound + ROUNDING_MARGIN  # ZFP's own guarantee: always within the bound
        best = imagecodecs.zfp_encode(block, tolerance, mode="a")
        for _ in range(_WIDENINGS):
            tolerance *= 2.0
            stream = imagecodecs.zfp_encode(block, tolerance, mode="a")
            decoded = np.rint(imagecodecs.zfp_decode(stream))
            if np.abs(decoded - block).max() > bound:
                break
            best = stream
        return best

    def ratio_ladder(self) -> list[Setting]:
        # Fixed accuracy is 2-9 dB better than fixed rate at equal ratio on CT (BENCHMARKS.md)
        # but its sizes double between tolerances: blocks mix with fixed-rate ones to land.
        return [Setting("max_error", float(2**k)) for k in range(_LADDER_STEPS)]

    def decode_float(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return imagecodecs.zfp_decode(data).reshape(shape)

    def quality_for_psnr(self, psnr_db: float, data_range: float) -> float:
        # Fixed rate spends bits where nothing needs them: about 3 bits above the bits that
        # the PSNR's precision alone would take (measured on CT blocks); a first guess only.
        return psnr_db - 20.0 + 3 * _DB_PER_BIT

    def error_bound(self, setting: Setting) -> float | None:
        if setting.mode == "quality":
            return None  # fixed rate bounds bits, not errors
        return super().error_bound(setting)
