"""One call for every mode: the target's mode picks its entry point.

``require_target(codec, target)`` refuses what the codec cannot aim for, before any encode;
``search(target, ...)`` -> ``search_ratio`` | ``search_psnr`` | ``encode_max_error`` |
``encode_lossless``, each of which encodes the volume as often as it needs (``Encodes``).
"""

from __future__ import annotations

from medlossy.codecs import CodecError, SliceCodec, require_mode
from medlossy.errors import MedlossyError
from medlossy.ratecontrol.base import ByteCounter, Encodes, Found, Target
from medlossy.ratecontrol.lossless import encode_lossless
from medlossy.ratecontrol.max_error import encode_max_error
from medlossy.ratecontrol.psnr import search_psnr
from medlossy.ratecontrol.ratio import search_ratio


def require_target(codec: SliceCodec, target: Target) -> None:
    """Refuse (one line, exit 2) a mode ``codec`` lacks, or a ratio allocation other than
    "psnr" from a codec without a per-chunk ratio."""
    try:
        require_mode(codec, target.mode)
        if target.mode == "ratio" and target.allocation != "psnr" and not codec.per_chunk_ratio:
            raise CodecError(f"codec {codec.name!r} has no per-chunk ratio: use the default "
                             "allocation (psnr)")
    except CodecError as error:
        raise MedlossyError(None, str(error)) from None


def search(target: Target, encodes: Encodes, count_bytes: ByteCounter, raw: int,
           peak_codes: float, max_error_codes: int = 0) -> Found:
    """Encode until ``target`` is met. ``count_bytes`` prices a candidate (ratio mode),
    ``raw`` is the ratio's numerator, ``peak_codes`` the PSNR peak in code units and
    ``max_error_codes`` the bound of a max-error target (``max_error_codes()``)."""
    if target.mode == "lossless":
        return encode_lossless(encodes)
    if target.mode == "max_error":
        return encode_max_error(encodes, max_error_codes)
    if target.mode == "psnr":
        return search_psnr(encodes, target.value, peak_codes)
    return search_ratio(encodes, count_bytes, target, raw)
