"""Check codestreams before they are stored: decode each chunk and compare with its codes.

A codec can return garbage without raising (OpenJPH once printed its error and returned a
corrupted slice, shared/CODECS.md). Every chunk is decoded with the same call readers use and
held to its shape, dtype and, where the setting promises one, its maximum error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from medlossy.codecs.base import SliceCodec


class VerifyError(ValueError):
    """A chunk decodes to something other than what was encoded."""


def chunk_problem(codec: SliceCodec, codes: np.ndarray, stream: bytes,
                  bound: float | None) -> tuple[str, int] | None:
    """What is wrong with ``stream`` as an encoding of ``codes``, and the worst slice offset
    within the chunk; None when it decodes to the right shape, dtype and error."""
    try:
        decoded = codec.decode(stream, shape=codes.shape, dtype=codes.dtype)
    except Exception as error:  # decoder errors come in library-specific types
        return f"does not decode ({error})", 0
    if decoded.shape != codes.shape or decoded.dtype != codes.dtype:
        return (f"decodes to {decoded.shape} {decoded.dtype}, encoded {codes.shape} "
                f"{codes.dtype}"), 0
    if bound is None:
        return None
    error = np.abs(decoded.astype(np.int32) - codes.astype(np.int32))
    worst = int(error.max()) if error.size else 0
    if worst > bound:
        plane = int(np.unravel_index(int(error.argmax()), error.shape)[0]) \
            if error.ndim == 3 else 0
        return f"decodes with error {worst} codes, more than its bound {bound:g}", plane
    return None


def verify_chunks(codec: SliceCodec, chunk: Callable[[int], np.ndarray], streams: Sequence[bytes],
                  bound: float | None, first_slices: Sequence[int], workers: int = 1) -> None:
    """Raise ``VerifyError`` naming the first bad slice (``chunk(i)``: the codes of chunk
    ``i``, ``first_slices[i]``: its first slice); imagecodecs' decoders release the GIL, so
    threads decode in parallel."""
    def check(index: int) -> tuple[str, int] | None:
        return chunk_problem(codec, chunk(index), streams[index], bound)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as threads:
        for index, problem in enumerate(threads.map(check, range(len(streams)))):
            if problem is not None:
                text, plane = problem
                raise VerifyError(f"slice {first_slices[index] + plane}: codec {codec.name!r} "
                                  f"returned a bad codestream: {text}")
