"""Outputs appear whole or not at all: write under a temporary name, then rename."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _temporary_sibling(path: Path) -> Path:
    # Same directory, so the final rename never crosses a file system; the suffixes stay at the
    # end because libraries such as nibabel pick the format from them.
    return path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}{''.join(path.suffixes)}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write a file or directory to; it replaces ``path`` on success.

    On any exception the temporary output is removed and ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(final)
    try:
        yield temporary
        if final.is_dir() and not final.is_symlink():
            # A directory cannot be replaced in one rename: move the old one aside first.
            retired = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            final.rename(retired)
            temporary.rename(final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, final)
    except BaseException:
        _remove(temporary)
        raise
