"""Progress bars on stderr, only where someone watches them.

A bar redraws itself with carriage returns: on a terminal that is one live line, in a log
file or a pipe it is hundreds of updates glued together. Every bar of medlossy goes through
``progress_bar``, which draws only when progress was asked for and stderr is a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

Item = TypeVar("Item")


def on_terminal(show: bool = True) -> bool:
    """Whether to draw progress: asked for, and stderr is a terminal."""
    return show and sys.stderr.isatty()


def progress_bar(iterable: Iterable[Item], *, show: bool, **options: object) -> tqdm:
    """tqdm over ``iterable`` (``options`` as tqdm's), drawn only if ``on_terminal(show)``."""
    return tqdm(iterable, disable=not on_terminal(show), **options)
