"""The reader study's designs: what a pair shows, what the rater is asked, how an answer scores.

One small ``Design`` per kind, in a registry by name (``get_design``), so that pairs, the app
and the analysis never branch on a design's name:

- ``side-by-side``: two compressed versions of a slice side by side, every pair of the
  ratios; "which looks better?" (left / cannot decide / right). +1 when the less compressed
  one is picked.
- ``flicker`` (ISO/IEC 29170-2, JPEG AIC-2 style): one viewport alternates the reference
  (the least compressed ratio) and a compressed version every ``flicker_ms``; "do you see
  a flicker?" (yes / no). +1 for yes. Which image is shown first is random per pair.
- ``2afc``: the reference and a compressed version side by side; "which one is
  compressed?" (left / right, no third answer). +1 when the compressed one is picked.

Flicker and 2AFC pairs always hold the reference and one other ratio, so every answer lies on
the detection curve. ``guess`` is the chance of a +1 for a rater who sees nothing: 1/2 in a
forced choice (and side-by-side, where "cannot decide" counts half), 0 in flicker (yes / no;
false alarms are not measured).

In the key a pair's ``less_compressed`` side is where the reference is: for flicker "left"
means the reference is shown in the first phase.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from medlossy.errors import MedlossyError

#: Every answer value any design stores (the database's CHECK).
ALL_ANSWERS = ("left", "right", "undecided", "seen", "unseen")
#: Default time each image of a flicker pair stays on screen (5 alternations a second).
FLICKER_MS = 200
#: Shortest and longest flicker half-period accepted (a 60 Hz screen shows 17 ms frames).
FLICKER_MS_RANGE = (50, 2000)


@dataclass(frozen=True)
class Choice:
    """One answer button: stored value, label, keys (``KeyboardEvent.key`` names)."""

    value: str
    label: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Design:
    """One way of showing a pair and asking about it."""

    name: str
    question: str
    choices: tuple[Choice, ...]
    #: What a +1 means, for the report ("saw the flicker"...).
    success: str
    #: P(+1) for a rater who sees no difference: the psychometric curve's floor.
    guess: float
    #: Whether the viewer alternates the two sides in one viewport.
    flicker: bool = False
    #: Every pair of the ratios (True), or the reference against each other ratio.
    all_ratio_pairs: bool = False
    #: The question asks for the compressed image (2AFC), not the better one.
    pick_compressed: bool = False

    @property
    def answers(self) -> tuple[str, ...]:
        return tuple(choice.value for choice in self.choices)

    def ratio_pairs(self, ratios: tuple[float, ...]) -> list[tuple[float, float]]:
        """The (less, more compressed) ratio pairs shown; ``ratios`` sorted."""
        if self.all_ratio_pairs:
            return list(itertools.combinations(ratios, 2))
        return [(ratios[0], ratio) for ratio in ratios[1:]]

    def score(self, answer: str, less_compressed: str) -> int:
        """+1 the difference was seen (or the right side picked), 0 cannot decide, -1 not."""
        if answer not in self.answers:
            raise ValueError(f"{self.name}: answer must be one of {self.answers}, "
                             f"got {answer!r}")
        if answer == "undecided":
            return 0
        if self.flicker:
            return 1 if answer == "seen" else -1
        right = answer != less_compressed if self.pick_compressed else answer == less_compressed
        return 1 if right else -1


_LEFT, _RIGHT = ("1", "ArrowLeft"), ("3", "ArrowRight")
DESIGNS = {
    design.name: design for design in (
        Design("side-by-side", "Which image shows the anatomy with better quality?",
               (Choice("left", "Left better", _LEFT),
                Choice("undecided", "Cannot decide", ("2", "ArrowDown", " ")),
                Choice("right", "Right better", _RIGHT)),
               "picked the less compressed image (cannot decide: half)", guess=0.5,
               all_ratio_pairs=True),
        Design("flicker", "Do you see the image flicker (any difference between the two "
                          "images shown in turn)?",
               (Choice("seen", "Yes, it flickers", ("1", "y")),
                Choice("unseen", "No flicker", ("3", "n"))),
               "saw the flicker", guess=0.0, flicker=True),
        Design("2afc", "One image is the original, the other compressed: which one is "
                       "compressed?",
               (Choice("left", "Left is compressed", _LEFT),
                Choice("right", "Right is compressed", _RIGHT)),
               "identified the compressed image", guess=0.5, pick_compressed=True),
    )
}
DEFAULT_DESIGN = "side-by-side"


def get_design(name: str) -> Design:
    """The design called ``name`` (study.json's ``design``; absent in older studies)."""
    try:
        return DESIGNS[name]
    except KeyError:
        raise MedlossyError(None, f"unknown reader study design {name!r} (known: "
                                  f"{', '.join(DESIGNS)})") from None
