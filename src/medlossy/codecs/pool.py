"""Encode every chunk (slice, or block of slices for 3D codecs) of a volume, in worker
processes when more than one core is asked for.

Processes, not threads: pylibjpeg-openjpeg's encoder crashes when called from two threads.
The slices live in one memory-mapped file that workers map read-only, so a volume is held
once however many workers there are (no per-task copies, no shared-memory bookkeeping). On
Linux that file is anonymous memory (``memfd_create``) the workers open through
``/proc/<owner>/fd``: it exists only while a process maps it, so no copy of the scan outlives
a killed run. Elsewhere it is a file in the process's private scratch folder
(:func:`medlossy.orphans.private_scratch`), which the next run removes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medlossy.codecs.base import Setting, SliceCodec, get_codec
from medlossy.codecs.tiles import TileGrid
from medlossy.orphans import die_with_parent, private_scratch, worker_context
from medlossy.terminal import progress_bar

_worker: tuple[SliceCodec, np.ndarray, TileGrid] | None = None


def _start_worker(owner: int, codec_name: str, path: str, shape: tuple[int, ...],
                  dtype: str, grid: TileGrid) -> None:
    global _worker
    die_with_parent(owner)
    _worker = (get_codec(codec_name), np.memmap(path, dtype=dtype, mode="r", shape=shape),
               grid)


def chunk_of(slices: np.ndarray, index: int, depth: int) -> np.ndarray:
    """Chunk ``index``: slice ``index`` (depth 1), or ``depth`` slices from ``index * depth``,
    a last partial block padded by repeating its last slice (zarr's edge chunks are full
    size; repeated slices cost a 3D codec almost nothing)."""
    if depth == 1:
        return np.asarray(slices[index])
    block = np.asarray(slices[index * depth : (index + 1) * depth])
    if len(block) < depth:
        block = np.concatenate([block, np.repeat(block[-1:], depth - len(block), axis=0)])
    return block


def tiled_chunk_of(slices: np.ndarray, index: int, depth: int, grid: TileGrid) -> np.ndarray:
    """Chunk ``index`` of a store whose slices are cut into ``grid``'s tiles: chunks run
    tile by tile within a slice (or block), slice by slice."""
    if not grid.tiled:
        return chunk_of(slices, index, depth)
    plane, tile = divmod(index, grid.per_slice)
    return grid.cut(slices[plane], tile)


def _encode_in_worker(task: tuple[int, Setting]) -> bytes:
    assert _worker is not None, "worker not initialised"
    codec, slices, grid = _worker
    index, setting = task
    return codec.encode(tiled_chunk_of(slices, index, codec.block_depth, grid), setting)


def _call_in_worker(task: tuple[int, str, object]) -> object:
    assert _worker is not None, "worker not initialised"
    codec, slices, _ = _worker
    index, method, argument = task
    return getattr(codec, method)(np.asarray(slices[index]), argument)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class SliceEncoder:
    """Holds a slice-major (slices, rows, columns) array of codes and encodes it on demand,
    one chunk per slice, block of slices or tile of a slice (``grid``)."""

    def __init__(self, codec: SliceCodec, slices: np.ndarray, workers: int,
                 executor: ProcessPoolExecutor | None, grid: TileGrid) -> None:
        self.codec = codec
        self.slices = slices
        self.workers = workers
        self.depth = codec.block_depth
        self.grid = grid
        self._executor = executor

    @property
    def chunks(self) -> int:
        return -(-self.slices.shape[0] // self.depth) * self.grid.per_slice

    def chunk(self, index: int) -> np.ndarray:
        """The codes of chunk ``index`` as encoded (a last block or edge tile padded)."""
        return tiled_chunk_of(self.slices, index, self.depth, self.grid)

    def held(self, index: int) -> range:
        """The slices chunk ``index`` holds."""
        start = index // self.grid.per_slice * self.depth
        return range(start, min(start + self.depth, self.slices.shape[0]))

    def trim(self, index: int, codes: np.ndarray) -> np.ndarray:
        """Chunk ``index``'s ``codes`` without padding (a block's repeats, a tile's edge)."""
        if self.grid.tiled:
            return self.grid.trim(codes, index % self.grid.per_slice)
        return codes[: len(self.held(index))] if codes.ndim == 3 else codes

    def encode_all(self, setting: Setting, *, label: str = "encode",
                   show_progress: bool = False) -> list[bytes]:
        """Codestreams of every chunk, in slice order."""
        return self.encode_chunks(setting, range(self.chunks), label=label,
                                  show_progress=show_progress)

    def encode_chunks(self, setting: Setting, indices: Sequence[int], *,
                      label: str = "encode", show_progress: bool = False) -> list[bytes]:
        """Codestreams of the chunks ``indices``, in that order (a sample of the volume)."""
        count = len(indices)
        if self._executor is None:
            results = (self.codec.encode(self.chunk(i), setting) for i in indices)
        else:
            chunk = max(1, count // (self.workers * 8))
            results = self._executor.map(_encode_in_worker,
                                         [(i, setting) for i in indices], chunksize=chunk)
        return list(progress_bar(results, total=count, desc=label, unit="chunk", leave=False,
                                 show=show_progress))

    def map_slices(self, method: str, arguments: Sequence[object], *, label: str = "encode",
                   show_progress: bool = False) -> list:
        """``codec.<method>(slice i, arguments[i])`` for every slice, in slice order (e.g. a
        layered encode with each slice's own quality layers); untiled slices only."""
        if self.grid.tiled:
            raise ValueError("whole-slice calls on a tiled encoder")
        count = self.slices.shape[0]
        if self._executor is None:
            results = (getattr(self.codec, method)(np.asarray(self.slices[i]), arguments[i])
                       for i in range(count))
        else:
            chunk = max(1, count // (self.workers * 8))
            results = self._executor.map(_call_in_worker,
                                         [(i, method, arguments[i]) for i in range(count)],
                                         chunksize=chunk)
        return list(progress_bar(results, total=count, desc=label, unit="slice", leave=False,
                                 show=show_progress))


@contextmanager
def slice_encoder(codec: SliceCodec, shape: tuple[int, int, int], dtype: str,
                  workers: int | None = None, tile: int | None = None,
                  ) -> Iterator[SliceEncoder]:
    """Yield an encoder whose ``slices`` array the caller fills before encoding; ``tile``:
    the side of the square tiles each slice is cut into (None: whole slices).

    With one worker the array is plain memory; with more it is memory shared with the workers.
    """
    grid = TileGrid.of(shape[1], shape[2], tile)
    chunks = -(-shape[0] // codec.block_depth) * grid.per_slice
    workers = max(1, min(workers or default_workers(), chunks))
    if workers == 1:
        yield SliceEncoder(codec, np.empty(shape, dtype=dtype), 1, None, grid)
        return
    with _shared_slices(shape, dtype) as (slices, path), \
            ProcessPoolExecutor(max_workers=workers, mp_context=worker_context(),
                                initializer=_start_worker,
                                initargs=(os.getpid(), codec.name, path, shape, dtype, grid),
                                ) as executor:
        try:
            yield SliceEncoder(codec, slices, workers, executor, grid)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM, an error): drop queued slices instead of
            # encoding the rest of the pass before the pool can close.
            executor.shutdown(wait=True, cancel_futures=True)
            raise


@contextmanager
def _shared_slices(shape: tuple[int, int, int], dtype: str,
                   ) -> Iterator[tuple[np.ndarray, str]]:
    """A writable (slices, rows, columns) array and the path workers map it read-only by."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd"):
        descriptor = os.memfd_create("medlossy-slices", os.MFD_CLOEXEC)
        try:  # open while workers may start: they open it by this path
            try:
                os.ftruncate(descriptor, size)
            except OSError as error:  # a file size limit (ulimit -f) covers memory files too
                raise OSError(error.errno, f"{error.strerror}: no room for the {size} bytes "
                                           "the encoder workers share (--workers 1 needs "
                                           "none)") from None
            path = f"/proc/{os.getpid()}/fd/{descriptor}"
            yield np.memmap(path, dtype=dtype, mode="r+", shape=shape), path
        finally:
            os.close(descriptor)
        return
    with tempfile.TemporaryDirectory(prefix="slices-", dir=private_scratch()) as scratch:
        path = str(Path(scratch) / "slices.raw")
        slices = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
        yield slices, path
        del slices
