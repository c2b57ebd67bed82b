"""A DataLoader's items, with a worker process's MedlossyError raised as itself.

PyTorch re-raises an error of a worker process in the parent as a RuntimeError holding the
worker's traceback when the error type cannot be rebuilt from that text (MedlossyError takes
a path and a problem); its last line is ``medlossy.errors.MedlossyError: <file>: <problem>``,
or the same with a subclass (``medlossy.store.remote.Unreachable: <url>: <problem>``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Iterator
from typing import TypeVar

from medlossy.errors import MedlossyError

Item = TypeVar("Item")
#: How DataLoader worker processes start: fresh ("spawn"), never forked, since this process
#: runs threads (zarr's event loop, tqdm's monitor, decode pools) whose locks a forked child
#: would inherit held. Each worker gets the dataset pickled: stores' paths, not their voxels.
START_METHOD = "spawn"
#: The last line of a worker's traceback: ``medlossy.<module>.<Error>: <message>``.
_LAST_LINE = re.compile(r"^(?P<module>medlossy(?:\.\w+)*)\.(?P<name>\w+): (?P<message>.*)$")


def _medlossy_error(line: str) -> MedlossyError | None:
    """The MedlossyError (of its own subclass, for its exit status) that a traceback's last
    line reports; None for another error."""
    match = _LAST_LINE.match(line)
    if match is None:
        return None
    try:
        kind = getattr(importlib.import_module(match["module"]), match["name"], None)
    except ImportError:
        return None
    if not (isinstance(kind, type) and issubclass(kind, MedlossyError)):
        return None
    return kind(None, match["message"])


def items(loader: Iterable[Item]) -> Iterator[Item]:
    """The items of ``loader``; a worker's MedlossyError becomes one again (one line)."""
    try:
        yield from loader
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        reported = _medlossy_error(lines[-1]) if lines else None
        if reported is not None:
            raise reported from None
        raise
