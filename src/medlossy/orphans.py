"""Worker processes die with the process that started them, however it dies (kill -9 too).

Python's process pools clean up only when their owner exits normally: after a SIGKILL the
forkserver and the encoder workers it forked lived on (for 40 minutes, holding 480 MB, in one
report). Two guards, both armed first thing in every worker:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (through ctypes: the standard library has no
  wrapper), so the kernel kills the worker the moment its parent dies. The parent of a
  forkserver worker is the forkserver, not the process that made the pool, hence also:
- everywhere: a daemon thread that waits on the owner's pid (a pidfd where the system has
  one, else polling) and ends the worker when the owner is gone.

:func:`guarded_command` arms the first guard in a small launcher that then becomes the
command (the parent-death signal survives exec), for external programs such as nnU-Net's.

Files die with their owner too, or with the next run: pools start from
:func:`worker_context`, whose files (the forkserver's socket) lie, like any file that must
outlive a call, in :func:`private_scratch`, a 0700 folder named after the process that made
it, which that process removes at exit and the next run removes once its owner is dead.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import multiprocessing.util
import os
import re
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.5
_ORPHANED = 1  # exit status of a worker whose owner died
_SCRATCH = re.compile(r"medlossy-scratch-(\d+)-[a-z0-9_]{8}")  # as mkdtemp names them
_scratch: tuple[int, Path] | None = None  # (the process that made it, the folder)
_SOCKET_PATH_MAX = 100  # a Unix socket's path holds 107 bytes on Linux, 103 on macOS


def _kill_me_when_parent_dies() -> bool:
    """Ask the kernel for SIGKILL when the parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # a libc without prctl
        return False


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts as gone where /proc shows it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _watch(owner: int) -> None:
    try:
        descriptor = os.pidfd_open(owner)
    except (AttributeError, OSError):  # not Linux >= 5.3: poll instead
        while alive(owner):
            time.sleep(_POLL_SECONDS)
    else:
        select.select([descriptor], [], [])  # readable once the owner has exited
    os._exit(_ORPHANED)


def die_with_parent(owner: int | None = None) -> None:
    """Make this process exit when ``owner`` (default: its parent) dies.

    Call it first in a worker: as a pool's ``initializer``, or at the top of a worker's main.
    """
    owner = owner or os.getppid()
    parent = os.getppid()
    _kill_me_when_parent_dies()
    # Either may have died before the guards were armed (then nothing would fire).
    if os.getppid() != parent or not alive(owner) or not alive(parent):
        os._exit(_ORPHANED)
    threading.Thread(target=_watch, args=(owner,), name="medlossy-die-with-parent",
                     daemon=True).start()


#: Run by ``python -c`` before the command; self-contained, so it works in any environment
#: (nnU-Net's commands get their own, which need not hold medlossy).
_LAUNCHER = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):  # the parent died before the signal was armed
    os._exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def guarded_command(arguments: list[str]) -> list[str]:
    """``arguments`` started through a launcher that makes the program die with its parent
    (Linux; elsewhere the command as it is)."""
    if not sys.platform.startswith("linux"):
        return list(arguments)
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *arguments]


def _remove_dead_scratch(folder: Path) -> None:
    """Remove the scratch folders of this user's medlossy processes that are gone (killed:
    a process that exits removes its own)."""
    for entry in folder.glob("medlossy-scratch-*"):
        match = _SCRATCH.fullmatch(entry.name)
        try:
            mine = entry.is_dir() and not entry.is_symlink() and \
                entry.stat().st_uid == os.getuid()
        except OSError:  # removed meanwhile by another run
            continue
        if match and mine and not alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def private_scratch() -> Path:
    """This process's private (0700) temporary folder,
    ``$TMPDIR/medlossy-scratch-<pid>-XXXXXXXX``, made on first use; it is removed when the
    process exits, or by the next run once the process is gone (killed)."""
    global _scratch
    if _scratch is None or _scratch[0] != os.getpid():  # a forked child makes its own
        root = Path(tempfile.gettempdir())
        _remove_dead_scratch(root)
        folder = Path(tempfile.mkdtemp(prefix=f"medlossy-scratch-{os.getpid()}-", dir=root))
        # after multiprocessing's own clean-up at exit (priority -100: pymp-* inside)
        multiprocessing.util.Finalize(None, shutil.rmtree, args=(str(folder),),
                                      kwargs={"ignore_errors": True}, exitpriority=-200)
        _scratch = (os.getpid(), folder)
    return _scratch[1]


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method for worker pools, neither of which lets a worker inherit the
    parent's threads (zarr runs an event loop): forkserver (workers start from a server
    that has the modules loaded, so they arm their guards at once) with its socket in
    :func:`private_scratch`, not in a ``pymp-*`` folder of the shared temporary space that
    only a normal exit removes; spawn (no file at all) where that cannot be."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        scratch = private_scratch()
        # multiprocessing makes its folder once per process, in the default temp folder
        saved, tempfile.tempdir = tempfile.tempdir, str(scratch)
        try:
            folder = Path(multiprocessing.util.get_temp_dir())
        finally:
            tempfile.tempdir = saved
        if folder.parent == scratch and \
                len(str(folder / "listener-XXXXXXXX").encode()) <= _SOCKET_PATH_MAX:
            return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")
