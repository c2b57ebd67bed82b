"""What every rate-control mode shares: the target, the answer, the tolerances, the encodes.

A mode receives ``Encodes`` (whole-volume encodes of a filled ``SliceEncoder``, counted) and,
for a ratio, a ``ByteCounter`` (what a candidate costs in the output); it returns ``Found``:
the codestreams to write, the setting that made them and the error bound they promise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from medlossy.codecs import Setting
from medlossy.codecs.pool import SliceEncoder

#: A ratio is met when the whole store is within this fraction of the target.
RATIO_TOLERANCE = 0.01
#: The search aims tighter, so that the metadata written afterwards cannot tip it over.
SEARCH_TOLERANCE = 0.004
#: Total bytes that a candidate set of codestreams costs in the output (store or DICOM).
ByteCounter = Callable[[list[bytes]], int]


@dataclass(frozen=True)
class Target:
    """What to aim for.

    ``mode``: "ratio" (value = raw 16-bit bytes / stored bytes), "psnr" (value in dB, the
    study's definition), "max_error" (value = largest absolute error, in the volume's units)
    or "lossless". ``allocation`` (ratio mode): "psnr" spreads bytes so
    every slice gets the same distortion target; "equal" gives every slice the same ratio;
    "optimal" runs both searches and picks, slice by slice, the encoding that removes the most
    error per byte within the budget (never worse than either, about 30% more encoding).
    """

    mode: Literal["ratio", "psnr", "max_error", "lossless"]
    value: float = 0.0
    allocation: Literal["psnr", "equal", "optimal"] = "psnr"

    def __post_init__(self) -> None:
        if self.mode == "ratio" and not self.value > 1.0:
            raise ValueError(f"a lossy ratio must be greater than 1, got {self.value:g}")
        if self.mode == "psnr" and not self.value > 0.0:
            raise ValueError(f"a PSNR target must be positive, got {self.value:g}")
        if self.mode == "max_error" and not self.value > 0.0:
            raise ValueError(f"a maximum error must be positive, got {self.value:g}")
        if self.allocation not in ("psnr", "equal", "optimal"):
            raise ValueError("allocation must be 'psnr', 'equal' or 'optimal', got "
                             f"{self.allocation!r}")

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"mode": self.mode}
        if self.mode != "lossless":
            document["value"] = self.value
        if self.mode == "ratio":
            document["allocation"] = self.allocation
        return document


@dataclass(frozen=True)
class Found:
    """The codestreams a mode chose, and what they promise."""

    setting: Setting
    streams: list[bytes]
    reached: bool
    #: Largest error (codes) any chunk may show; None when the setting promises none.
    bound: float | None = None
    #: No setting of the codec meets the ratio: ``streams`` are its closest end.
    out_of_reach: bool = False


class Encodes:
    """Whole-volume encodes of one filled ``SliceEncoder``, counted: a store records how many
    passes its search took, and the progress bar names each."""

    def __init__(self, encoder: SliceEncoder, label: str, *, show_progress: bool = False,
                 ) -> None:
        self.encoder, self.label, self.show_progress = encoder, label, show_progress
        self.passes = 0
        self._lossless: list[bytes] | None = None
        #: A lossless encode of a sample of the chunks (``lossless.lossless_within``).
        self.lossless_sample: list[bytes] | None = None

    def __call__(self, setting: Setting) -> list[bytes]:
        """Every chunk encoded at ``setting``, in order."""
        self.passes += 1
        return self.encoder.encode_all(setting, label=f"{self.label} pass {self.passes}",
                                       show_progress=self.show_progress)

    def lossless(self) -> list[bytes]:
        """Every chunk encoded losslessly, once per volume: a later call (another ratio of a
        sweep, a search that ends under its budget) reuses that encode."""
        if self._lossless is None:
            self._lossless = self(Setting("lossless"))
        return self._lossless

    @property
    def has_lossless(self) -> bool:
        return self._lossless is not None
