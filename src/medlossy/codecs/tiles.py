"""How an axial slice is cut into tiles, each encoded as its own codestream.

A slice of ``rows x columns`` with tiles of ``tile_rows x tile_columns`` has a grid of
``ceil(rows / tile_rows) x ceil(columns / tile_columns)`` tiles, numbered row-major. As in
zarr's edge chunks, every tile is encoded full size: an edge tile's voxels outside the slice
repeat its last row and column (cheap for a wavelet codec) and are dropped on decode. An
untiled slice is the grid of one tile, the slice itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one ``rows x columns`` slice."""

    rows: int
    columns: int
    tile_rows: int
    tile_columns: int

    @classmethod
    def of(cls, rows: int, columns: int, tile: int | None = None) -> TileGrid:
        """Square tiles of side ``tile`` (None: the whole slice), clipped to the slice."""
        if tile is None:
            return cls(rows, columns, rows, columns)
        return cls(rows, columns, min(tile, rows), min(tile, columns))

    @property
    def tiled(self) -> bool:
        return (self.tile_rows, self.tile_columns) != (self.rows, self.columns)

    # cached: a patch's read asks for them once per tile it decodes
    @cached_property
    def shape(self) -> tuple[int, int]:
        """Tiles down and across."""
        return -(-self.rows // self.tile_rows), -(-self.columns // self.tile_columns)

    @cached_property
    def per_slice(self) -> int:
        down, across = self.shape
        return down * across

    def position(self, tile: int) -> tuple[int, int]:
        """(tile row, tile column) of tile number ``tile``."""
        return divmod(tile, self.shape[1])

    def window(self, tile: int) -> tuple[slice, slice]:
        """The rows and columns of the slice that tile ``tile`` holds."""
        down, across = self.position(tile)
        return (slice(down * self.tile_rows, min((down + 1) * self.tile_rows, self.rows)),
                slice(across * self.tile_columns,
                      min((across + 1) * self.tile_columns, self.columns)))

    def cut(self, plane: np.ndarray, tile: int) -> np.ndarray:
        """Tile ``tile`` of ``plane`` as encoded: full size, edge voxels repeated."""
        rows, columns = self.window(tile)
        part = np.asarray(plane[rows, columns])
        missing = (self.tile_rows - part.shape[0], self.tile_columns - part.shape[1])
        if missing == (0, 0):
            return part
        return np.pad(part, [(0, missing[0]), (0, missing[1])], mode="edge")

    def trim(self, decoded: np.ndarray, tile: int, level: int = 0) -> np.ndarray:
        """A decoded tile (or its resolution level ``level``) without its padding."""
        rows, columns = self.window(tile)
        factor = 2**level
        return decoded[..., : -(-(rows.stop - rows.start) // factor),
                       : -(-(columns.stop - columns.start) // factor)]

    def assemble(self, tiles: Sequence[np.ndarray]) -> np.ndarray:
        """One slice from its decoded tiles, in tile order."""
        if not self.tiled:
            return tiles[0]
        plane = np.empty((self.rows, self.columns), dtype=tiles[0].dtype)
        for index, decoded in enumerate(tiles):
            rows, columns = self.window(index)
            plane[rows, columns] = self.trim(decoded, index)
        return plane

    def touched(self, rows: slice, columns: slice, level: int = 0) -> list[int]:
        """Tiles holding any of ``rows`` x ``columns`` of the slice at resolution ``level``
        (tile sides divisible by 2**level)."""
        factor = 2**level
        height, width = self.tile_rows // factor, self.tile_columns // factor
        across = self.shape[1]
        return [down * across + column
                for down in range(rows.start // height, (rows.stop - 1) // height + 1)
                for column in range(columns.start // width, (columns.stop - 1) // width + 1)]
