"""Lossless mode, and lossless where a ratio is asked that lossless already beats.

Data flow: ``encode_lossless``: one encode at the codec's lossless setting, bit-exact (bound
0). ``lossless_within`` (every ratio search, first): a lossless encode of a sample of the
slices -> the whole volume's lossless bytes estimated -> only when that could fit the budget,
the whole volume encoded losslessly (once per volume, ``Encodes.lossless``) -> its
codestreams when they fit the budget (``lossless_fits``), else None.
"""

from __future__ import annotations

from medlossy.codecs import Setting
from medlossy.ratecontrol.base import RATIO_TOLERANCE, ByteCounter, Encodes, Found

#: One slice (or block, with its tiles) in this many is encoded to estimate lossless bytes...
_SAMPLE_EVERY = 8
#: ...and at least this many (short volumes; all of them when they are fewer).
_SAMPLE_AT_LEAST = 4
#: The whole volume is encoded losslessly only when the sample's estimate is within this
#: factor of the budget: the sample misjudges an ordinary volume by far less, and on CT
#: (lossless x2-x4) a ratio above x6 costs only the sample. Measured on a real CT (191
#: slices of 233 x 167, --ratio 20): the sample (24 slices) took 0.19-0.25 s of CPU, 3% of
#: JPEG 2000's 7-8 s search (a whole lossless pass: 1.8-2.2 s), about 2% of the compress.
_PLAUSIBLE = 1.5


def encode_lossless(encodes: Encodes) -> Found:
    """Codestreams that decode to exactly the codes."""
    return Found(Setting("lossless"), encodes.lossless(), True, 0.0)


def lossless_fits(lossless_bytes: int, budget: int) -> bool:
    """Whether a lossless output of ``lossless_bytes`` fits a ratio's byte ``budget``: then
    it is stored instead of a lossy one, being exact and within the budget (the ratio
    achieved is reported, above the one asked)."""
    return lossless_bytes <= budget * (1.0 + RATIO_TOLERANCE)


def lossless_within(encodes: Encodes, count_bytes: ByteCounter, budget: int,
                    ) -> list[bytes] | None:
    """The volume's lossless codestreams when they fit ``budget`` (``lossless_fits``), else
    None (and None for a codec without a lossless mode). On data that lossless compresses
    very well (a heavily clipped CT) the finest lossy settings can be larger than lossless:
    a ratio's search must not store a lossy volume larger than the exact one. The whole
    volume is encoded losslessly only when it is already, or when a sample of its slices
    says that it could fit."""
    if "lossless" not in encodes.encoder.codec.modes:
        return None
    if not encodes.has_lossless and count_bytes(_estimate(encodes)) > budget * _PLAUSIBLE:
        return None
    streams = encodes.lossless()
    return streams if lossless_fits(count_bytes(streams), budget) else None


def _estimate(encodes: Encodes) -> list[bytes]:
    """Codestreams as long as the volume's lossless ones would be: a lossless encode of
    evenly spaced slices (whole slice groups: every tile of a slice, a block of a 3D codec),
    each standing for its neighbours; the whole encode when the sample would be the volume.
    Made once per volume (``Encodes.lossless_sample``)."""
    if encodes.lossless_sample is not None:
        return encodes.lossless_sample
    encoder = encodes.encoder
    per_group = encoder.grid.per_slice
    groups = encoder.chunks // per_group
    count = min(groups, max(_SAMPLE_AT_LEAST, -(-groups // _SAMPLE_EVERY)))
    if count == groups:
        encodes.lossless_sample = encodes.lossless()
        return encodes.lossless_sample
    picks = [int((k + 0.5) * groups / count) for k in range(count)]
    sample = encoder.encode_chunks(Setting("lossless"),
                                   [g * per_group + t for g in picks for t in range(per_group)])
    encodes.lossless_sample = [sample[min(count - 1, i // per_group * count // groups)
                                      * per_group + i % per_group]
                               for i in range(encoder.chunks)]
    return encodes.lossless_sample
