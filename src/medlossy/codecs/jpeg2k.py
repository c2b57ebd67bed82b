"""JPEG 2000 (OpenJPEG): pylibjpeg-openjpeg encodes, imagecodecs decodes.

Why two bindings (measured here, see BENCHMARKS.md and shared/CODECS.md):
- pylibjpeg-openjpeg's encoder takes a compression ratio or a PSNR per quality layer and the
  declared bit depth, which is what exact-ratio rate control needs. imagecodecs' encoder only
  takes a PSNR-like ``level`` and glymur writes only files, of uint8/uint16 only.
- imagecodecs' decoder releases the GIL (threads scale) and is what stock zarr uses to read the
  store, so decoding with it tests exactly what other tools will see.
pylibjpeg-openjpeg's encoder is not thread-safe (four threads encoding at once segfault within
a second): every encode holds one process-wide lock, so threaded callers (a Dask worker's
threads running two sweep images) are safe; medlossy parallelises encodes with processes.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import imagecodecs
import numpy as np
import openjpeg
from imagecodecs.numcodecs import Jpeg2k as Jpeg2kStoreCodec
from openjpeg.utils import encode_array

from medlossy.codecs.base import Setting, SliceCodec, register

#: Every slice of 16-bit codes is declared 16 bits deep, so OpenJPEG's ratio counts against
#: 16-bit raw bytes, as medlossy's ratio does (12-bit declarations would inflate ratios by
#: 4/3). 8-bit codes (uint8, int8 sources) are declared 8 bits deep, so that the decoder
#: clamps to their range; their settings are converted to keep 16-bit meanings (below).
BITS_STORED = 16
#: pylibjpeg-openjpeg always uses 6 resolutions: OpenJPEG needs 2**5 pixels per side.
MIN_SIDE = 32
_PEAK_16 = 2.0**BITS_STORED - 1
_COM_MARKER = b"\xff\x64"
_SOT_MARKER = b"\xff\x90"
_ENCODER_LOCK = threading.Lock()


#: Signals that Python turns into exceptions (medlossy's SIGTERM handler, Ctrl-C).
_DEFERRED = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the encoder has returned. OpenJPEG writes its codestream
    through Python callbacks: an exception raised there by a signal handler left it
    writing on (a segmentation fault in 4 of 5 SIGTERMs during `reader make --workers 1`);
    held, the signal arrives when the call is over and unwinds as usual."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks to hold them
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _encode(image: np.ndarray, **options: object) -> bytes:
    """pylibjpeg-openjpeg's encode_array under the process-wide lock (see the module notes),
    with SIGINT/SIGTERM held until it returns."""
    with _ENCODER_LOCK, _signals_deferred():
        return encode_array(np.ascontiguousarray(image), bits_stored=_bits(image), **options)


def _bits(image: np.ndarray) -> int:
    """The depth a slice is declared: its codes' own (8 or 16 bits)."""
    return min(BITS_STORED, 8 * image.dtype.itemsize)


def _psnr_targets(image: np.ndarray, qualities: Sequence[float]) -> list[float]:
    """OpenJPEG PSNR targets, against the declared peak, of ``qualities`` (increasing, dB
    against the 16-bit peak): the same squared error in codes whatever the depth. Targets
    below what an 8-bit slice can mean (all give its coarsest encode) stay positive and
    increasing, as OpenJPEG requires."""
    below = 20.0 * math.log10(_PEAK_16 / (2.0 ** _bits(image) - 1))
    return [max(quality - below, 0.01 * (index + 1))
            for index, quality in enumerate(qualities)]


def _check_slice(image: np.ndarray) -> None:
    if image.ndim != 2 or min(image.shape) < MIN_SIDE:
        raise ValueError(f"JPEG 2000 slices must be 2D and at least {MIN_SIDE}x{MIN_SIDE} "
                         f"pixels, got {image.shape}")


def strip_comment(codestream: bytes) -> bytes:
    """Drop COM segments ("Created by OpenJPEG ...", 39 bytes) from the main header.

    No binding exposes OpenJPEG's option to omit them; at x100 on a 122x101 slice they would
    take a sixth of the budget. The main header is a flat list of length-prefixed segments
    (ISO 15444-1 A.1), so removing one leaves a valid codestream.
    """
    head, position = bytearray(codestream[:2]), 2
    while position + 4 <= len(codestream):
        marker = codestream[position : position + 2]
        if marker == _SOT_MARKER:
            break
        end = position + 2 + int.from_bytes(codestream[position + 2 : position + 4], "big")
        if marker != _COM_MARKER:
            head += codestream[position:end]
        position = end
    return bytes(head) + codestream[position:]


@register
class Jpeg2kCodec(SliceCodec):
    """JPEG 2000 Part 1: 9/7 irreversible wavelet for lossy, 5/3 reversible for lossless."""

    name = "jpeg2k"
    tiles = True
    per_chunk_ratio = True
    hardware = "CPU (GPU decode: medlossy[gpu])"
    library = f"OpenJPEG (pylibjpeg-openjpeg {openjpeg.__version__}; imagecodecs decodes)"
    # OpenJPEG PSNR targets (peak 65535): 30 dB is far below any useful image, 130 dB is
    # beyond what the 9/7 wavelet reaches on 16-bit data.
    quality_range = (30.0, 130.0)

    def encode(self, image: np.ndarray, setting: Setting) -> bytes:
        _check_slice(image)
        if setting.mode == "lossless":
            stream = _encode(image)
        elif setting.mode == "ratio":  # against 16-bit raw bytes, whatever the depth
            stream = _encode(image, compression_ratios=[
                max(setting.value * _bits(image) / BITS_STORED, 1.0)])
        else:
            stream = _encode(image, signal_noise_ratios=_psnr_targets(image, [setting.value]))
        return strip_comment(stream)

    def encode_layers(self, image: np.ndarray, qualities: Sequence[float]) -> bytes:
        """One lossy encode with a quality layer per PSNR target (increasing, 16-bit peak)
        and PLT packet lengths, so that ``LayeredStream`` can cut it after any layer."""
        _check_slice(image)
        return strip_comment(_encode(image, signal_noise_ratios=_psnr_targets(image, qualities),
                                     add_plt=True))

    def decode(self, data: bytes, shape: tuple[int, ...] | None = None,
               dtype: np.dtype | str | None = None) -> np.ndarray:
        return imagecodecs.jpeg2k_decode(data)

    def store_codec(self, chunk_shape: tuple[int, ...] = (), dtype: str = "<i2",
                    ) -> Jpeg2kStoreCodec:
        return Jpeg2kStoreCodec()

    def describe(self, setting: Setting) -> dict:
        lossless = setting.mode == "lossless"
        return {
            "name": self.name,
            "standard": "ISO/IEC 15444-1 (JPEG 2000 Part 1), raw codestream per axial slice",
            "encoder": f"OpenJPEG via pylibjpeg-openjpeg {openjpeg.__version__}",
            "wavelet": "5/3 reversible" if lossless else "9/7 irreversible",
            "resolutions": 6,
            "code_block": [64, 64],
            "quality_layers": 1,
            "progression": "LRCP",
            "bits_stored": BITS_STORED,
        }

    def quality_for_psnr(self, psnr_db: float, data_range: float) -> float:
        # OpenJPEG's PSNR is against the declared 16-bit peak; ours against ``data_range``.
        return psnr_db + 20.0 * math.log10(_PEAK_16 / data_range)
