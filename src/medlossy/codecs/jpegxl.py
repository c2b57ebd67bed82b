"""JPEG XL (libjxl through imagecodecs): lossy by butteraugli ``distance``, or lossless.

libjxl's quality control is ``distance`` (0 = lossless, 1 = visually lossless for photos,
larger = smaller files), not imagecodecs' ``level``. The knob is ``-10 log10(distance)``:
a decade of distance is about 11 dB of PSNR on CT codes. libjxl takes unsigned samples only
(8- or 16-bit codes here), so signed volumes are offset by their minimum (``unsigned_only``).
"""

from __future__ import annotations

import imagecodecs
import numpy as np
from imagecodecs.numcodecs import Jpegxl as JpegxlStoreCodec

from medlossy.codecs.base import Setting, SliceCodec, register

#: libjxl's encoder effort (1 fastest .. 9 slowest); 7 is libjxl's default.
EFFORT = 7
#: PSNR (dB, CT peak 4096) measured at distance 1 on CT codes; the search's first guess only.
_PSNR_AT_DISTANCE_1 = 47.0


def distance_for(quality: float) -> float:
    return 10.0 ** (-quality / 10.0)


@register
class JpegxlCodec(SliceCodec):
    """JPEG XL (ISO/IEC 18181) of one 16-bit grey slice."""

    name = "jpegxl"
    available = bool(imagecodecs.JPEGXL.available)
    library = imagecodecs.jpegxl_version() if available else "libjxl"
    extra = "imagecodecs built with libjxl (the PyPI wheels of imagecodecs>=2024.9.22)"
    unsigned_only = True
    # libjxl accepts distances 0.01 .. 25.
    quality_range = (-13.9, 20.0)

    def encode(self, image: np.ndarray, setting: Setting) -> bytes:
        image = np.ascontiguousarray(image)
        if image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"JPEG XL here takes uint8 or uint16 codes, got {image.dtype}")
        if setting.mode == "lossless":
            return bytes(imagecodecs.jpegxl_encode(image, lossless=True, effort=EFFORT))
        return bytes(imagecodecs.jpegxl_encode(image, distance=distance_for(setting.value),
                                               effort=EFFORT))

    def decode(self, data: bytes, shape: tuple[int, ...] | None = None,
               dtype: np.dtype | str | None = None) -> np.ndarray:
        return imagecodecs.jpegxl_decode(data)

    def store_codec(self, chunk_shape: tuple[int, ...] = (), dtype: str = "<i2",
                    ) -> JpegxlStoreCodec:
        return JpegxlStoreCodec()

    def describe(self, setting: Setting) -> dict:
        return {
            "name": self.name,
            "standard": "ISO/IEC 18181 (JPEG XL), raw codestream per axial slice",
            "encoder": f"{imagecodecs.jpegxl_version()} via imagecodecs "
                       f"{imagecodecs.__version__}",
            "transform": "modular lossless" if setting.mode == "lossless" else "VarDCT",
            "effort": EFFORT,
        }

    def quality_for_psnr(self, psnr_db: float, data_range: float) -> float:
        return psnr_db - _PSNR_AT_DISTANCE_1
