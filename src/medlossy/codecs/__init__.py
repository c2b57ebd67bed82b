"""Slice codecs, found by name; importing this package registers the built-in ones."""

from medlossy.codecs import blosc, jpeg2k
from medlossy.codecs.base import Setting, SliceCodec, codec_names, get_codec

__all__ = ["Setting", "SliceCodec", "blosc", "codec_names", "get_codec", "jpeg2k"]
