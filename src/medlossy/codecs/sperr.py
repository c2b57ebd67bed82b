"""SPERR (wavelet + SPECK, 3D) through imagecodecs, under a point-wise error bound."""

from __future__ import annotations

import imagecodecs
import numpy as np

from medlossy.codecs.base import Setting, register
from medlossy.codecs.blocks import FloatBlockCodec


@register
class SperrCodec(FloatBlockCodec):
    """SPERR 3D: CDF 9/7 wavelet, SPECK coding, outlier correction to the bound ('pwe')."""

    name = "sperr"
    available = bool(imagecodecs.SPERR.available)
    library = imagecodecs.sperr_version() if available else "SPERR"
    extra = "imagecodecs built with SPERR (the PyPI wheels of imagecodecs>=2024.9.22)"
    standard = "SPERR stream with header, one per block of slices"
    transform = "3D CDF 9/7 wavelet, SPECK, point-wise error bound"

    def encode_float(self, block: np.ndarray, setting: Setting) -> bytes:
        return imagecodecs.sperr_encode(block, self.float_bound(setting), "pwe", numthreads=1)

    def decode_float(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return imagecodecs.sperr_decode(data, numthreads=1).reshape(shape)
