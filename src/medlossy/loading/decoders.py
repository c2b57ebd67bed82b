"""Decode one stored slice at full or reduced resolution, the cheapest way each codec allows.

JPEG 2000 and HTJ2K codestreams carry their resolution levels: level ``L`` is the wavelet's
low-pass image, ``ceil(n / 2**L)`` pixels a side, and decoding it skips the finer levels'
work. imagecodecs exposes this for HTJ2K (OpenJPH, ``skipres``) but not for JPEG 2000, so
JPEG 2000 reduced levels go through glymur (OpenJPEG's ``reduce``, file based: the codestream
is written to a temporary file in memory-backed /dev/shm when it exists). A codec without a
reduced decoder is decoded in full and block-averaged, which gives the same shape.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np

from medlossy.codecs import SliceCodec

_SHM = Path("/dev/shm")


def _glymur_reduced(data: bytes, level: int) -> np.ndarray:
    import glymur  # optional: only JPEG 2000 reduced-level reads need it

    directory = _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=".j2k", dir=directory) as file:
        file.write(data)
        file.flush()
        step = 2**level  # glymur spells OpenJPEG's reduce as a strided slice
        return glymur.Jp2k(file.name)[::step, ::step]


def _htj2k_reduced(data: bytes, level: int) -> np.ndarray:
    return imagecodecs.htj2k_decode(data, skipres=level)


def glymur_available() -> bool:
    try:
        import glymur
    except ImportError:
        return False
    return glymur.lib.openjp2.OPENJP2 is not None


#: Codec name -> decoder of resolution level ``level`` (1 = half size) from the codestream.
REDUCED_DECODERS: dict[str, Callable[[bytes, int], np.ndarray]] = {"htj2k": _htj2k_reduced}
if glymur_available():
    REDUCED_DECODERS["jpeg2k"] = _glymur_reduced


def block_mean(image: np.ndarray, level: int) -> np.ndarray:
    """Average 2**level x 2**level blocks (edge blocks partial): ceil(n / 2**level) a side."""
    factor = 2**level
    rows, columns = (-(-n // factor) for n in image.shape)
    padded = np.pad(image.astype(np.float32), [(0, rows * factor - image.shape[0]),
                                               (0, columns * factor - image.shape[1])],
                    mode="edge")
    return padded.reshape(rows, factor, columns, factor).mean(axis=(1, 3))


def decode_slice(codec: SliceCodec, data: bytes, level: int = 0,
                 shape: tuple[int, int] | None = None, dtype: str | None = None) -> np.ndarray:
    """Codes of one slice at resolution ``level`` (0 = full size); ``shape`` and ``dtype``
    are the store's, for codecs whose streams do not carry them."""
    if level == 0:
        return codec.decode(data, shape, dtype)
    reduced = REDUCED_DECODERS.get(codec.name)
    if reduced is not None:
        return reduced(data, level)
    return block_mean(codec.decode(data, shape, dtype), level)


def has_reduced_decoder(codec_name: str) -> bool:
    return codec_name in REDUCED_DECODERS
