"""One worker at a time per unit: an exclusive lock file that dies with its holder.

Training and prediction units of a study may run in several processes, on several machines
sharing the output folder (``--gpus``, ``--scheduler``), or in two runs started on the same
folder. Each unit takes ``<unit>.lock`` before working: a second worker waits for the first,
then finds the unit finished and skips it. The lock is ``fcntl.flock`` on an open file, so the
kernel drops it when its holder dies however it dies (SIGKILL, a lost Dask worker): a stale
lock cannot exist, and the unit is redone by the next worker that asks. The file records who
holds it, for the waiting message. (flock also works across machines on NFSv4 and most
cluster file systems; on NFSv3 mounts without lockd it does not.)
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another worker"
    except OSError:
        return "another worker"


@contextmanager
def unit_lock(path: str | os.PathLike[str], *, poll_seconds: float = 1.0,
              on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock ``path`` (created if missing) for the ``with`` block.

    Blocks while another process holds it; ``on_wait(holder)`` is called once if so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open: the open file is the lock
    try:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait(_holder(path))
                waited = True
                time.sleep(poll_seconds)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
