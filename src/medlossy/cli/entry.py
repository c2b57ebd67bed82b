"""The ``medlossy`` console script (and ``python -m medlossy``): importing the CLI (numpy,
zarr, torch...) takes seconds, and Ctrl-C or SIGTERM during it must end like they do later
(one line, exit 130 or 143), not in a traceback or a silent death by the signal."""

from __future__ import annotations

import signal
import sys
import threading

INTERRUPTED = "medlossy: interrupted; no partial output was left"
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so that worker pools shut down and temporary outputs are
    removed, then reported with its own exit status."""


def exit_on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main() -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        from medlossy.cli.main import main as run_command
    except KeyboardInterrupt as interruption:  # nothing was written: no command had started
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_TERMINATED if isinstance(interruption, Terminated) else EXIT_INTERRUPTED
    return run_command()
