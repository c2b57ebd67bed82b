"""SZ3 (prediction + quantisation, 3D) through imagecodecs, under an absolute error bound."""

from __future__ import annotations

import imagecodecs
import numpy as np

from medlossy.codecs.base import Setting, register
from medlossy.codecs.blocks import FloatBlockCodec


@register
class Sz3Codec(FloatBlockCodec):
    """SZ3 3D with an absolute error bound; its streams do not record shape or type."""

    name = "sz3"
    available = bool(imagecodecs.SZ3.available)
    library = imagecodecs.sz3_version() if available else "SZ3"
    extra = "imagecodecs built with SZ3 (the PyPI wheels of imagecodecs>=2024.9.22)"
    standard = "SZ3 stream, one per block of slices"
    transform = "3D interpolation/Lorenzo prediction, error-bounded quantisation"

    def encode_float(self, block: np.ndarray, setting: Setting) -> bytes:
        return imagecodecs.sz3_encode(block, "abs", self.float_bound(setting))

    def decode_float(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return imagecodecs.sz3_decode(data, shape, np.float32)
