"""Several ratios of one volume from one filled encoder (a sweep's stores).

Data flow: ratio 1 -> one lossless encode; JPEG 2000's lossy ratios -> one layered survey and
a few final encodes (``layered``); a ratio those cannot meet -> lossless when even the best
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
from medlossy.ratecontrol.lossless import lossless_fits
from medlossy.ratecontrol.ratio import refuse_out_of_reach, search_ratio


def search_ratios(encodes: Encodes, counters: dict[float, ByteCounter], raw: int, *,
                  layered: bool, source: str) -> dict[float, Found]:
    """Codestreams for every ratio of ``counters`` (1 = lossless; each counter prices a
    candidate in that ratio's store). With ``layered`` and a codec that encodes quality
    layers, the lossy ratios come from layered passes (counted in ``encodes.passes``), the
    rest from a search each. ``source`` names the input when a ratio is out of reach."""
    encoder = encodes.encoder
    codec = encoder.codec
    ratios = sorted(counters)
    lossy = [r for r in ratios if r != 1]
    found: dict[float, Found] = {}
    lossless: list[bytes] | None = None
    if 1 in ratios:
        lossless = encodes(Setting("lossless"))
        found[1] = Found(Setting("lossless"), lossless, True, 0.0)
    if layered and lossy and hasattr(codec, "encode_layers"):
        budgets = {r: int(raw / r) for r in lossy}
        cut, layered_passes, beyond = encode_ratios(
            encoder, budgets, {r: counters[r] for r in lossy}, codec.quality_range,
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
            if lossless is None:
                lossless = encodes(Setting("lossless"))
            if lossless_fits(counters[ratio](lossless), budgets[ratio]):
                found[ratio] = Found(Setting("lossless"), lossless, False, 0.0)
    for ratio in lossy:
        target = Target("ratio", ratio)
        if ratio not in found:
            found[ratio] = search_ratio(encodes, counters[ratio], target, raw)
        refuse_out_of_reach(found[ratio], codec, target,
                            raw / counters[ratio](found[ratio].streams), source)
    return found
