"""What every slice codec provides, and the registry that finds one by name.

The rest of medlossy (rate control, store, study) only talks to this interface, so HTJ2K,
JPEG XL or SZ3 plug in as one more module without touching callers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from numcodecs.abc import Codec as NumcodecsCodec

Mode = Literal["lossless", "ratio", "quality", "mixed"]


@dataclass(frozen=True)
class Setting:
    """How to encode one slice.

    ``ratio``: the codec's own per-slice size target (raw 16-bit bytes / codestream bytes).
    ``quality``: the codec's distortion knob, larger means better and bigger; for JPEG 2000 it
    is PSNR in dB against the 16-bit peak 65535. ``mixed`` only records that slices were
    encoded with different settings (the "optimal" allocation); it is never encoded.
    """

    mode: Mode
    value: float = 0.0


class SliceCodec(ABC):
    """Encodes 2D 16-bit slices to self-contained codestreams and back."""

    name: ClassVar[str]
    available: ClassVar[bool] = True
    #: Bounds of ``Setting("quality", x)`` worth searching.
    quality_range: ClassVar[tuple[float, float]] = (0.0, 0.0)
    #: True for codecs that store any dtype unchanged (no 16-bit mapping) and only losslessly.
    any_dtype: ClassVar[bool] = False

    @abstractmethod
    def encode(self, image: np.ndarray, setting: Setting) -> bytes:
        """Encode a 2D array (int16/uint16 unless ``any_dtype``)."""

    @abstractmethod
    def decode(self, data: bytes, shape: tuple[int, int] | None = None,
               dtype: str | None = None) -> np.ndarray:
        """Decode one codestream to a 2D array of the dtype that was encoded.

        ``shape`` and ``dtype`` are what the store says a slice is; codecs whose streams do
        not carry them (Blosc) need them, self-describing ones (JPEG 2000) ignore them.
        """

    @abstractmethod
    def store_codec(self) -> NumcodecsCodec:
        """The numcodecs codec that stock zarr uses to read these codestreams."""

    @abstractmethod
    def describe(self, setting: Setting) -> dict:
        """Parameters to record in the store (library, version, transform, levels)."""

    def quality_for_psnr(self, psnr_db: float, data_range: float) -> float:
        """The quality knob value expected to give ``psnr_db`` at peak ``data_range``."""
        raise NotImplementedError(f"codec {self.name!r} has no PSNR target")


_REGISTRY: dict[str, type[SliceCodec]] = {}


def register(codec_type: type[SliceCodec]) -> type[SliceCodec]:
    """Class decorator: make a codec available by its ``name``."""
    _REGISTRY[codec_type.name] = codec_type
    return codec_type


def get_codec(name: str) -> SliceCodec:
    """An instance of the codec registered as ``name``."""
    try:
        codec_type = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    if not codec_type.available:
        raise ValueError(f"codec {name!r} is not installed")
    return codec_type()


def codec_names() -> list[str]:
    return sorted(_REGISTRY)
