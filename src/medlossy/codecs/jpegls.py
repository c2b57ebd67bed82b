"""JPEG-LS (CharLS through imagecodecs): lossless, or near-lossless with a maximum error NEAR.

Near-lossless JPEG-LS guarantees every sample within NEAR of the source, an integer; its
natural modes are lossless and maximum error. A ratio is reached by choosing, slice by
slice, between the two NEAR values whose volumes bracket the budget
(medlossy.ratecontrol.ratio), since whole-volume sizes jump between neighbouring NEAR
values. CharLS takes unsigned samples only.
"""

from __future__ import annotations

import imagecodecs
import numpy as np
from imagecodecs.numcodecs import Jpegls as JpeglsStoreCodec

from medlossy.codecs.base import Setting, SliceCodec, register

#: Largest NEAR CharLS accepts (it refuses more than 255, whatever the sample depth).
MAX_NEAR = 255


@register
class JpeglsCodec(SliceCodec):
    """JPEG-LS (ISO/IEC 14495-1) of one 16-bit grey slice."""

    name = "jpegls"
    available = bool(imagecodecs.JPEGLS.available)
    library = imagecodecs.jpegls_version() if available else "CharLS"
    extra = "imagecodecs built with CharLS (the PyPI wheels of imagecodecs>=2024.9.22)"
    unsigned_only = True
    modes = frozenset({"ratio", "max_error", "lossless"})
    #: Integer NEAR only: rate control picks per slice between neighbouring values.
    discrete = True
    quality_range = (0.0, float(MAX_NEAR))

    def encode(self, image: np.ndarray, setting: Setting) -> bytes:
        image = np.ascontiguousarray(image)
        if image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"JPEG-LS here takes uint8 or uint16 codes, got {image.dtype}")
        near = 0 if setting.mode == "lossless" else int(setting.value)
        if setting.mode not in ("lossless", "max_error") or near != setting.value:
            raise ValueError(f"JPEG-LS encodes lossless or an integer maximum error, not "
                             f"{setting}")
        # CharLS writes, without a word, streams it cannot read for NEAR above half the
        # samples' maximum (127 for 8-bit codes): a larger NEAR is that one, still in bound.
        near = min(near, np.iinfo(image.dtype).max // 2)
        return bytes(imagecodecs.jpegls_encode(image, level=near))

    def decode(self, data: bytes, shape: tuple[int, ...] | None = None,
               dtype: np.dtype | str | None = None) -> np.ndarray:
        return imagecodecs.jpegls_decode(data)

    def store_codec(self, chunk_shape: tuple[int, ...] = (), dtype: str = "<i2",
                    ) -> JpeglsStoreCodec:
        return JpeglsStoreCodec()

    def describe(self, setting: Setting) -> dict:
        return {
            "name": self.name,
            "standard": "ISO/IEC 14495-1 (JPEG-LS), one codestream per axial slice",
            "encoder": f"{imagecodecs.jpegls_version()} via imagecodecs "
                       f"{imagecodecs.__version__}",
            "transform": "LOCO-I prediction, near-lossless" if setting.mode != "lossless"
                         else "LOCO-I prediction, lossless",
        }
