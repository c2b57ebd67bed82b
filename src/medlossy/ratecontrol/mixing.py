"""Mix encodes of a volume chunk by chunk so that the total lands on a budget.

Data flow: candidate encodes (lists of codestreams, one per chunk) -> each chunk's squared
error, decoded against its codes -> a choice per chunk (``solver``: least total error within
the budget, leftover bytes spent, one or two switches to land) -> the mixed codestreams.
No encodes here: the callers (``ratio``) make the candidates.
"""

from __future__ import annotations

import numpy as np

from medlossy.codecs import Setting
from medlossy.codecs.pool import SliceEncoder
from medlossy.ratecontrol.base import RATIO_TOLERANCE, SEARCH_TOLERANCE, ByteCounter
from medlossy.ratecontrol.solver import Trial, choose_per_slice, fill_budget, land_budget


def mix_chunks(encoder: SliceEncoder, count_bytes: ByteCounter,
               candidates: list[list[bytes]], budget: int) -> list[bytes]:
    """Per chunk, one of several encodings of the volume: least total error within
    ``budget``."""
    sizes = np.array([[len(c[i]) for c in candidates] for i in range(len(candidates[0]))])
    errors = np.stack([squared_errors(encoder, c) for c in candidates], axis=1)
    overhead = count_bytes(candidates[0]) - int(sizes[:, 0].sum())
    choice = choose_per_slice(sizes, errors, budget - overhead)
    choice = fill_budget(sizes, errors, choice, budget - overhead)
    window = (budget * (1.0 - SEARCH_TOLERANCE) - overhead,
              budget * (1.0 + SEARCH_TOLERANCE) - overhead)
    choice = land_budget(sizes, errors, choice, window)
    return [candidates[c][i] for i, c in enumerate(choice)]


def squared_errors(encoder: SliceEncoder, streams: list[bytes]) -> np.ndarray:
    """Each chunk's sum of squared errors (codes), decoded against the codes it encodes."""
    codec = encoder.codec
    errors = np.empty(len(streams))
    for index, stream in enumerate(streams):
        codes = encoder.chunk(index)
        decoded = codec.decode(stream, shape=codes.shape, dtype=codes.dtype)
        # A padded block's repeats and an edge tile's padding are not the volume's.
        difference = encoder.trim(index, codes).astype(np.float64) \
            - encoder.trim(index, decoded)
        errors[index] = float(np.dot(difference.ravel(), difference.ravel()))
    return errors


def best_mix(encoder: SliceEncoder, count_bytes: ByteCounter,
             found: list[tuple[Setting, Trial[list[bytes]]]],
             budget: int) -> tuple[Setting, list[bytes]]:
    """Per slice, the candidate (one per search) with the best error for its bytes; the mix is
    kept only if it meets the budget with less total error than every single candidate."""
    candidates = [trial.payload for _, trial in found]
    sizes = np.array([[len(c[i]) for c in candidates] for i in range(len(candidates[0]))])
    errors = np.stack([squared_errors(encoder, c) for c in candidates], axis=1)
    overhead = count_bytes(candidates[0]) - int(sizes[:, 0].sum())
    choice = choose_per_slice(sizes, errors, budget - overhead)
    mixed = [candidates[c][i] for i, c in enumerate(choice)]
    options = [(float(errors[:, k].sum()), found[k][0], candidates[k])
               for k in range(len(candidates))]
    options.append((float(errors[np.arange(len(choice)), choice].sum()),
                    Setting("mixed"), mixed))
    fitting = [o for o in options
               if abs(count_bytes(o[2]) / budget - 1.0) <= RATIO_TOLERANCE] or options
    _, setting, streams = min(fitting, key=lambda option: option[0])
    return setting, streams
