"""Several ratios of one volume from one filled encoder (a sweep's stores).

Data flow: ratio 1 -> one lossless encode; a lossy ratio that lossless already fits ->
that same encode (``lossless.lossless_within``: the volume is encoded losslessly at most once,
reused from ratio 1 when asked); JPEG 2000's other lossy ratios -> one layered survey and a
few final encodes (``layered``); a ratio those cannot meet -> lossless when even the best
lossy quality is under its budget and lossless fits, else a search of its own
(``ratio.search_ratio``) -> each ratio's ``Found``, a ratio no setting meets refused.
"""

from __future__ import annotations

from medlossy.codecs import Setting
from medlossy.ratecontrol.base import (
    SEARCH_TOLERANCE,
    ByteCounter,
    Encodes,
    Found,
    Target,
)
from medlossy.ratecontrol.layered import encode_ratios
from medlossy.ratecontrol.lossless import lossless_fits, lossless_within
from medlossy.ratecontrol.ratio import refuse_out_of_reach, search_ratio


def search_ratios(encodes: Encodes, counters: dict[float, ByteCounter], raw: int, *,
                  layered: bool, source: str) -> dict[float, Found]:
    """Codestreams for every ratio of ``counters`` (1 = lossless; each counter prices a
    candidate in that ratio's store). With ``layered`` and a codec that encodes quality
    layers, the lossy ratios come from layered passes (counted in ``encodes.passes``), the
    rest from a search each. A lossy ratio that lossless fits is stored losslessly, as
    ``search_ratio`` decides. ``source`` names the input when a ratio is out of reach."""
    encoder = encodes.encoder
    codec = encoder.codec
    ratios = sorted(counters)
    found: dict[float, Found] = {}
    if 1 in ratios:
        found[1] = Found(Setting("lossless"), encodes.lossless(), True, 0.0)
    budgets = {r: int(raw / r) for r in ratios if r != 1}
    for ratio in budgets:
        lossless = lossless_within(encodes, counters[ratio], budgets[ratio])
        if lossless is not None:
            found[ratio] = Found(Setting("lossless"), lossless, False, 0.0)
    lossy = [r for r in ratios if r not in found]
    if layered and lossy and hasattr(codec, "encode_layers"):
        cut, layered_passes, beyond = encode_ratios(
            encoder, {r: budgets[r] for r in lossy}, {r: counters[r] for r in lossy},
            codec.quality_range,
            tolerance=SEARCH_TOLERANCE, show_progress=encodes.show_progress)
        encodes.passes += layered_passes
        for ratio, result in cut.items():
            setting = Setting("mixed") if result.quality is None \
                else Setting("quality", result.quality)
            found[ratio] = Found(setting, result.streams, result.reached)
        for ratio in lossy:
            if ratio in found or ratio not in beyond:
                continue
            # Even the best lossy quality is under budget (x2 on most CT): lossless if
            # it fits, as the search would decide.
            if lossless_fits(counters[ratio](encodes.lossless()), budgets[ratio]):
                found[ratio] = Found(Setting("lossless"), encodes.lossless(), False, 0.0)
    for ratio in lossy:
        target = Target("ratio", ratio)
        if ratio not in found:
            found[ratio] = search_ratio(encodes, counters[ratio], target, raw)
        refuse_out_of_reach(found[ratio], codec, target,
                            raw / counters[ratio](found[ratio].streams), source)
    return found
