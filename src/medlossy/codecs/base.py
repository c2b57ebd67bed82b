"""What every codec provides, and the registry that finds one by name.

The rest of medlossy (rate control, store, study) only talks to this interface, so HTJ2K,
JPEG XL or SZ3 plug in as one more module without touching callers.

A codec encodes one *chunk*: a 2D slice for slice codecs (``block_depth == 1``) or a block of
``block_depth`` consecutive slices, (depth, rows, columns), for 3D codecs. The store keeps one
chunk per file either way.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from numcodecs.abc import Codec as NumcodecsCodec

Mode = Literal["lossless", "ratio", "quality", "max_error", "mixed"]
#: What a user can ask a codec for (``Target.mode`` values).
TargetMode = Literal["ratio", "psnr", "max_error", "lossless"]


class CodecError(ValueError):
    """The codec is unknown, not installed, or lacks the mode asked for."""


@dataclass(frozen=True)
class Setting:
    """How to encode one chunk.

    ``ratio``: the codec's own per-chunk size target (raw 16-bit bytes / codestream bytes).
    ``quality``: the codec's distortion knob, larger means better and bigger; every codec
    scales it in decibels (one step of 6 dB about doubles the precision), so a PSNR shortfall
    in dB is a good correction of the knob. ``max_error``: the largest absolute error allowed,
    in codes. ``mixed`` only records that chunks were encoded with different settings (the
    "optimal" allocation); it is never encoded.
    """

    mode: Mode
    value: float = 0.0


class SliceCodec(ABC):
    """Encodes chunks of 16-bit codes (a slice, or a block of slices) to codestreams and back."""

    name: ClassVar[str]
    available: ClassVar[bool] = True
    #: Bounds of ``Setting("quality", x)`` worth searching.
    quality_range: ClassVar[tuple[float, float]] = (0.0, 0.0)
    #: True for codecs that store any dtype unchanged (no 16-bit mapping) and only losslessly.
    any_dtype: ClassVar[bool] = False
    #: Slices per chunk: 1 for slice (2D) codecs, more for 3D codecs.
    block_depth: ClassVar[int] = 1
    #: Target modes this codec offers.
    modes: ClassVar[frozenset[str]] = frozenset({"ratio", "psnr", "lossless"})
    #: Whether ``Setting("ratio", r)`` is encoded directly (the "equal" allocation needs it).
    per_chunk_ratio: ClassVar[bool] = False
    #: Only whole-number quality values exist (JPEG-LS NEAR): a ratio is met by mixing the two
    #: neighbouring values chunk by chunk instead of a continuous search.
    discrete: ClassVar[bool] = False
    #: The codec takes only unsigned codes (signed data is offset by its minimum).
    unsigned_only: ClassVar[bool] = False
    #: The decoder clamps what it returns to the codestream's sample range (OpenJPEG, libjxl,
    #: CharLS do), so 8-bit sources are coded as 8-bit samples and every reader, stock zarr
    #: included, gets values the source type holds. False: 8-bit sources get 16-bit codes,
    #: whose headroom keeps what the decoder returns unwrapped (medlossy clips it).
    clamps: ClassVar[bool] = True
    #: Whether a slice may be stored as tiles, each its own codestream (``compress --tile``).
    tiles: ClassVar[bool] = False
    #: Where it runs, the library that implements it, and what installs it.
    hardware: ClassVar[str] = "CPU"
    library: ClassVar[str] = ""
    extra: ClassVar[str] = "imagecodecs (a core dependency)"

    @abstractmethod
    def encode(self, image: np.ndarray, setting: Setting) -> bytes:
        """Encode one chunk: a 2D (slice codecs) or 3D (block codecs) int16/uint16 array
        (any dtype if ``any_dtype``)."""

    @abstractmethod
    def decode(self, data: bytes, shape: tuple[int, ...] | None = None,
               dtype: np.dtype | str | None = None) -> np.ndarray:
        """Decode one codestream to an array of the shape and dtype that was encoded.

        Codecs whose streams do not record them (Blosc, 3D float codecs) need ``shape`` and
        ``dtype``; the others ignore both.
        """

    @abstractmethod
    def store_codec(self, chunk_shape: tuple[int, ...] = (), dtype: str = "<i2",
                    ) -> NumcodecsCodec:
        """The numcodecs codec that stock zarr uses to read these codestreams (chunks of
        ``chunk_shape`` codes of ``dtype``; self-describing codestreams ignore both)."""

    @abstractmethod
    def describe(self, setting: Setting) -> dict:
        """Parameters to record in the store (library, version, transform, levels)."""

    def ratio_ladder(self) -> list[Setting]:
        """Settings, from most to fewest bytes, whose encodes a ratio search may also mix
        chunk by chunk with its quality knob's (a mode better than the knob's whose sizes
        jump); none by default."""
        return []

    def quality_for_psnr(self, psnr_db: float, data_range: float) -> float:
        """The quality knob value expected to give ``psnr_db`` at peak ``data_range``."""
        raise NotImplementedError(f"codec {self.name!r} has no PSNR target")

    def error_bound(self, setting: Setting) -> float | None:
        """Largest absolute error (codes) an encode with ``setting`` may show, when known.

        Verification after encode holds every chunk to it; None checks shape and dtype only.
        """
        if setting.mode == "lossless":
            return 0.0
        if setting.mode == "max_error":
            return setting.value
        return None


_REGISTRY: dict[str, type[SliceCodec]] = {}
#: The built-in codecs, each registered by its module ``medlossy.codecs.<name>`` when first
#: asked for: a reader of one codec imports only that codec's libraries (stock zarr's adapter,
#: ``medlossy.codecs.zarr3``, needs only zarr, numcodecs and imagecodecs).
BUILTIN = ("blosc", "htj2k", "jpeg2k", "jpegls", "jpegxl", "sperr", "sz3", "zfp")


def _load(names: tuple[str, ...]) -> None:
    for name in names:
        if name in BUILTIN and name not in _REGISTRY:
            importlib.import_module(f"medlossy.codecs.{name}")


def register(codec_type: type[SliceCodec]) -> type[SliceCodec]:
    """Class decorator: make a codec available by its ``name``."""
    _REGISTRY[codec_type.name] = codec_type
    return codec_type


def codec_type(name: str) -> type[SliceCodec]:
    """The class registered as ``name``, installed or not."""
    _load((name,))
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; known: "
                               f"{', '.join(codec_names())}") from None


def get_codec(name: str) -> SliceCodec:
    """An instance of the codec registered as ``name``."""
    kind = codec_type(name)
    if not kind.available:
        raise CodecError(f"codec {name!r} is not installed: it needs {kind.extra}")
    return kind()


def codec_names() -> list[str]:
    _load(BUILTIN)
    return sorted(_REGISTRY)


def require_mode(codec: SliceCodec, mode: str) -> None:
    """Refuse a target mode the codec does not offer, naming those it does."""
    if mode not in codec.modes:
        offered = ", ".join(sorted(codec.modes))
        raise CodecError(f"codec {codec.name!r} has no {mode} mode (it offers: "
                               f"{offered})")
