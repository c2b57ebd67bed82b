"""Decoded slices and tiles kept for the next patches: a byte-bounded cache per process.

Random patches of a case overlap, and every window of a slice needs the same coarse wavelet
levels (a 160 x 160 JPEG 2000 window costs 55-70% of its whole 512 x 512 slice): a slice or
tile decoded once serves every later patch that touches it while it stays cached. Least
recently used entries leave first once the budget is full.

One cache per process, sized in megabytes of decoded codes by :func:`set_budget` or, in
processes started later (DataLoader workers, nnU-Net's augmentation workers, which inherit
the environment), by ``MEDLOSSY_DECODE_CACHE_MB``; 0 (the default) keeps nothing. Every
worker keeps its own: the memory used is up to workers x the budget. Keys name the store's
path, the resolution level, the chunk and its CRC-32 (``StoreVolume.cache_key``), so that a
store written again at the same path during a run is decoded anew.

Where a slice's window alone can be decoded (untiled JPEG 2000: about half the cost of the
whole slice), caching means decoding whole slices, which pays only if later patches come
back to them often enough. So the cache also keeps a ghost: the keys (and sizes) it would
hold if every slice were kept, no data. The share of slice reads the ghost would have
answered (a moving average) says whether keeping whole slices pays (:meth:`revisits`);
until it does, such slices are decoded as windows and not kept. Hand-written: no cache
library estimates its own hit rate before admitting entries.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Hashable

import numpy as np
from cachetools import LRUCache

from medlossy.errors import MedlossyError

ENVIRONMENT = "MEDLOSSY_DECODE_CACHE_MB"
_MB = 1 << 20
#: Share of reads the cache must answer for whole slices to beat windows: a 160 x 160
#: window of a 512 x 512 slice costs 0.53 of the slice, so keeping pays above 1 - 0.53.
WORTH_KEEPING = 0.5
#: Weight of the latest read in the moving share (about the last 100 slice reads count).
_SMOOTHING = 0.01


class DecodeCache:
    """Decoded arrays by key, at most ``budget`` bytes; thread-safe (a patch's slices may
    be decoded by threads)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: LRUCache = LRUCache(maxsize=max(budget, 1), getsizeof=_nbytes)
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self._ghost: LRUCache = LRUCache(maxsize=max(budget, 1), getsizeof=int)
        #: moving share of :meth:`revisits` reads the ghost held
        self.revisit_share = 0.0

    def lookup(self, key: Hashable) -> np.ndarray | None:
        """The array kept under ``key`` (read-only: callers copy what they change), or None."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
            return found

    def keep(self, key: Hashable, array: np.ndarray) -> np.ndarray:
        """Keep ``array`` under ``key`` where it fits the budget (a copy where it is a view,
        so that the budget counts what is held); returns the array kept, read-only."""
        if array.base is not None:
            array = array.copy()
        array.flags.writeable = False
        if array.nbytes <= self.budget:
            with self._lock:
                self._entries[key] = array
        return array

    def revisits(self, key: Hashable, nbytes: int) -> bool:
        """Record a read of ``key`` (``nbytes`` decoded) in the ghost; True where reads
        come back to what the cache could hold often enough for keeping whole slices to
        pay (:data:`WORTH_KEEPING`)."""
        with self._lock:
            held = key in self._ghost
            if nbytes <= self.budget:
                self._ghost[key] = nbytes
            self.revisit_share += _SMOOTHING * (held - self.revisit_share)
            return self.revisit_share > WORTH_KEEPING

    @property
    def used(self) -> int:
        """Bytes held now."""
        return int(self._entries.currsize)


def _nbytes(array: np.ndarray) -> int:
    return int(array.nbytes)


_cache: DecodeCache | None = None
#: (process id, the environment's setting) the cache was made for
_made_for: tuple[int, str] | None = None


def megabytes(value: object) -> float:
    """``value`` as a budget in megabytes: a finite number >= 0 (text taken), else NaN."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return number if number >= 0 and math.isfinite(number) else math.nan


def budget_from_environment() -> int:
    """``MEDLOSSY_DECODE_CACHE_MB`` in bytes (0 where unset)."""
    text = os.environ.get(ENVIRONMENT, "").strip()
    if not text:
        return 0
    budget = megabytes(text)
    if math.isnan(budget):
        raise MedlossyError(ENVIRONMENT, f"must be a number of megabytes >= 0, got {text!r}")
    return int(budget * _MB)


def set_budget(value: float) -> None:
    """Size this process's cache (and, through the environment, that of processes it starts
    from now on); 0 turns it off and empties it."""
    budget = megabytes(value)
    if math.isnan(budget):
        raise ValueError(f"the decode cache needs megabytes >= 0, got {value!r}")
    os.environ[ENVIRONMENT] = f"{budget:g}"


def decode_cache() -> DecodeCache | None:
    """This process's cache, or None where its budget is 0; made anew (empty) in a forked
    child and when the setting changes."""
    global _cache, _made_for
    setting = (os.getpid(), os.environ.get(ENVIRONMENT, ""))
    if setting != _made_for:
        budget = budget_from_environment()
        _cache = DecodeCache(budget) if budget else None
        _made_for = setting
    return _cache
