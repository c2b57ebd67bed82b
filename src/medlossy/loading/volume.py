"""One store opened for patch reads: decode only the slices (and resolution level) a patch needs.

Data flow: patch box (z, y, x in the store's axis order, at resolution ``level``) -> the
slices z..z+depth, each read and CRC-checked, decoded at that level (threads: imagecodecs and
OpenJPEG release the GIL) -> the y/x window cropped -> codes mapped to values (float32,
original units). In an untiled store slices are whole codestreams: JPEG 2000 decodes only the
y/x window's share of each (OpenJPEG's decode area, the code-blocks the window needs), other
codecs decode the whole slice and crop it; in a tiled store (``compress --tile``) only the
tiles the y/x window touches are read and decoded (see BENCHMARKS.md, loader). Stores of 3D
codecs hold blocks of slices: each block the box touches is decoded once, in full, and
reduced levels are block means of the decoded slices.

With a decode cache (``medlossy.loading.cache``, off by default), decoded slices and tiles
are kept for later boxes: slices and tiles it holds are neither read nor decoded again.
Untiled JPEG 2000 slices are then decoded whole and kept only while the cache finds that
reads come back to them often enough to pay for it (``DecodeCache.revisits``); otherwise
their windows are decoded as without a cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from functools import partial

import numpy as np

from medlossy.codecs import get_codec
from medlossy.errors import MedlossyError
from medlossy.loading.cache import DecodeCache, decode_cache
from medlossy.loading.decoders import (
    WINDOW_DECODERS,
    Window,
    block_mean,
    decode_slice,
    note_whole_slices,
)
from medlossy.store import SliceStore


class StoreVolume:
    """Random access to boxes of one store, in its axis order (slices, rows, columns)."""

    def __init__(self, path: str | os.PathLike[str], *, level: int = 0) -> None:
        self.store = SliceStore(path)
        #: The store's folder, or its URL.
        self.path = self.store.path
        self.codec = get_codec(self.store.attributes["codec"]["name"])
        self.mapping = self.store.mapping
        self.level = level
        rows, columns = self.store.slice_shape
        factor = 2**level
        grid = self.store.grid
        if grid.tiled and (grid.tile_rows % factor or grid.tile_columns % factor):
            raise MedlossyError(self.path, f"resolution level {level} needs tiles divisible "
                                           f"by {factor}, the store's are "
                                           f"{grid.tile_rows}x{grid.tile_columns}")
        self.shape = (self.store.slices, -(-rows // factor), -(-columns // factor))
        if not grid.tiled and self.store.depth == 1:
            note_whole_slices(self.codec.name)

    @property
    def axial_axis(self) -> int:
        return int(self.store.attributes["geometry"]["axial_axis"])

    @property
    def source_shape(self) -> tuple[int, int, int]:
        return tuple(self.store.attributes["geometry"]["shape"])

    def _slice(self, index: int, data: bytes, rows: slice, columns: slice) -> np.ndarray:
        """The ``rows`` x ``columns`` window of slice ``index`` (its codestream ``data``) at
        the volume's level."""
        whole = (rows, columns) == (slice(0, self.shape[1]), slice(0, self.shape[2]))
        try:
            return decode_slice(self.codec, data, self.level, self.store.slice_shape,
                                self.mapping.code_dtype, None if whole else (rows, columns))
        except Exception as error:  # decoder errors come in library-specific types
            raise MedlossyError(self.store.chunk_path(index),
                                f"slice {index} cannot be decoded ({error})") from None

    def _tile(self, index: int, data: bytes) -> np.ndarray:
        """Chunk ``index`` (its codestream ``data``) of a tiled store at the volume's level,
        its padding dropped."""
        grid = self.store.grid
        try:
            codes = decode_slice(self.codec, data, self.level,
                                 (grid.tile_rows, grid.tile_columns), self.mapping.code_dtype)
        except Exception as error:  # decoder errors come in library-specific types
            raise MedlossyError(self.store.chunk_path(index), f"{self.store.chunk_name(index)} "
                                f"cannot be decoded ({error})") from None
        return grid.trim(codes, index % grid.per_slice, self.level)

    def _tiles(self, start: tuple[int, int, int], size: tuple[int, int, int],
               threads: Executor | None) -> np.ndarray:
        """Codes of the box from a tiled store: only the tiles its y/x window touches."""
        grid, factor = self.store.grid, 2**self.level
        height, width = grid.tile_rows // factor, grid.tile_columns // factor
        rows = slice(start[1], start[1] + size[1])
        columns = slice(start[2], start[2] + size[2])
        tiles = grid.touched(rows, columns, self.level)
        chunks = [plane * grid.per_slice + tile
                  for plane in range(start[0], start[0] + size[0]) for tile in tiles]
        decoded = self._decoded(chunks, self._tile, threads, decode_cache())
        # reduced levels decoded as block means (no reduced decoder) are not whole codes
        codes = np.empty(size, dtype=np.float32 if self.level else self.mapping.code_dtype)
        for chunk, part in zip(chunks, decoded, strict=True):
            plane, tile = divmod(chunk, grid.per_slice)
            down, across = grid.position(tile)
            top, left = down * height, across * width  # the tile's origin at this level
            first_row, last_row = max(rows.start, top), min(rows.stop, top + part.shape[0])
            first, last = max(columns.start, left), min(columns.stop, left + part.shape[1])
            codes[plane - start[0], first_row - rows.start : last_row - rows.start,
                  first - columns.start : last - columns.start] = \
                part[first_row - top : last_row - top, first - left : last - left]
        return codes

    def cache_key(self, chunk: int) -> tuple:
        """Chunk ``chunk``'s key in the decode cache: the store's path and the level, and
        the chunk's CRC-32 (from the attributes, read at open), so that a store rewritten
        at the same path in one process is decoded anew, not served its former content."""
        return self.path, self.level, chunk, self.store.attributes["chunk_crc32"][chunk]

    def _decoded(self, chunks: Sequence[int], decode: Callable[[int, bytes], np.ndarray],
                 threads: Executor | None, cache: DecodeCache | None, *, keep: bool = True,
                 window: Window | None = None) -> list[np.ndarray]:
        """``decode(chunk, codestream)`` of each chunk, in order: those ``cache`` holds taken
        from it, the others' codestreams fetched together (at a URL, concurrent requests),
        decoded (by ``threads`` if given) and, with ``keep``, kept in the cache. Chunks are
        cached whole: those from the cache, and with ``keep`` the decoded ones, come back
        cropped to ``window`` where given (without ``keep``, ``decode`` gives the window)."""
        found: dict[int, np.ndarray] = {}
        if cache is not None:
            for chunk in chunks:
                held = cache.lookup(self.cache_key(chunk))
                if held is not None:
                    found[chunk] = held if window is None else held[window]
        missing = [chunk for chunk in chunks if chunk not in found]
        streams = self.store.codestreams(missing) if missing else []
        decoded = map(decode, missing, streams) if threads is None \
            else threads.map(decode, missing, streams)
        for chunk, codes in zip(missing, decoded, strict=True):
            if keep and cache is not None:
                codes = cache.keep(self.cache_key(chunk), codes)
                found[chunk] = codes if window is None else codes[window]
            else:
                found[chunk] = codes
        return [found[chunk] for chunk in chunks]

    def _keeps_slices(self, cache: DecodeCache, indices: range, window: Window) -> bool:
        """Whether this box's slices are decoded whole and kept: always, unless a window of
        them can be decoded alone (untiled JPEG 2000), which is cheaper until reads come back
        to the same slices often enough (``DecodeCache.revisits``)."""
        full = (slice(0, self.shape[1]), slice(0, self.shape[2]))
        if self.codec.name not in WINDOW_DECODERS or window == full:
            return True
        size = self.shape[1] * self.shape[2] * np.dtype(self.mapping.code_dtype).itemsize
        keep = False
        for index in indices:
            keep = cache.revisits(self.cache_key(index), size)
        return keep

    def _block(self, index: int, rows: slice, columns: slice) -> np.ndarray:
        """Every slice of block ``index`` (3D codecs), at the volume's level, cropped."""
        codes = self.store.decode_chunk(index, self.codec)
        if self.level:
            codes = np.stack([block_mean(plane, self.level) for plane in codes])
        return codes[:, rows, columns]

    def read(self, start: tuple[int, int, int], size: tuple[int, int, int],
             threads: Executor | None = None) -> np.ndarray:
        """Values (float32) of the box ``start`` + ``size``, which must lie inside ``shape``."""
        if any(s < 0 or s + n > limit for s, n, limit in zip(start, size, self.shape,
                                                             strict=True)):
            raise ValueError(f"box {start} + {size} is outside {self.shape}")
        if self.store.grid.tiled:
            return self._values(self._tiles(start, size, threads))
        rows = slice(start[1], start[1] + size[1])
        columns = slice(start[2], start[2] + size[2])
        indices = range(start[0], start[0] + size[0])
        depth = self.store.depth
        if depth > 1:  # decode each block the box touches once, keep its slices in the box
            indices = range(start[0] // depth, (start[0] + size[0] - 1) // depth + 1)
        cache = decode_cache()
        if depth == 1:
            window = (rows, columns)
            keep = cache is not None and self._keeps_slices(cache, indices, window)
            decode = partial(self._slice, rows=slice(0, self.shape[1]),
                             columns=slice(0, self.shape[2])) if keep \
                else partial(self._slice, rows=rows, columns=columns)
            planes = self._decoded(indices, decode, threads, cache, keep=keep, window=window)
        else:
            read = partial(self._block, rows=rows, columns=columns)
            planes = list(map(read, indices) if threads is None else threads.map(read, indices))
        if depth == 1:
            codes = np.stack(planes)
        else:
            first = start[0] - indices.start * depth
            codes = np.concatenate(planes)[first : first + size[0]]
        return self._values(codes)

    def _values(self, codes: np.ndarray) -> np.ndarray:
        """Decoded codes as values (float32, original units, within an integer source type's
        range as decompression writes them)."""
        if self.level == 0:  # exactly what decompression writes, as float32
            return self.mapping.to_values(codes).astype(np.float32)
        values = codes.astype(np.float32)  # reduced levels are not whole codes
        if self.mapping.rescaled:
            values = values / np.float32(self.mapping.scale) \
                + np.float32(self.mapping.linear_offset)
        return self.mapping.clip(values)
