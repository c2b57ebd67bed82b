"""PSNR mode: aim the codec's PSNR knob, then correct it by the PSNR measured on the codes.

Data flow: target dB -> the codec's knob for it -> one whole-volume encode -> every chunk
decoded and compared with its codes (``ErrorTally``, peak in code units) -> the knob moved by
the shortfall, at most four encodes -> ``Found``.
"""

from __future__ import annotations

import math

from medlossy.codecs import Setting
from medlossy.metrics import ErrorTally
from medlossy.ratecontrol.base import Encodes, Found

_PSNR_TOLERANCE_DB = 0.1


def search_psnr(encodes: Encodes, psnr_db: float, peak_codes: float) -> Found:
    """Codestreams whose PSNR (against ``peak_codes``, the PSNR peak in code units) is at
    least ``psnr_db`` and within 0.1 dB of it where the codec's knob allows."""
    encoder = encodes.encoder
    codec = encoder.codec
    knob = codec.quality_for_psnr(psnr_db, peak_codes)
    streams: list[bytes] = []
    achieved = -math.inf
    for _ in range(4):
        streams = encodes(Setting("quality", knob))
        tally = ErrorTally()
        for index, stream in enumerate(streams):
            codes = encoder.chunk(index)
            decoded = codec.decode(stream, shape=codes.shape, dtype=codes.dtype)
            tally.add(encoder.trim(index, codes), encoder.trim(index, decoded))
        achieved = tally.psnr(peak_codes)
        if achieved >= psnr_db and achieved - psnr_db <= _PSNR_TOLERANCE_DB:
            break
        knob = min(max(knob + (psnr_db - achieved) + 0.02, codec.quality_range[0]),
                   codec.quality_range[1])
    setting = Setting("quality", knob)
    return Found(setting, streams, achieved >= psnr_db - _PSNR_TOLERANCE_DB,
                 codec.error_bound(setting))
