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


def fill_budget(sizes: np.ndarray, errors: np.ndarray, choice: np.ndarray,
                budget: int) -> np.ndarray:
    """Spend what ``choice`` leaves of ``budget``: switch slices, one at a time, to a bigger
    candidate with less error, the most error removed per byte first, while the total fits.

    A Lagrangian choice lands on a corner of the convex hull, which can sit a whole slice's
    step under the budget when slices are few; the leftover bytes still buy error.
    """
    sizes, errors = np.asarray(sizes, dtype=float), np.asarray(errors, dtype=float)
    choice = np.array(choice)
    rows = np.arange(len(choice))
    while True:
        left = budget - sizes[rows, choice].sum()
        extra = sizes - sizes[rows, choice][:, None]
        gain = errors[rows, choice][:, None] - errors
        fits = (extra > 0) & (extra <= left) & (gain > 0)
        if not fits.any():
            return choice
        value = np.where(fits, gain / np.where(fits, extra, 1.0), -np.inf)
        row, column = np.unravel_index(int(np.argmax(value)), value.shape)
        choice[row] = column


def land_budget(sizes: np.ndarray, errors: np.ndarray, choice: np.ndarray,
                window: tuple[float, float], max_pairs: int = 4_000_000) -> np.ndarray:
    """Move the total of ``choice`` into ``window`` (low, high bytes) by switching one slice,
    or else two, to another candidate: of the switches that land, the one adding the least
    error. Returns ``choice`` unchanged when it is already inside or nothing lands.

    Error-led choices stop where no switch removes error within the budget, which with few
    slices can be percents under it; landing matters more than the last bit of error.
    """
    sizes, errors = np.asarray(sizes, dtype=float), np.asarray(errors, dtype=float)
    rows = np.arange(len(choice))
    low, high = window
    total = sizes[rows, choice].sum()
    if low <= total <= high:
        return choice
    grow = (sizes - sizes[rows, choice][:, None]).ravel()
    worse = (errors - errors[rows, choice][:, None]).ravel()
    owner = np.repeat(rows, sizes.shape[1])
    lands = (total + grow >= low) & (total + grow <= high)
    best = None
    if lands.any():
        best = (int(np.argmin(np.where(lands, worse, np.inf))),)
    elif grow.size ** 2 <= max_pairs:
        pair_total = total + grow[:, None] + grow[None, :]
        lands = (pair_total >= low) & (pair_total <= high) & (owner[:, None] < owner[None, :])
        if lands.any():
            cost = np.where(lands, worse[:, None] + worse[None, :], np.inf)
            best = np.unravel_index(int(np.argmin(cost)), cost.shape)
    choice = np.array(choice)
    if best is None:
        return _walk_to(sizes, errors, choice, window)
    for flat in best:
        choice[owner[flat]] = int(flat) % sizes.shape[1]
    return choice


def _walk_to(sizes: np.ndarray, errors: np.ndarray, choice: np.ndarray,
             window: tuple[float, float]) -> np.ndarray:
    """Switch slices one at a time towards ``window``, least added error per byte moved
    first, never past its far side; stops inside it or when no switch is left."""
    rows, (low, high) = np.arange(len(choice)), window
    while True:
        total = sizes[rows, choice].sum()
        if low <= total <= high:
            return choice
        move = sizes - sizes[rows, choice][:, None]
        usable = (move > 0) & (total + move <= high) if total < low \
            else (move < 0) & (total + move >= low)
        if not usable.any():
            return choice
        worse = errors - errors[rows, choice][:, None]
        cost = np.where(usable, worse / np.where(usable, np.abs(move), 1.0), np.inf)
        row, column = np.unravel_index(int(np.argmin(cost)), cost.shape)
        choice[row] = column
