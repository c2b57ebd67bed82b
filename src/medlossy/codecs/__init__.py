"""Codecs, found by name; importing this package registers the built-in ones.

Slice codecs (one 2D codestream per axial slice): jpeg2k, htj2k, jpegxl, jpegls, blosc
(lossless, any dtype). Block codecs
(one 3D stream per block of slices): sperr, sz3, zfp.
"""

from medlossy.codecs import blocks, blosc, htj2k, jpeg2k, jpegls, jpegxl, sperr, sz3, zfp
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
