"""What goes to a terminal and only there: progress bars and colour.

A bar redraws itself with carriage returns: on a terminal that is one live line, in a log
file or a pipe it is hundreds of updates glued together. Every bar of medlossy goes through
``progress_bar``, which draws only when progress was asked for and stderr is a terminal.
Colour (the reader server's log lines) follows ``colours``: a terminal, and no ``NO_COLOR``
(https://no-color.org).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TextIO, TypeVar

from tqdm import tqdm

Item = TypeVar("Item")


def on_terminal(show: bool = True) -> bool:
    """Whether to draw progress: asked for, and stderr is a terminal."""
    return show and sys.stderr.isatty()


def progress_bar(iterable: Iterable[Item], *, show: bool, **options: object) -> tqdm:
    """tqdm over ``iterable`` (``options`` as tqdm's), drawn only if ``on_terminal(show)``."""
    return tqdm(iterable, disable=not on_terminal(show), **options)


def colours(stream: TextIO) -> bool:
    """Whether text for ``stream`` may carry colour: a terminal, and NO_COLOR unset or
    empty."""
    return not os.environ.get("NO_COLOR") and stream.isatty()
