"""Several ratios from few JPEG 2000 encodes: cut quality layers instead of searching per ratio.

1. Survey: every slice is encoded once with a grid of PSNR layers (2 dB apart); cutting after
   layer l gives the volume's bytes at every grid quality, so each ratio gets a first quality
   (one PSNR target for every slice, as the search per ratio uses).
2. Final encodes: two ratios per encode on slices of 256 x 256 or more (the lowest quality with
   the highest, one layer each), one per encode on smaller slices; a ratio's codestreams are
   the cuts after its layer. A ratio that misses its aim is tried again at a corrected
   quality (secant on log bytes, then regula falsi once two tries bracket the aim); the first
   tries also correct the untried ratios for the survey's bias.
3. Two tries close around the aim are mixed slice by slice (``choose_per_slice``, a Lagrangian
   choice with OpenJPEG's own distortion targets as errors), so a store lands on its aim.

Why final encodes instead of the survey's cuts: every layer below a cut costs packet headers
(12-50 bytes per slice per survey layer), so a survey cut at x20 is 2-5% bigger than a
one-layer stream of the same quality, 0.1-0.4 dB at equal bytes. A cut keeps exactly the
code-block bytes of a one-layer encode at its layer's target (it decodes to the same pixels),
so a final stream loses only the headers of at most one smaller layer below its own.
Why one PSNR target for every slice: with OpenJPEG's distortion targets as the errors, an
equal-slope choice across slices is the equal-PSNR choice; a per-slice choice on the survey's
grid only added rounding (0.03-0.1 dB worse on the 512 x 512 demo CT, measured).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medlossy.codecs.j2k_layers import LayeredStream
from medlossy.codecs.pool import SliceEncoder
from medlossy.ratecontrol.solver import choose_per_slice

#: pylibjpeg-openjpeg encodes at most 100 quality layers.
MAX_LAYERS = 100
#: Survey grid step in dB of OpenJPEG's PSNR target.
GRID_STEP = 2.0
#: Rounds of final encodes before a ratio is given up (the caller then searches it alone).
MAX_ROUNDS = 5
_PEAK_16 = 65535.0
#: Mixed stores aim this fraction over the budget (ratio 0.2% under the target, within the
#: search's 0.4% and the 1% rule): the side of the tolerance that favours quality.
AIM = 0.002
#: Slices with fewer pixels get one final encode per ratio (see ``_groups``).
PAIR_MIN_PIXELS = 256 * 256
#: A try this close to the aim is taken as it is; others are mixed with a try on the other
#: side of the aim, so that every store lands on the aim, not anywhere in the tolerance.
EXACT = 0.001
#: Tries are mixed only within this fraction of the aim: a mix of distant qualities costs
#: PSNR (0.15 dB at x5 between tries 2.4 dB apart, measured), and its errors are estimates.
MIX_SPAN = 0.02
#: ... or within this many dB of each other (bytes climb in steps on small slices).
MIX_GAP_DB = 0.5
#: Largest correction of a first try by the survey bias measured at other qualities.
MAX_BIAS_DB = 2.0
#: How far past the budget a correction aims, so that two tries bracket it.
_OVERSHOOT = 0.003
ByteCounter = Callable[[list[bytes]], int]


@dataclass(frozen=True)
class RatioStreams:
    """A ratio's codestreams cut from layered encodes."""

    streams: list[bytes]
    total: int  # what the ratio's counter says they cost
    quality: float | None  # every slice's PSNR target, None when slices mix two
    reached: bool  # within the tolerance (else the closest the codec gets)


