"""Outputs appear whole or not at all: write under a temporary name, then rename."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medlossy.errors import MedlossyError


def _temporary_sibling(path: Path) -> Path:
    # Same directory, so the final rename never crosses a file system; the suffixes stay at the
    # end because libraries such as nibabel pick the format from them.
    return path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}{''.join(path.suffixes)}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _commit_new(temporary: Path, final: Path) -> None:
    """Rename ``temporary`` to ``final`` only if nothing is there: a check and a rename in one
    step, so that of two runs writing one output the later cannot replace the earlier."""
    try:
        if temporary.is_dir():
            os.rename(temporary, final)  # fails onto a non-empty folder or a file
        else:
            os.link(temporary, final)  # fails if final exists, whatever it is
            temporary.unlink()
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
        raise MedlossyError(final, "appeared while this run was writing it (another run?); "
                                   "left as it is: use --force to replace it") from None


#: Tries before a replacing commit gives up on an output that other runs keep replacing.
_REPLACE_TRIES = 100


def _commit_replacing(temporary: Path, final: Path) -> None:
    """Rename ``temporary`` to ``final``, replacing what is there. A folder cannot be
    replaced in one rename: the old one is moved aside first, and again if another run puts
    its own output there in between (the later run wins, whole)."""
    retired: list[Path] = []
    committed = False
    try:
        for _ in range(_REPLACE_TRIES):
            if final.is_dir() and not final.is_symlink():
                aside = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
                try:
                    final.rename(aside)
                    retired.append(aside)
                except FileNotFoundError:
                    pass  # another run moved it aside meanwhile
            try:
                os.replace(temporary, final)
                committed = True
                return
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        raise MedlossyError(final, "was replaced by other runs over and over while this one "
                                   "wrote it; left as they made it")
    finally:
        if not committed and retired and not final.exists():
            retired.pop().rename(final)  # failed: the output it replaced goes back in place
        for aside in retired:
            shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_output(path: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write a file or directory to; it becomes ``path`` on success,
    replacing what is there, or with ``replace`` False refusing if anything is there by then.

    On any exception the temporary output is removed and ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(final)
    try:
        yield temporary
        if replace:
            _commit_replacing(temporary, final)
        else:
            _commit_new(temporary, final)
    except OSError as error:
        _remove(temporary)
        if error.filename is None and error.errno is not None:
            # a library's failed write (nibabel, pynrrd: a full disk) names no file
            raise OSError(error.errno, error.strerror, str(final)) from None
        raise
    except BaseException:
        _remove(temporary)
        raise
