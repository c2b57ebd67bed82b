"""Optional GPU libraries, imported without their native noise.

nvImageCodec (the ``gpu`` extra) loads its nvJPEG, nvJPEG2000 and nvTIFF extensions when it
is imported and, where their CUDA libraries are missing (any CPU machine), its native code
writes "Failed to load nvjpeg library! Please install CUDA toolkit..." and "[ERROR] ..." lines
straight to file descriptor 2, past Python's stderr. MONAI imports it with
``monai.transforms``, so every training process of a study printed them. ``medlossy``
imports it once per process through ``import_nvimgcodec``, with descriptor 2 captured: those
lines are kept in ``NVIMGCODEC_NOTES`` (shown when GPU decoding is asked for and cannot run),
anything else written meanwhile is passed on to stderr. Later imports (MONAI's) find the
module loaded and print nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

#: What nvImageCodec's extensions said while loading (their missing CUDA libraries).
NVIMGCODEC_NOTES: list[str] = []
#: What of its loading output is noise (a pattern for ``re.search``).
_NOISE = r"Failed to load|\[ERROR\]|^Note: If using nvImageCodec"


@contextmanager
def _descriptor_2_captured() -> Iterator[list[str]]:
    """Everything written to file descriptor 2 meanwhile, as lines (filled on exit)."""
    # Imported here, not at the top: every ``import medlossy`` runs this module, and the
    # console script catches Ctrl-C only once that import is done (cli/entry.py).
    import tempfile

    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += sink.read().decode(errors="replace").splitlines()


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def import_nvimgcodec() -> ModuleType | None:
    """``nvidia.nvimgcodec``, or None when it is not installed; its loading noise kept in
    ``NVIMGCODEC_NOTES`` instead of on stderr."""
    if "nvidia.nvimgcodec" in sys.modules:
        return sys.modules["nvidia.nvimgcodec"]
    if not _installed("nvidia.nvimgcodec"):
        return None
    with _descriptor_2_captured() as lines:
        try:
            from nvidia import nvimgcodec
        except ImportError:
            nvimgcodec = None
    import re

    for line in lines:
        if re.search(_NOISE, line):
            NVIMGCODEC_NOTES.append(line.strip())
        else:
            print(line, file=sys.stderr)
    return nvimgcodec
