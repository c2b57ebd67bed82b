"""How nnU-Net's preprocessed training cases are kept: its blosc2 float32, or medlossy stores.

    "blosc2"   nnU-Net's own files (float32 images, the default)
    "lossless" each image channel a lossless 16-bit store
    "x20"      each image channel a 16-bit store at ratio 20 (raw 16-bit bytes / stored bytes)

with a codec ("htj2k", the default, or "jpeg2k") and a tile side (stores of square tiles,
so that a patch decodes only the tiles it touches; 0 = whole slices). This module only
parses and names the choice; ``medlossy.nnunet.preprocessed`` writes and reads the stores
(it imports nnU-Net, so only the worker process imports it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BLOSC2 = "blosc2"
LOSSLESS = "lossless"
CODECS = ("htj2k", "jpeg2k")
DEFAULT_CODEC = "htj2k"
#: Tiles of 128 x 128: a 160 x 160 patch touches 4 to 9 of them instead of whole slices.
DEFAULT_TILE = 128
_RATIO = re.compile(r"^x(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class PreprocessedStorage:
    """What nnU-Net's preprocessed images are stored as (see the module docstring)."""

    kind: str = BLOSC2
    ratio: float | None = None
    codec: str = DEFAULT_CODEC
    tile: int = DEFAULT_TILE

    @property
    def is_blosc2(self) -> bool:
        return self.kind == BLOSC2

    @property
    def name(self) -> str:
        """The choice as the option spells it: blosc2, lossless or xR."""
        return f"x{self.ratio:g}" if self.kind == "ratio" else self.kind

    def folder(self, data_identifier: str) -> str:
        """The preprocessed folder of this storage, beside nnU-Net's ``data_identifier``
        (e.g. nnUNetPlans_3d_fullres -> nnUNetPlans_3d_fullres_medlossy_htj2k_x20_t128)."""
        if self.is_blosc2:
            return data_identifier
        return f"{data_identifier}_medlossy_{self.codec}_{self.name}_t{self.tile}"

    def to_dict(self) -> dict:
        return {"storage": self.name, "codec": self.codec, "tile": self.tile}


def parse_storage(storage: str, codec: str = DEFAULT_CODEC,
                  tile: int = DEFAULT_TILE) -> PreprocessedStorage:
    """``storage`` ("blosc2", "lossless" or "xR" with R > 1), ``codec`` and ``tile`` checked.

    Raises:
        ValueError: naming the bad value and what is allowed.
    """
    if codec not in CODECS:
        raise ValueError(f"preprocessed_codec must be one of {CODECS}, got {codec!r}")
    if isinstance(tile, bool) or not isinstance(tile, int) or (tile != 0 and tile < 32):
        raise ValueError(f"preprocessed_tile must be 0 (whole slices) or at least 32, "
                         f"got {tile!r}")
    if storage == BLOSC2:
        return PreprocessedStorage()
    if storage == LOSSLESS:
        return PreprocessedStorage(LOSSLESS, None, codec, tile)
    match = _RATIO.match(str(storage))
    if match is None or float(match.group(1)) <= 1:
        raise ValueError(f"preprocessed must be 'blosc2', 'lossless' or a ratio such as "
                         f"'x20' (> 1), got {storage!r}")
    return PreprocessedStorage("ratio", float(match.group(1)), codec, tile)
