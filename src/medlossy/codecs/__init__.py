"""Codecs, found by name; each built-in one is imported when first asked for (``get_codec``,
``codec_names``, or an attribute of this package), so that a reader imports only its codec.

Slice codecs (one 2D codestream per axial slice): jpeg2k, htj2k, jpegxl, jpegls, blosc
(lossless, any dtype). Block codecs
(one 3D stream per block of slices): sperr, sz3, zfp.
"""

import importlib
from types import ModuleType

from medlossy.codecs.base import (
    CodecError,
    Setting,
    SliceCodec,
    codec_names,
    codec_type,
    get_codec,
    require_mode,
)

__all__ = ["CodecError", "Setting", "SliceCodec", "blocks", "blosc", "codec_names", "codec_type",
           "get_codec", "htj2k", "jpeg2k", "jpegls", "jpegxl", "require_mode", "sperr", "sz3",
           "zfp"]

_MODULES = ("blocks", "blosc", "htj2k", "jpeg2k", "jpegls", "jpegxl", "sperr", "sz3", "zfp")


def __getattr__(name: str) -> ModuleType:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
