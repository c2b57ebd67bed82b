"""Max-error mode: every voxel within a bound, one encode at the codec's error-bounded setting.

Data flow: the bound in the volume's units -> whole codes under the 16-bit mapping (its
rounding included; refused under one code or past the codec's largest) -> one whole-volume
encode -> ``Found`` with the bound the codec promises.
"""

from __future__ import annotations

import math

from medlossy.codecs import Setting, SliceCodec
from medlossy.codecs.intensity import CodeMapping
from medlossy.errors import MedlossyError
from medlossy.ratecontrol.base import Encodes, Found


def max_error_codes(max_error: float, codec: SliceCodec, mapping: CodeMapping,
                    source: str) -> int:
    """The whole number of codes a maximum error allows (mapping rounding included);
    refused when under one code or beyond what ``codec`` takes."""
    allowed = (max_error - mapping.max_rounding_error) / mapping.step
    codes = math.floor(allowed + 1e-9)
    if codes < 1:
        quantum = mapping.step
        raise MedlossyError(source, f"maximum error {max_error:g} is below the data's "
                                    f"quantum ({quantum:g} per code, rounding "
                                    f"{mapping.max_rounding_error:g}); use --lossless")
    if codec.discrete and codes > codec.quality_range[1]:
        raise MedlossyError(source, f"codec {codec.name!r} allows a maximum error of at most "
                                    f"{codec.quality_range[1]:g} codes, asked {codes}")
    return codes


def encode_max_error(encodes: Encodes, codes: int) -> Found:
    """Codestreams whose every voxel is within ``codes`` of its code."""
    setting = Setting("max_error", float(codes))
    return Found(setting, encodes(setting), True, encodes.encoder.codec.error_bound(setting))
