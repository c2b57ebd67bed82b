"""Find the codec setting whose total stored bytes meet a budget (pure; the caller encodes).

The search runs on a scalar knob along which bytes grow (PSNR target, or -log of a per-slice
ratio). Each trial is one encode of the whole volume, so trials are few: a secant step on
log(bytes) until the budget is bracketed, then interpolation kept inside the bracket.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

Payload = TypeVar("Payload")


@dataclass(frozen=True)
class Trial(Generic[Payload]):
    knob: float
    total_bytes: int
    payload: Payload

    def error(self, target_bytes: int) -> float:
        """Signed log error: > 0 means too many bytes."""
        return math.log(self.total_bytes / target_bytes)


@dataclass(frozen=True)
class Outcome(Generic[Payload]):
    best: Trial[Payload]
    trials: int
    reached: bool
    #: When not reached: the closest trials with fewer and with more bytes than the budget
    #: (payloads kept), for a caller that can mix them chunk by chunk.
    under: Trial[Payload] | None = None
    over: Trial[Payload] | None = None
    #: The search stopped at an end of the knob range with the budget still beyond it: no
    #: setting of the codec meets the budget (``best`` is the closest end).
    out_of_reach: bool = False


def solve_budget(
    measure: Callable[[float], tuple[int, Payload]],
    target_bytes: int,
    knob_range: tuple[float, float],
    *,
    start: float,
    slope: float,
    tolerance: float = 0.005,
    max_trials: int = 20,
) -> Outcome[Payload]:
    """Search ``knob`` in ``knob_range`` so that ``measure(knob)[0]`` is within ``tolerance``
    (relative) of ``target_bytes``.

    Args:
        measure: knob -> (total bytes, anything to keep from that trial, e.g. codestreams).
        start: first knob to try (a good guess saves whole-volume encodes).
        slope: expected d log(bytes) / d knob, used until two trials give a secant.

    Returns the trial closest to the budget; ``reached`` says whether it is within tolerance.
    When the budget lies outside what the knob range can give, the closest end is returned.
    """
    low, high = knob_range
    # Payloads can be as large as the volume: keep only the best trial's and the closest on
    # either side of the budget, drop the others.
    trials: list[Trial[None]] = []
    best: Trial[Payload] | None = None
    under: Trial[Payload] | None = None
    over: Trial[Payload] | None = None
    below: Trial[None] | None = None  # largest knob known to give too few bytes
    above: Trial[None] | None = None  # smallest knob known to give too many bytes
    knob = min(max(start, low), high)
    out_of_reach = False
    while len(trials) < max_trials:
        total, payload = measure(knob)
        trial = Trial(knob, total, None)
        trials.append(trial)
        error = trial.error(target_bytes)
        kept = Trial(knob, total, payload)
        if best is None or abs(error) < abs(best.error(target_bytes)):
            best = kept
        if total <= target_bytes and (under is None or total > under.total_bytes):
            under = kept
        if total > target_bytes and (over is None or total < over.total_bytes):
            over = kept
        del payload, kept
        if abs(total / target_bytes - 1.0) <= tolerance:
            break
        if error < 0 and (below is None or knob > below.knob):
            below = trial
        if error > 0 and (above is None or knob < above.knob):
            above = trial
        if below is not None and above is not None:
            width = above.knob - below.knob
            if width <= 1e-9 * max(1.0, abs(knob)):
                break  # bytes jump across the target between two equal knobs
            e_below, e_above = below.error(target_bytes), above.error(target_bytes)
            knob = below.knob + width * (-e_below) / (e_above - e_below)
            knob = min(max(knob, below.knob + 0.05 * width), above.knob - 0.05 * width)
            continue
        if len(trials) >= 2 and trials[-1].knob != trials[-2].knob:
            previous = trials[-2]
            secant = (trial.error(target_bytes) - previous.error(target_bytes)) / (
                trial.knob - previous.knob)
            if secant > 0:
                slope = secant
        step = -error / slope
        if (error < 0 and knob >= high) or (error > 0 and knob <= low):
            out_of_reach = True
            break
        knob = min(max(knob + step, low), high)
    assert best is not None
    reached = abs(best.total_bytes / target_bytes - 1.0) <= tolerance
    if reached:
        return Outcome(best, len(trials), reached)
    return Outcome(best, len(trials), reached, under, over, out_of_reach)


def choose_per_slice(sizes: np.ndarray, errors: np.ndarray, budget: int) -> np.ndarray:
    """Pick one candidate encoding per slice: least total error within ``budget`` bytes.

    ``sizes`` and ``errors`` are (slices, candidates). A Lagrangian choice (each slice takes
    the candidate minimising error + lambda * bytes, lambda bisected to the smallest value
    that fits) is optimal on the convex hull of the candidates, which is what rate
    allocation across slices needs: bytes go where they remove the most error.
    Returns the chosen candidate index of every slice.
    """
    sizes, errors = np.asarray(sizes, dtype=float), np.asarray(errors, dtype=float)

    def pick(weight: float) -> np.ndarray:
        # Ties (equal cost) go to the smaller encoding.
        cost = errors + weight * sizes + 1e-9 * sizes
        return np.argmin(cost, axis=1)

    def total(choice: np.ndarray) -> float:
        return float(sizes[np.arange(len(choice)), choice].sum())

    choice = pick(0.0)
    if total(choice) <= budget:
        return choice
    low, high = -30.0, 30.0  # log10 of lambda
    for _ in range(100):
        middle = (low + high) / 2
        if total(pick(10.0**middle)) <= budget:
            high = middle
        else:
            low = middle
    return pick(10.0**high)
