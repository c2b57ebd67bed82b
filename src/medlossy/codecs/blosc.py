"""Blosc with zstd (numcodecs): lossless storage of any dtype, for what JPEG 2000 cannot hold.

JPEG 2000 lossless here holds 16-bit integers. Float volumes with fractional values and
integers that need more than 16 bits are stored exactly with Blosc instead: each chunk is a
plain Blosc frame of the slice's bytes, which stock zarr decodes with its built-in numcodecs
Blosc codec. Lossless only: there is no rate to control.
"""

from __future__ import annotations

import numcodecs
import numpy as np
from numcodecs import Blosc

from medlossy.codecs.base import Setting, SliceCodec, register

#: zstd level 5 with byte shuffling: the usual Zarr choice for image data.
CNAME, CLEVEL, SHUFFLE = "zstd", 5, Blosc.SHUFFLE


@register
class BloscCodec(SliceCodec):
    """Lossless Blosc/zstd of the slice's own bytes."""

    name = "blosc"
    any_dtype = True
    modes = frozenset({"lossless"})
    library = f"Blosc (zstd) via numcodecs {numcodecs.__version__}"
    extra = "numcodecs (a core dependency)"

    def __init__(self) -> None:
        self._blosc = Blosc(cname=CNAME, clevel=CLEVEL, shuffle=SHUFFLE)

    def encode(self, image: np.ndarray, setting: Setting) -> bytes:
        if setting.mode != "lossless":
            raise ValueError("codec 'blosc' is lossless only; use --lossless, or "
                             "--codec jpeg2k for a ratio or PSNR target")
        return bytes(self._blosc.encode(np.ascontiguousarray(image)))

    def decode(self, data: bytes, shape: tuple[int, int] | None = None,
               dtype: str | None = None) -> np.ndarray:
        if shape is None or dtype is None:
            raise ValueError("a Blosc chunk needs the store's slice shape and dtype to decode")
        raw = self._blosc.decode(data)
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(raw) != expected:
            raise ValueError(f"decodes to {len(raw)} bytes, expected {expected}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def store_codec(self, chunk_shape: tuple[int, ...] = (), dtype: str = "<i2") -> Blosc:
        return Blosc(cname=CNAME, clevel=CLEVEL, shuffle=SHUFFLE)

    def describe(self, setting: Setting) -> dict:
        return {
            "name": self.name,
            "standard": "Blosc (zstd, byte shuffle), lossless: the slice's own values, "
                        "exactly",
            "encoder": f"numcodecs {numcodecs.__version__}",
            "wavelet": "none (lossless)",
            "cname": CNAME,
            "clevel": CLEVEL,
            "shuffle": "byte",
        }