@dataclass
class _Open:
    """A ratio being tuned: one PSNR target for every slice, and what each try gave."""

    budget: int
    counter: ByteCounter
    quality: float
    slope: float  # d log(total) / d quality, from the survey
    tries: list[tuple[float, list[bytes], int]] = field(default_factory=list)

    def correct(self) -> None:
        """Next quality: inside the bracket of tries around the aim once there is one
        (regula falsi on log bytes, kept off its ends: bytes climb in steps on small slices),
        else a secant step (the survey's slope at first) aimed a little past the aim, so
        that the next try brackets it."""
        aim = self.budget * (1.0 + AIM)
        below = [t for t in self.tries if t[2] <= aim]
        above = [t for t in self.tries if t[2] > aim]
        if below and above:
            (q0, _, t0), (q1, _, t1) = max(below, key=lambda t: t[0]), \
                min(above, key=lambda t: t[0])
            fraction = math.log(aim / t0) / math.log(t1 / t0) if t1 > t0 else 0.5
            self.quality = q0 + float(np.clip(fraction, 0.1, 0.9)) * (q1 - q0)
            return
        (q1, _, t1) = self.tries[-1]
        slope = self.slope
        if len(self.tries) >= 2:
            q0, _, t0 = self.tries[-2]
            secant = math.log(t1 / t0) / (q1 - q0) if q1 != q0 else 0.0
            if secant > 0:
                slope = secant
        error = math.log(t1 / aim)
        overshoot = _OVERSHOOT if error < 0 else -_OVERSHOOT
        self.quality = q1 - float(np.clip((error - overshoot) / slope, -6.0, 6.0))

    def mix(self, pixels: int) -> list[bytes] | None:
        """Per slice, the closer try below the budget or the closer one above: the least
        error within the budget (a Lagrangian choice), once two tries bracket it."""
        aim = self.budget * (1.0 + AIM)
        below = [t for t in self.tries if t[2] <= aim]
        above = [t for t in self.tries if t[2] > aim]
        if not below or not above:
            return None
        low, high = max(below, key=lambda t: t[2]), min(above, key=lambda t: t[2])
        close = low[2] >= aim * (1.0 - MIX_SPAN) and high[2] <= aim * (1.0 + MIX_SPAN)
        if not close and high[0] - low[0] > MIX_GAP_DB:
            return None
        candidates = [low[1], high[1]]
        sizes = np.array([[len(c[i]) for c in candidates] for i in range(len(low[1]))])
        metadata = low[2] - int(sizes[:, 0].sum())
        errors = np.broadcast_to(_squared_error(np.array([low[0], high[0]]), pixels),
                                 sizes.shape)
        choice = choose_per_slice(sizes, errors, self.budget * (1.0 + AIM) - metadata)
        return [candidates[c][i] for i, c in enumerate(choice)]


def _squared_error(quality: np.ndarray, pixels: int) -> np.ndarray:
    """A slice's squared error as OpenJPEG aims it: PSNR ``quality`` against the 16-bit peak."""
    return pixels * _PEAK_16**2 * 10.0 ** (-quality / 10.0)


def survey_grid(quality_range: tuple[float, float]) -> np.ndarray:
    """At most ``MAX_LAYERS`` PSNR targets, ``GRID_STEP`` apart, ending at the best quality."""
    low, high = quality_range
    count = min(MAX_LAYERS, int((high - low) / GRID_STEP) + 1)
    return high - GRID_STEP * np.arange(count)[::-1]


def _cuts(parsed: list[LayeredStream], layers: list[int]) -> list[bytes]:
    return [stream.cut(layer) for stream, layer in zip(parsed, layers, strict=True)]


