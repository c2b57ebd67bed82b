"""Display windows: map original intensities (HU for CT) to 8-bit grey levels.

Both images of a pair go through the same window, so the only difference a rater can see is
the compression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from medlossy.errors import MedlossyError

#: Width / level in HU, as radiology departments commonly set them.
PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "soft-tissue": (400.0, 40.0),
    "bone": (1800.0, 400.0),
    "liver": (150.0, 30.0),
    "brain": (80.0, 40.0),
    "lung": (1500.0, -600.0),
}
_CUSTOM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[/,:]\s*(-?\d+(?:\.\d+)?)\s*$")
#: MR has no absolute intensity scale: its window spans these percentiles of the original slice.
AUTO_PERCENTILES = (0.5, 99.5)
#: The viewer's window presets, in the order of its buttons and keys 4-7.
VIEWER_CT_PRESETS = ("soft-tissue", "lung", "bone", "brain")
VIEWER_MR_PERCENTILES = ((0.5, 99.5), (1.0, 99.0), (2.0, 98.0), (5.0, 95.0))


@dataclass(frozen=True)
class Window:
    """``width``/``level`` in original units, or ``auto`` (percentiles of the original slice)."""

    name: str
    width: float = 0.0
    level: float = 0.0

    @property
    def auto(self) -> bool:
        return self.name == "auto"

    def bounds(self, reference: np.ndarray) -> tuple[float, float]:
        """(low, high) for this slice; ``reference`` is the uncompressed original slice."""
        if self.auto:
            low, high = np.percentile(reference, AUTO_PERCENTILES)
            return float(low), float(max(high, low + 1e-6))
        return self.level - self.width / 2, self.level + self.width / 2

    def apply(self, values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
        low, high = bounds
        scaled = (np.asarray(values, dtype=np.float64) - low) / (high - low)
        return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)

    def describe(self) -> str:
        if self.auto:
            return "auto (0.5-99.5 percentiles of the original slice)"
        return f"{self.name} (W {self.width:g} / L {self.level:g})"


def parse_window(text: str) -> Window:
    """A preset name (abdomen, soft-tissue, liver, brain, lung, bone), ``auto``, or a custom
    ``W/L`` such as 350/50.

    >>> parse_window("400/40")
    Window(name='custom', width=400.0, level=40.0)
    """
    name = text.strip().lower()
    if name in PRESETS:
        return Window(name, *PRESETS[name])
    if name == "auto":
        return Window("auto")
    match = _CUSTOM.match(name)
    if match and float(match.group(1)) > 0:
        return Window("custom", float(match.group(1)), float(match.group(2)))
    raise MedlossyError(None, f"unknown window {text!r}: use one of {', '.join(PRESETS)}, auto, "
                              "or a custom WIDTH/LEVEL such as 350/50")
