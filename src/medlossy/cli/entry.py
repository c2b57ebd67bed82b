"""The ``medlossy`` console script: importing the CLI (numpy, zarr, torch...) takes seconds,
and Ctrl-C during it must end like Ctrl-C later (one line, exit 130), not in a traceback."""

from __future__ import annotations

import signal
import sys

INTERRUPTED = "medlossy: interrupted; no partial output was left"


def main() -> int:
    try:
        from medlossy.cli.main import main as run_command
    except KeyboardInterrupt:  # nothing was written yet: the command had not started
        print(INTERRUPTED, file=sys.stderr)
        return 128 + signal.SIGINT
    return run_command()