def _groups(ratios: list[float], pixels: int) -> list[list[float]]:
    """Ratios encoded together, one layer each. On slices of ``PAIR_MIN_PIXELS`` or more, two
    per encode: the lowest quality with the highest, and so on, so that a stream carries the
    headers of at most one layer below its own, and a small one (x100's under x5's: 0.01-0.02
    dB at equal bytes on 512 x 512 CT). On smaller slices the headers weigh more (0.09 dB at
    x5 on 96 x 80), and each ratio gets an encode of its own."""
    ordered = sorted(ratios, reverse=True)  # increasing quality
    if pixels < PAIR_MIN_PIXELS:
        return [[ratio] for ratio in ordered]
    return [sorted({ordered[i], ordered[-1 - i]}, reverse=True)
            for i in range((len(ordered) + 1) // 2)]


def encode_ratios(encoder: SliceEncoder, budgets: dict[float, int],
                  counters: dict[float, ByteCounter], quality_range: tuple[float, float], *,
                  tolerance: float, show_progress: bool = False,
                  ) -> tuple[dict[float, RatioStreams], int, set[float]]:
    """Streams for every ratio in ``budgets`` that the layered passes meet within
    ``tolerance``; the number of whole-volume encodes; the ratios whose budget is above the
    best lossy quality. Ratios left out of both (below the survey's worst quality, or not met
    in ``MAX_ROUNDS``) need a search of their own."""
    grid = survey_grid(quality_range)
    count = encoder.slices.shape[0]
    pixels = encoder.slices[0].size
    survey = [LayeredStream.parse(s) for s in encoder.map_slices(
        "encode_layers", [tuple(grid)] * count, label="survey", show_progress=show_progress)]
    passes = 1
    totals = np.array([[s.size(layer + 1) for layer in range(s.layers)] for s in survey],
                      dtype=float).sum(axis=0)
    top = _cuts(survey, [len(grid)] * count)
    states: dict[float, _Open] = {}
    budget_targets = {}
    for ratio, budget in budgets.items():
        # the store's metadata, not codestreams
        target = budget_targets[ratio] = budget - (counters[ratio](top) - sum(map(len, top)))
        if totals[0] <= target < totals[-1]:
            above = int(np.searchsorted(totals, target))  # first grid quality over budget
            slope = max(math.log(totals[above] / totals[above - 1]) / GRID_STEP, 1e-3)
            quality = grid[above - 1] + math.log(target / totals[above - 1]) / slope
            states[ratio] = _Open(budget, counters[ratio], quality, slope)
    results: dict[float, RatioStreams] = {}
    # The survey's cuts carry the headers of every grid layer below them, so its sizes run
    # high (1-6%, more at low rates). Each first try measures that bias at its quality; the
    # ratios not tried yet are corrected by the bias interpolated at theirs.
    bias: dict[float, float] = {}
    beyond = {r for r in budgets if r not in states and budget_targets[r] >= totals[-1]}
    for _ in range(MAX_ROUNDS):
        for group in _groups([r for r in states if r not in results and r not in beyond],
                             pixels):
            if bias:
                known = sorted(bias)
                for ratio in group:
                    if not states[ratio].tries:
                        error = float(np.interp(states[ratio].quality, known,
                                                [bias[q] for q in known]))
                        states[ratio].quality -= float(np.clip(
                            error / states[ratio].slope, -MAX_BIAS_DB, MAX_BIAS_DB))
            qualities = {r: float(np.clip(states[r].quality, grid[0], grid[-1]))
                         for r in group}
            layers = sorted(set(qualities.values()))
            parsed = [LayeredStream.parse(s) for s in encoder.map_slices(
                "encode_layers", [tuple(layers)] * count, label=f"final pass {passes}",
                show_progress=show_progress)]
            passes += 1
            for ratio in group:
                state = states[ratio]
                streams = _cuts(parsed, [layers.index(qualities[ratio]) + 1] * count)
                total = state.counter(streams)
                if not state.tries:
                    bias[qualities[ratio]] = math.log(total / state.budget)
                state.tries.append((qualities[ratio], streams, total))
                if qualities[ratio] >= grid[-1] and total < state.budget * (1.0 - tolerance):
                    beyond.add(ratio)  # the best quality is under budget: no lossy try will do
                    continue
                if abs(total / (state.budget * (1.0 + AIM)) - 1.0) <= EXACT:
                    results[ratio] = RatioStreams(streams, total, qualities[ratio], True)
                    continue
                mixed = state.mix(pixels)
                if mixed is not None:
                    total = state.counter(mixed)
                    if abs(total / state.budget - 1.0) <= tolerance:
                        results[ratio] = RatioStreams(mixed, total, None, True)
                        continue
                state.correct()
    for ratio, state in states.items():  # out of rounds: the closest try, if close enough
        if ratio not in results and state.tries:
            quality, streams, total = min(state.tries,
                                          key=lambda t: abs(math.log(t[2] / state.budget)))
            if abs(total / state.budget - 1.0) <= tolerance:
                results[ratio] = RatioStreams(streams, total, quality, True)
    return results, passes, beyond
