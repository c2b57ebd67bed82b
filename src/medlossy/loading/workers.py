"""A DataLoader's items, with a worker process's MedlossyError raised as itself.

PyTorch re-raises an error of a worker process in the parent as a RuntimeError holding the
worker's traceback when the error type cannot be rebuilt from that text (MedlossyError takes
a path and a problem); its last line is ``medlossy.errors.MedlossyError: <file>: <problem>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from medlossy.errors import MedlossyError

Item = TypeVar("Item")
#: How DataLoader worker processes start: fresh ("spawn"), never forked, since this process
#: runs threads (zarr's event loop, tqdm's monitor, decode pools) whose locks a forked child
#: would inherit held. Each worker gets the dataset pickled: stores' paths, not their voxels.
START_METHOD = "spawn"
_PREFIX = f"{MedlossyError.__module__}.{MedlossyError.__qualname__}: "


def items(loader: Iterable[Item]) -> Iterator[Item]:
    """The items of ``loader``; a worker's MedlossyError becomes one again (one line)."""
    try:
        yield from loader
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        if lines and lines[-1].startswith(_PREFIX):
            raise MedlossyError(None, lines[-1][len(_PREFIX):]) from None
        raise
