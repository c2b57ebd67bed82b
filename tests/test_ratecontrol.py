"""The budget search on synthetic monotone byte curves (no codec involved)."""

from __future__ import annotations

import math

import pytest

from medlossy.ratecontrol import solve_budget


class Curve:
    """bytes = 1000 exp(a knob) + a staircase: monotone, not smooth, like a real codec."""

    def __init__(self, a: float = 0.25, step: int = 37) -> None:
        self.a, self.step = a, step
        self.calls: list[float] = []

    def bytes(self, knob: float) -> int:
        return int(1000 * math.exp(self.a * knob)) + self.step * math.floor(knob)

    def __call__(self, knob: float) -> tuple[int, float]:
        self.calls.append(knob)
        return self.bytes(knob), knob


@pytest.mark.parametrize("target", [1500, 7777, 20000, 123456])
def test_finds_the_budget_within_tolerance_in_few_trials(target):
    curve = Curve()
    outcome = solve_budget(curve, target, (0.0, 40.0), start=10.0, slope=0.1, tolerance=0.005)
    assert outcome.reached
    assert abs(outcome.best.total_bytes / target - 1.0) <= 0.005
    assert outcome.trials <= 8
    assert outcome.trials == len(curve.calls)
    # the payload and byte count belong to the trial that is reported
    assert outcome.best.payload == outcome.best.knob
    assert outcome.best.total_bytes == curve.bytes(outcome.best.knob)


def test_a_good_slope_guess_needs_fewer_trials_than_a_bad_one():
    good, bad = Curve(), Curve()
    solve_budget(good, 50000, (0.0, 40.0), start=10.0, slope=0.25, tolerance=0.005)
    solve_budget(bad, 50000, (0.0, 40.0), start=10.0, slope=0.02, tolerance=0.005)
    assert len(good.calls) <= len(bad.calls)
    assert len(good.calls) <= 4


def test_budget_above_the_range_returns_the_top_end_not_reached():
    curve = Curve()
    top = curve.bytes(40.0)
    outcome = solve_budget(curve, top * 3, (0.0, 40.0), start=10.0, slope=0.25)
    assert not outcome.reached
    assert outcome.best.knob == 40.0
    assert outcome.best.total_bytes == top
    assert outcome.out_of_reach
    assert outcome.trials < 20  # gives up at the end instead of spending every trial


def test_budget_below_the_range_returns_the_bottom_end_not_reached():
    curve = Curve()
    outcome = solve_budget(curve, 300, (0.0, 40.0), start=10.0, slope=0.25)
    assert not outcome.reached
    assert outcome.best.knob == 0.0
    assert outcome.best.total_bytes == curve.bytes(0.0)
    assert outcome.out_of_reach
    assert outcome.trials < 20


def test_start_outside_the_range_is_clamped():
    curve = Curve()
    solve_budget(curve, 5000, (2.0, 30.0), start=-50.0, slope=0.25)
    assert curve.calls[0] == 2.0
    assert all(2.0 <= knob <= 30.0 for knob in curve.calls)


def test_a_jump_across_the_target_returns_the_closer_side():
    calls: list[float] = []

    def jump(knob: float) -> tuple[int, None]:
        calls.append(knob)
        return (1000 if knob < 5.0 else 2600), None

    outcome = solve_budget(jump, 2000, (0.0, 10.0), start=1.0, slope=0.2, max_trials=20)
    assert not outcome.reached
    assert outcome.best.total_bytes == 2600  # |log(2600/2000)| < |log(1000/2000)|
    assert not outcome.out_of_reach  # the budget lies inside the range, in a jump
    assert outcome.trials <= 20
    # the bracket closes in on the jump
    assert min(k for k in calls if k >= 5.0) - max(k for k in calls if k < 5.0) < 0.5


def test_stops_as_soon_as_the_first_trial_is_within_tolerance():
    curve = Curve()
    target = curve.bytes(12.0)
    outcome = solve_budget(curve, target, (0.0, 40.0), start=12.0, slope=0.25)
    assert outcome.reached and outcome.trials == 1


def test_a_jump_across_the_target_keeps_both_sides_for_mixing():
    """Sizes that step (ZFP's fixed rate): the closest encodes under and over the budget come
    back with their payloads, so the caller can mix them chunk by chunk."""
    def measure(knob: float):
        total = 1000 if knob < 5.0 else 1400
        return total, f"payload {total} at {knob:.3f}"

    outcome = solve_budget(measure, 1200, (0.0, 10.0), start=1.0, slope=0.1)
    assert not outcome.reached
    assert outcome.under.total_bytes == 1000 and outcome.under.payload.startswith("payload 1000")
    assert outcome.over.total_bytes == 1400 and outcome.over.payload.startswith("payload 1400")


def test_a_reached_budget_keeps_no_extra_payloads():
    outcome = solve_budget(lambda knob: (int(1000 * 2 ** (knob / 6)), None), 2000, (0.0, 60.0),
                           start=0.0, slope=math.log(2) / 6)
    assert outcome.reached and outcome.under is None and outcome.over is None
