"""Decode one stored slice at full or reduced resolution, the cheapest way each codec allows.

JPEG 2000 and HTJ2K codestreams carry their resolution levels: level ``L`` is the wavelet's
low-pass image, ``ceil(n / 2**L)`` pixels a side, and decoding it skips the finer levels'
work. imagecodecs exposes this for HTJ2K (OpenJPH, ``skipres``) but not for JPEG 2000.

JPEG 2000 also decodes a window: OpenJPEG's decode area (``opj_set_decode_area``) decodes
only the code-blocks whose wavelet support reaches the window, and its values are exactly
the full decode's there (tested). A 160x160 window of a 512x512 slice at x20 costs 55-70%
of the whole slice (the coarse levels' code-blocks are needed wherever the window is, see
BENCHMARKS.md, loader). Where a window's time goes (perf, libopenjp2 2.5.3 built with
symbols, x20 CT): code-block decoding (tier 1) 95% of the library's time, packet headers
(tier 2) and the inverse wavelet 1% each; a call's fixed cost (this module's Python, the
temporary file, the header) 0.17 ms, 4% of a window. So the codestream's layout sets the
cost: medlossy's encoder writes 64x64 code-blocks and no precincts, and PLT markers alone
change nothing. Precincts halving from 128 down the levels, or 32x32 code-blocks, made
windows 20-30% cheaper (opj_compress at the same ratio: -0.16 / -0.05 dB), but OpenJPEG
2.5.0-2.5.4 then decodes some windows off by one code (84 and 2 of 320) unless the area is
widened by 16 / 8 pixels, which leaves at most 17% (a loaded machine's figures); and
pylibjpeg-openjpeg cannot write either layout. The exactness above is that of today's
layout. JPEG 2000 windows and reduced levels go through libopenjp2 by glymur's bindings
(``glymur.lib.openjp2``), file based: the codestream is written to an unnamed temporary
file in memory-backed /dev/shm when it exists (measured: 0.03-0.05 ms a slice, under 1% of
a window's decode, so no in-memory stream was written by hand). Without glymur or
libopenjp2, windows are cropped from full decodes and reduced levels block-averaged (same
shapes; ``note_whole_slices`` says so once).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path

import imagecodecs
import numpy as np

from medlossy.codecs import SliceCodec

_SHM = Path("/dev/shm")
_OWN_DESCRIPTORS = Path("/proc/self/fd")
#: rows, columns of a slice at the decoded level.
Window = tuple[slice, slice]


@contextmanager
def _codestream_file(data: bytes) -> Iterator[str]:
    """A path from which libopenjp2 (which reads only files) reads ``data``: a temporary file
    in /dev/shm where writable. Where /proc/self/fd exists the file has no name (opened anew
    through its descriptor), so that a process killed mid-decode, as a DataLoader shutting
    down may kill its workers, leaves no file in /dev/shm; elsewhere a named one."""
    directory = _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
    if _OWN_DESCRIPTORS.is_dir():
        with tempfile.TemporaryFile(dir=directory) as file:
            file.write(data)
            file.flush()
            yield str(_OWN_DESCRIPTORS / str(file.fileno()))
        return
    with tempfile.NamedTemporaryFile(suffix=".j2k", dir=directory) as file:
        file.write(data)
        file.flush()
        yield file.name


def _openjpeg_decode(data: bytes, level: int, window: Window | None) -> np.ndarray:
    """Codes of a JPEG 2000 codestream at resolution ``level``, only ``window`` (at that
    level) if given, through glymur's bindings of libopenjp2.

    Not glymur's ``Jp2k``: it starts and joins a pool of OpenJPEG threads for every read,
    3-4 ms of wall time per slice on a busy machine (half a window's decode), and parses the
    header in Python; here the calling thread decodes (the loader parallelises slices with
    threads and processes)."""
    import glymur.lib.openjp2 as opj2  # optional: see glymur_available

    with ExitStack() as stack:
        name = stack.enter_context(_codestream_file(data))
        stream = opj2.stream_create_default_file_stream(name, True)
        stack.callback(opj2.stream_destroy, stream)
        codec = opj2.create_decompress(opj2.CODEC_J2K)
        stack.callback(opj2.destroy_codec, codec)
        parameters = opj2.set_default_decoder_parameters()
        parameters.cp_reduce = level
        opj2.setup_decoder(codec, parameters)
        image = opj2.read_header(stream, codec)
        stack.callback(opj2.image_destroy, image)
        # in full-resolution reference grid coordinates (medlossy's streams start at 0, 0)
        if window is not None:
            rows, columns = window
            grid, factor = image.contents, 2**level
            opj2.set_decode_area(codec, image, columns.start * factor, rows.start * factor,
                                 min(columns.stop * factor, grid.x1),
                                 min(rows.stop * factor, grid.y1))
        opj2.decode(codec, stream, image)
        opj2.end_decompress(codec, stream)
        component = image.contents.comps[0]
        codes = np.ctypeslib.as_array(component.data, shape=(component.h, component.w))
        # the type imagecodecs returns for the same codestream; copied before it is freed
        kind = "i" if component.sgnd else "u"
        return codes.astype(f"{kind}{1 if component.prec <= 8 else 2}")


def _jpeg2k_window(codec: SliceCodec, data: bytes, level: int, window: Window) -> np.ndarray:
    from glymur.lib.openjp2 import OpenJPEGLibraryError

    try:
        return _openjpeg_decode(data, level, window)
    except OpenJPEGLibraryError:  # a damaged stream, whose message glymur leaves empty
        if level:
            raise
        return codec.decode(data)[window]  # imagecodecs' error says what is wrong


def _jpeg2k_reduced(data: bytes, level: int) -> np.ndarray:
    return _openjpeg_decode(data, level, None)


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
#: Codec name -> decoder of a window of a slice at a level, decoding less than the slice.
WINDOW_DECODERS: dict[str, Callable[[SliceCodec, bytes, int, Window], np.ndarray]] = {}
if glymur_available():
    REDUCED_DECODERS["jpeg2k"] = _jpeg2k_reduced
    WINDOW_DECODERS["jpeg2k"] = _jpeg2k_window


@cache
def note_whole_slices(codec_name: str) -> None:
    """Say once per process that windows of ``codec_name`` slices are full decodes cropped,
    where a window decoder would need a library that is missing."""
    if codec_name == "jpeg2k" and codec_name not in WINDOW_DECODERS:
        print("medlossy: note: glymur or libopenjp2 is missing: JPEG 2000 patches decode "
              "whole slices (1.4-1.8x slower; pip install glymur, apt install libopenjp2-7)",
              file=sys.stderr)


def block_mean(image: np.ndarray, level: int) -> np.ndarray:
    """Average 2**level x 2**level blocks (edge blocks partial): ceil(n / 2**level) a side."""
    factor = 2**level
    rows, columns = (-(-n // factor) for n in image.shape)
    padded = np.pad(image.astype(np.float32), [(0, rows * factor - image.shape[0]),
                                               (0, columns * factor - image.shape[1])],
                    mode="edge")
    return padded.reshape(rows, factor, columns, factor).mean(axis=(1, 3))


def decode_slice(codec: SliceCodec, data: bytes, level: int = 0,
                 shape: tuple[int, int] | None = None, dtype: str | None = None,
                 window: Window | None = None) -> np.ndarray:
    """Codes of one slice at resolution ``level`` (0 = full size), only ``window`` (rows,
    columns at that level) if given: the same codes as the whole slice's there, decoded
    alone where the codec allows. ``shape`` and ``dtype`` are the store's, for codecs whose
    streams do not carry them."""
    if window is not None and codec.name in WINDOW_DECODERS:
        return WINDOW_DECODERS[codec.name](codec, data, level, window)
    if level == 0:
        codes = codec.decode(data, shape, dtype)
    elif codec.name in REDUCED_DECODERS:
        codes = REDUCED_DECODERS[codec.name](data, level)
    else:
        codes = block_mean(codec.decode(data, shape, dtype), level)
    return codes if window is None else codes[window]


def has_reduced_decoder(codec_name: str) -> bool:
    return codec_name in REDUCED_DECODERS
