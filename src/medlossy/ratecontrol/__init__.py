"""Rate control: encode a volume so that its output meets a target, one entry point per mode.

Data flow: a ``Target`` and a filled ``SliceEncoder`` (wrapped in ``Encodes``, which counts
whole-volume encodes) -> the mode's entry point -> ``Found`` (codestreams, setting, error
bound). The caller (``medlossy.compression``) plans before and verifies and writes after;
nothing here writes a file.

- ``ratio.search_ratio``: a byte budget, every byte of the output counted by the caller's
  ``ByteCounter``; ``ratios.search_ratios``: several ratios of one volume (a sweep), JPEG
  2000's from layered encodes (``layered``).
- ``psnr.search_psnr``: a PSNR, corrected by the PSNR measured on the codes.
- ``max_error.encode_max_error``: every voxel within a bound (``max_error_codes``).
- ``lossless.encode_lossless``: bit-exact; ``lossless.lossless_within``: the lossless
  codestreams where they fit a ratio's budget, which every ratio search asks first.
- ``modes.search``: the one call that picks among them by ``Target.mode``
  (``modes.require_target`` first refuses what the codec cannot aim for).
- ``solver``: the pure budget solvers (secant search, per-chunk choice within a budget);
  ``mixing``: codestreams of several encodes mixed chunk by chunk.
"""

from medlossy.ratecontrol.base import (
    RATIO_TOLERANCE,
    SEARCH_TOLERANCE,
    ByteCounter,
    Encodes,
    Found,
    Target,
)
from medlossy.ratecontrol.lossless import encode_lossless, lossless_fits
from medlossy.ratecontrol.max_error import encode_max_error, max_error_codes
from medlossy.ratecontrol.modes import require_target, search
from medlossy.ratecontrol.psnr import search_psnr
from medlossy.ratecontrol.ratio import (
    FAR_REACHING,
    reachable_ratios,
    refuse_out_of_reach,
    search_ratio,
)
from medlossy.ratecontrol.ratios import search_ratios
from medlossy.ratecontrol.solver import (
    Outcome,
    Trial,
    choose_per_slice,
    fill_budget,
    land_budget,
    solve_budget,
)

__all__ = [
    "FAR_REACHING",
    "RATIO_TOLERANCE",
    "SEARCH_TOLERANCE",
    "ByteCounter",
    "Encodes",
    "Found",
    "Outcome",
    "Target",
    "Trial",
    "choose_per_slice",
    "encode_lossless",
    "encode_max_error",
    "fill_budget",
    "land_budget",
    "lossless_fits",
    "max_error_codes",
    "reachable_ratios",
    "refuse_out_of_reach",
    "require_target",
    "search",
    "search_psnr",
    "search_ratio",
    "search_ratios",
    "solve_budget",
]
