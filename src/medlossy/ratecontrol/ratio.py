"""Ratio mode: the codec setting (or chunk-by-chunk mix of settings) whose whole output meets
a byte budget.

Data flow: budget = raw 16-bit bytes / ratio -> whole-volume encodes along the codec's knob
(``solver.solve_budget``: secant, then interpolation inside the bracket) -> when sizes jump
across the budget, the two closest encodes mixed chunk by chunk, refined with encodes at
knobs around them and, for a codec with a ladder of other settings (ZFP's fixed accuracy),
mixed with those too (``mixing``) -> ``Found``. Lossless comes first: where it fits the
budget (``lossless.lossless_within``) it is stored without a search, being exact and smaller;
a search whose finest lossy setting is under the budget ends there too, or mixes lossless
with it. Each candidate is priced by the caller's ``ByteCounter``: every byte of the output
counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medlossy.codecs import Setting, SliceCodec
from medlossy.codecs.pool import SliceEncoder
from medlossy.errors import MedlossyError
from medlossy.ratecontrol.base import (
    RATIO_TOLERANCE,
    SEARCH_TOLERANCE,
    ByteCounter,
    Encodes,
    Found,
    Target,
)
from medlossy.ratecontrol.lossless import lossless_fits, lossless_within
from medlossy.ratecontrol.mixing import best_mix, mix_chunks, squared_errors
from medlossy.ratecontrol.solver import Trial, solve_budget

#: Knobs (dB from the search's last) whose encodes help a ladder mix land on its budget.
_LADDER_KNOBS = (-6.0, -3.0, -1.0, 1.0, 3.0)
#: Knobs (dB from the two closest trials) encoded when a search's mix misses its budget.
_REFINE_KNOBS = (-1.0, -0.5, -0.2, 0.2, 0.5, 1.0)
_DB_PER_DOUBLING = 6.02  # bytes roughly double per 6 dB (one bit per sample)
#: Codecs that reach the highest ratios (suggested when another cannot).
FAR_REACHING = ("jpeg2k", "sperr")


def search_ratio(encodes: Encodes, count_bytes: ByteCounter, target: Target,
                 raw: int) -> Found:
    """Codestreams whose ``count_bytes`` meets the ratio ``target`` (``raw`` bytes / total),
    searched along the codec's quality knob (allocation "psnr"), its per-chunk ratio
    ("equal") or both ("optimal", then mixed chunk by chunk); a codec with whole-number
    steps only is searched between its two bracketing steps. Lossless, where it fits the
    budget, is stored instead (exact and smaller; ``reached`` False, the ratio achieved is
    above the one asked). ``out_of_reach`` in the answer: no setting meets the ratio (see
    ``refuse_out_of_reach``)."""
    encoder = encodes.encoder
    codec = encoder.codec
    budget = int(raw / target.value)
    lossless = lossless_within(encodes, count_bytes, budget)
    if lossless is not None:
        return Found(Setting("lossless"), lossless, False, 0.0)
    if codec.discrete:
        return _search_discrete(encodes, count_bytes, budget)
    found = []
    bounds: list[float | None] = []  # error bounds of the settings that went into a mix
    beyond = False  # a search ended at an end of the codec's range
    if target.allocation in ("psnr", "optimal"):
        def measure_quality(knob: float):
            streams = encodes(Setting("quality", knob))
            return count_bytes(streams), streams
        outcome = solve_budget(measure_quality, budget, codec.quality_range,
                               start=codec.quality_for_psnr(50.0, 4096.0),
                               slope=math.log(2) / _DB_PER_DOUBLING, tolerance=SEARCH_TOLERANCE)
        found.append((Setting("quality", outcome.best.knob), outcome.best))
        beyond = outcome.out_of_reach
        if outcome.under is not None and outcome.over is not None:
            # Sizes jump across the budget (ZFP's fixed rate, SZ3): mix the two closest
            # encodes chunk by chunk, then re-encode single chunks at knobs between the two
            # to spend what the mix leaves (few chunks: a short volume in 16-slice blocks).
            streams = mix_chunks(encoder, count_bytes, [outcome.over.payload,
                                                        outcome.under.payload], budget)
            if abs(count_bytes(streams) / budget - 1.0) >= abs(outcome.best.error(budget)):
                streams = outcome.best.payload
            streams, knobs = _refine_chunks(encodes, count_bytes, streams, outcome.under,
                                            outcome.over, budget)
            if streams is not outcome.best.payload:
                bounds.extend(codec.error_bound(Setting("quality", k)) for k in
                              (outcome.under.knob, outcome.over.knob, *knobs))
                found[-1] = (Setting("mixed"), Trial(outcome.best.knob, count_bytes(streams),
                                                     streams))
        laddered = _ladder_mix(encodes, count_bytes, found[-1][1].payload,
                               outcome.best.knob, budget, land=beyond)
        if laddered is not None:
            streams, used = laddered
            bounds.extend(codec.error_bound(s) for s in used)
            found[-1] = (Setting("mixed"), Trial(outcome.best.knob, count_bytes(streams),
                                                 streams))
    if target.allocation in ("equal", "optimal"):
        # The knob -log(per-slice ratio) grows with bytes.
        def measure_ratio(knob: float):
            streams = encodes(Setting("ratio", math.exp(-knob)))
            return count_bytes(streams), streams
        outcome = solve_budget(measure_ratio, budget, (-math.log(1e5), 0.0),
                               start=-math.log(target.value), slope=1.0,
                               tolerance=SEARCH_TOLERANCE)
        found.append((Setting("ratio", math.exp(-outcome.best.knob)), outcome.best))
        beyond = beyond or outcome.out_of_reach
    setting, best = found[0]
    streams = best.payload
    bound = _bound(codec, [s for s, _ in found])
    if bounds:
        bound = None if bound is None or None in bounds else max(bound, *bounds)
    if best.total_bytes < budget * (1.0 - RATIO_TOLERANCE) and "lossless" in codec.modes:
        # Even the best lossy quality is under budget (x2 on some CT): if lossless fits too
        # (the sample above can misjudge it), it is both exact and smaller, so store that.
        lossless = encodes.lossless()
        if lossless_fits(count_bytes(lossless), budget):
            return Found(Setting("lossless"), lossless, False, 0.0)
        if beyond:  # the budget lies between the best lossy quality and lossless: mix them
            streams = mix_chunks(encoder, count_bytes, [lossless, streams], budget)
            total = count_bytes(streams)
            return Found(Setting("mixed"), streams,
                         abs(total / budget - 1.0) <= RATIO_TOLERANCE, bound)
    if len(found) == 2:
        setting, streams = best_mix(encoder, count_bytes, found, budget)
    reached = abs(count_bytes(streams) / budget - 1.0) <= RATIO_TOLERANCE
    return Found(setting, streams, reached, bound, beyond and not reached)


def _search_discrete(encodes: Encodes, count_bytes: ByteCounter, budget: int) -> Found:
    """Ratio for a codec with whole-number maximum errors only (JPEG-LS NEAR): find the two
    neighbouring errors whose volumes bracket the budget, then choose chunk by chunk between
    them (least total error within the budget)."""
    encoder = encodes.encoder
    codec = encoder.codec
    encoded: dict[int, list[bytes]] = {}

    def size(near: int) -> int:
        if near not in encoded:  # NEAR 0 is lossless: the encode lossless_within made
            encoded[near] = encodes.lossless() if near == 0 \
                else encodes(Setting("max_error", float(near)))
        return count_bytes(encoded[near])

    top = int(codec.quality_range[1])
    low, high = 0, 1  # bytes fall as NEAR grows: find high with size(high) <= budget
    while size(high) > budget and high < top:
        low, high = high, min(2 * high, top)
    if size(high) > budget:
        setting = Setting("max_error", float(high))
        reached = abs(size(high) / budget - 1.0) <= RATIO_TOLERANCE
        return Found(setting, encoded[high], reached, float(high), not reached)
    if low == 0 and lossless_fits(size(0), budget):
        # Even lossless fits the budget: exact and within it, so store that (as search_ratio).
        return Found(Setting("lossless"), encoded[0], False, 0.0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if size(middle) > budget else (low, middle)
    streams = mix_chunks(encoder, count_bytes, [encoded[low], encoded[high]], budget)
    used = sorted({low if s is encoded[low][i] else high for i, s in enumerate(streams)})
    setting = Setting("max_error", float(used[0])) if len(used) == 1 else Setting("mixed")
    reached = abs(count_bytes(streams) / budget - 1.0) <= RATIO_TOLERANCE
    return Found(setting, streams, reached, float(high))


def _refine_chunks(encodes: Encodes, count_bytes: ByteCounter, streams: list[bytes],
                   under: Trial, over: Trial, budget: int) -> tuple[list[bytes], list[float]]:
    """Land ``streams`` (chunks encoded at ``under``'s or ``over``'s quality knob) within the
    search tolerance of ``budget``: encode the volume at a few knobs around the two and
    choose chunk by chunk among all of these encodes (least total error, then the switch
    that lands). Chunk sizes step, and with SZ3 wander, from knob to knob: more candidates
    per chunk give totals close to any budget. Returns the streams and the knobs encoded
    (``streams`` and no knob when it is already within the tolerance or nothing helps).
    """
    def miss(candidate: list[bytes]) -> float:
        return abs(count_bytes(candidate) / budget - 1.0)

    if miss(streams) <= SEARCH_TOLERANCE:
        return streams, []
    centre = (under.knob + over.knob) / 2
    low, high = encodes.encoder.codec.quality_range
    knobs = [min(max(centre + k, low), high) for k in _REFINE_KNOBS]
    candidates = [over.payload, under.payload,
                  *(encodes(Setting("quality", k)) for k in knobs)]
    mixed = mix_chunks(encodes.encoder, count_bytes, candidates, budget)
    return (mixed, knobs) if miss(mixed) < miss(streams) else (streams, [])


def _ladder_mix(encodes: Encodes, count_bytes: ByteCounter, streams: list[bytes],
                knob: float, budget: int, *, land: bool,
                ) -> tuple[list[bytes], list[Setting]] | None:
    """Mix ``streams`` (the answer of the quality knob, last tried at ``knob``) chunk by
    chunk with encodes of the codec's ``ratio_ladder`` around the budget (the two that
    bracket it and one on either side, found by bisection) and, to land, with encodes at a
    few knobs around ``knob``. Returns the mix and the settings used, or None when the codec
    has no ladder, or the mix lands less well (with ``land``: not within the search
    tolerance) or with more error than ``streams``."""
    encoder = encodes.encoder
    ladder = encoder.codec.ratio_ladder()
    if not ladder:
        return None
    encoded: dict[int, list[bytes]] = {}

    def size(index: int) -> int:
        if index not in encoded:
            encoded[index] = encodes(ladder[index])
        return count_bytes(encoded[index])

    fine, coarse = 0, len(ladder) - 1  # bytes fall along the ladder
    if size(fine) < budget or size(coarse) > budget:
        return None  # the knob alone reaches further than the ladder
    while coarse - fine > 1:
        middle = (fine + coarse) // 2
        fine, coarse = (middle, coarse) if size(middle) > budget else (fine, middle)
    low, high = encoder.codec.quality_range
    rungs = [i for i in (fine - 1, fine, coarse, coarse + 1) if 0 <= i < len(ladder)]
    knobs = [Setting("quality", min(max(knob + step, low), high)) for step in _LADDER_KNOBS]
    candidates = [streams, *(encoded.get(i) or encodes(ladder[i]) for i in rungs),
                  *(encodes(setting) for setting in knobs)]
    used = [*(ladder[i] for i in rungs), *knobs]
    mixed = mix_chunks(encoder, count_bytes, candidates, budget)

    def miss(candidate: list[bytes]) -> float:
        return abs(count_bytes(candidate) / budget - 1.0)

    limit = SEARCH_TOLERANCE if land else max(miss(streams), SEARCH_TOLERANCE)
    if miss(mixed) > limit or \
            squared_errors(encoder, mixed).sum() >= squared_errors(encoder, streams).sum():
        return None
    return mixed, used


def _bound(codec: SliceCodec, settings: list[Setting]) -> float | None:
    bounds = [codec.error_bound(s) for s in settings]
    return None if any(b is None for b in bounds) else max(bounds)


def refuse_out_of_reach(found: Found, codec: SliceCodec, target: Target, ratio: float,
                        source: str, further: Sequence[str] = FAR_REACHING) -> None:
    """Stop, writing nothing, when no setting of the codec meets the ratio; ``ratio`` is what
    its closest end gives (every stored byte counted); ``further``: codecs to suggest."""
    if not found.out_of_reach:
        return
    if ratio < target.value:
        others = [n for n in further if n != codec.name]
        advice = f"use --codec {' or '.join(others)}, or a lower ratio" if others \
            else "use a lower ratio (or a larger volume)"
        raise MedlossyError(source, f"codec {codec.name!r} cannot reach x{target.value:g}: "
                                    f"its coarsest setting gives x{ratio:.2f}; {advice}")
    raise MedlossyError(source, f"codec {codec.name!r} cannot reach x{target.value:g}: its "
                                f"finest lossy setting gives x{ratio:.2f} and it has no "
                                "lossless mode; use a higher ratio, or --codec jpeg2k")


def reachable_ratios(encoder: SliceEncoder, count_bytes: ByteCounter,
                     raw: int) -> tuple[float, float | None]:
    """The ratio of the codec's coarsest setting and, for a codec without a lossless mode,
    of its finest lossy setting (None for the others: lossless takes over)."""
    codec = encoder.codec
    coarsest = Setting("max_error", codec.quality_range[1]) if codec.discrete \
        else Setting("quality", codec.quality_range[0])
    highest = raw / count_bytes(encoder.encode_all(coarsest))
    if "lossless" in codec.modes:
        return highest, None
    finest = encoder.encode_all(Setting("quality", codec.quality_range[1]))
    return highest, raw / count_bytes(finest)
