"""HTJ2K (JPEG 2000 Part 15, OpenJPH through imagecodecs): high-throughput block coding.

OpenJPH has no rate target; its one quality control is the quantisation step (``level``, a
fraction of the 16-bit full scale). The knob is ``-20 log10(step)`` dB, so rate control
bisects it per volume like any other quality knob.

OpenJPH once returned corrupted slices with its error only printed by Python as "Exception
ignored" (shared/CODECS.md): ``encode`` catches such unraisable exceptions and raises them,
and every chunk is decoded and checked after encoding (``error_bound`` holds a lossy slice to
a generous multiple of the step).
"""

from __future__ import annotations

import math
import sys
import threading

import imagecodecs
import numpy as np
from imagecodecs.numcodecs import Htj2k as Htj2kStoreCodec

from medlossy.codecs.base import Setting, SliceCodec, register

_FULL_SCALE = 65536.0
#: PSNR of the 9/7 wavelet with uniform step ``s`` is about 20 log10(peak / s) + this (dB),
#: measured on CT-like slices; only the search's first guess depends on it.
_STEP_GAIN_DB = 12.0
#: Lossy verification: no code may move by more than this many steps (plus a constant);
#: measured errors stay within 2 steps, a corrupted slice is off by thousands of codes.
_STEPS_ALLOWED, _CODES_ALLOWED = 16.0, 64.0
_UNRAISABLE_LOCK = threading.Lock()


def step_for(quality: float) -> float:
    """Quantisation step (fraction of full scale) of quality knob ``quality`` (dB)."""
    return 10.0 ** (-quality / 20.0)


@register
class Htj2kCodec(SliceCodec):
    """HTJ2K, 9/7 irreversible wavelet with a quantisation step, or 5/3 reversible lossless."""

    name = "htj2k"
    tiles = True
    available = bool(imagecodecs.HTJ2K.available)
    hardware = "CPU (GPU decode: medlossy[gpu])"
    library = imagecodecs.htj2k_version() if available else "OpenJPH"
    extra = "imagecodecs built with OpenJPH (the PyPI wheels of imagecodecs>=2024.9.22)"
    # Steps from 0.1 of full scale (useless) down to 1e-6 (below one code: lossless-like).
    quality_range = (20.0, 120.0)
    # imagecodecs' OpenJPH decoder wraps values past the top of the sample range (an 8-bit
    # 254 overshooting to 256 comes back as 0), where OpenJPEG clamps.
    clamps = False

    def encode(self, image: np.ndarray, setting: Setting) -> bytes:
        image = np.ascontiguousarray(image)
        level = None if setting.mode == "lossless" else step_for(setting.value)
        caught: list[BaseException] = []
        with _UNRAISABLE_LOCK:  # the hook is process-wide
            previous = sys.unraisablehook
            sys.unraisablehook = lambda report: caught.append(report.exc_value)
            try:
                stream = imagecodecs.htj2k_encode(image, level=level)
            finally:
                sys.unraisablehook = previous
        if caught:
            raise RuntimeError(f"OpenJPH reported an error while encoding: {caught[0]}")
        return bytes(stream)

    def decode(self, data: bytes, shape: tuple[int, ...] | None = None,
               dtype: np.dtype | str | None = None) -> np.ndarray:
        return imagecodecs.htj2k_decode(data)

    def store_codec(self, chunk_shape: tuple[int, ...] = (), dtype: str = "<i2",
                    ) -> Htj2kStoreCodec:
        return Htj2kStoreCodec()

    def describe(self, setting: Setting) -> dict:
        lossless = setting.mode == "lossless"
        return {
            "name": self.name,
            "standard": "ISO/IEC 15444-15 (HTJ2K), raw codestream per axial slice",
            "encoder": f"{imagecodecs.htj2k_version()} via imagecodecs "
                       f"{imagecodecs.__version__}",
            "wavelet": "5/3 reversible" if lossless else "9/7 irreversible",
            "quantisation": "none (reversible)" if lossless else
                            "one step for the volume, as a fraction of 16-bit full scale",
        }

    def quality_for_psnr(self, psnr_db: float, data_range: float) -> float:
        step_codes = data_range / 10.0 ** ((psnr_db - _STEP_GAIN_DB) / 20.0)
        return -20.0 * math.log10(max(step_codes, 1e-3) / _FULL_SCALE)

    def error_bound(self, setting: Setting) -> float | None:
        if setting.mode == "quality":
            return _STEPS_ALLOWED * step_for(setting.value) * _FULL_SCALE + _CODES_ALLOWED
        return super().error_bound(setting)
