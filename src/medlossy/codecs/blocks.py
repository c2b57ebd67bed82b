"""3D error-bounded codecs (SPERR, SZ3, ZFP) on blocks of slices, and their zarr codec.

These libraries compress floating-point fields under an absolute error bound. medlossy gives
them blocks of ``BLOCK_DEPTH`` slices of 16-bit codes as float32 and rounds what they decode
back to the codes' integers. With a float bound of ``k + 0.45`` the rounded result is within
the integer ``k`` of the source (both are integers and differ by less than k + 1), so a
maximum-error target of ``k`` codes costs the bytes of a bound almost half a code wider.

The chunk files are the libraries' own streams; stock zarr reads them through
``BlockCodec`` (numcodecs id ``medlossy.block``), registered when ``medlossy.codecs`` is
imported and through the ``numcodecs.codecs`` entry point of an installed medlossy.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar

import numpy as np
from numcodecs.abc import Codec as NumcodecsCodec
from numcodecs.compat import ensure_bytes
from numcodecs.registry import register_codec

from medlossy.codecs.base import Setting, SliceCodec

#: Slices per stored block: 16 keeps patch reads small while the 3D transform has depth.
BLOCK_DEPTH = 16
#: Margin of the float bound over the integer target (see the module docstring).
ROUNDING_MARGIN = 0.45
#: PSNR (dB) of a uniform error of bound ``b`` codes is about 20 log10(peak / b) + this.
_BOUND_GAIN_DB = 6.0


def bound_for(quality: float) -> float:
    """Absolute float error bound (codes) of quality knob ``quality`` (dB)."""
    return 10.0 ** (-quality / 20.0) * 65536.0


def quality_for_bound(bound: float) -> float:
    return -20.0 * math.log10(bound / 65536.0)


def to_codes(values: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """Float output rounded and clipped to the integer code type."""
    info = np.iinfo(np.dtype(dtype))
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


class FloatBlockCodec(SliceCodec):
    """A 3D float codec applied to (depth, rows, columns) blocks of integer codes."""

    block_depth = BLOCK_DEPTH
    modes = frozenset({"ratio", "psnr", "max_error"})
    quality_range = (0.0, 110.0)
    standard: ClassVar[str]
    transform: ClassVar[str] = ""

    @abstractmethod
    def encode_float(self, block: np.ndarray, setting: Setting) -> bytes:
        """Encode a float32 block."""

    @abstractmethod
    def decode_float(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """Decode a float32 block of ``shape``."""

    def float_bound(self, setting: Setting) -> float:
        """The library's absolute error bound for ``setting`` (codes)."""
        if setting.mode == "max_error":
            return setting.value + ROUNDING_MARGIN
        return bound_for(setting.value)

    def encode(self, image: np.ndarray, setting: Setting) -> bytes:
        if image.ndim != 3:
            raise ValueError(f"{self.name} encodes 3D blocks, got shape {image.shape}")
        return bytes(self.encode_float(np.ascontiguousarray(image, dtype=np.float32), setting))

    def decode(self, data: bytes, shape: tuple[int, ...] | None = None,
               dtype: np.dtype | str | None = None) -> np.ndarray:
        if shape is None or dtype is None:
            raise ValueError(f"{self.name} blocks decode only with their shape and dtype")
        return to_codes(self.decode_float(data, tuple(shape)), dtype)

    def store_codec(self, chunk_shape: tuple[int, ...] = (), dtype: str = "<i2",
                    ) -> BlockCodec:
        return BlockCodec(codec=self.name, shape=list(chunk_shape), dtype=dtype)

    def describe(self, setting: Setting) -> dict:
        return {"name": self.name, "standard": self.standard, "encoder": self.library,
                "block_depth": self.block_depth, "transform": self.transform,
                "rounding": "decoded floats rounded to the nearest code"}

    def quality_for_psnr(self, psnr_db: float, data_range: float) -> float:
        return quality_for_bound(data_range / 10.0 ** ((psnr_db - _BOUND_GAIN_DB) / 20.0))

    def error_bound(self, setting: Setting) -> float | None:
        if setting.mode == "quality":
            return math.floor(self.float_bound(setting) + 0.5)
        return super().error_bound(setting)


class BlockCodec(NumcodecsCodec):
    """numcodecs codec for stock zarr: a medlossy 3D block codec, rounded to integer codes."""

    codec_id = "medlossy.block"

    def __init__(self, codec: str, shape: list[int], dtype: str = "<i2") -> None:
        self.codec, self.shape, self.dtype = codec, list(shape), dtype

    def _inner(self) -> FloatBlockCodec:
        from medlossy.codecs.base import get_codec

        inner = get_codec(self.codec)
        assert isinstance(inner, FloatBlockCodec)
        return inner

    def encode(self, buf):
        raise NotImplementedError("medlossy writes these blocks itself (medlossy compress)")

    def decode(self, buf, out=None):
        decoded = self._inner().decode(ensure_bytes(buf), shape=tuple(self.shape),
                                       dtype=self.dtype)
        if out is not None:
            np.copyto(np.asarray(out).reshape(decoded.shape), decoded)
            return out
        return decoded

    def get_config(self) -> dict:
        return {"id": self.codec_id, "codec": self.codec, "shape": self.shape,
                "dtype": self.dtype}


register_codec(BlockCodec)
