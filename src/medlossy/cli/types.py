"""Argument types shared by every command's parser (argparse names the option on error)."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """An integer >= 1, e.g. ``--workers``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def megabytes(text: str) -> float:
    """A memory budget in megabytes, >= 0, e.g. ``--decode-cache``."""
    from medlossy.loading.cache import megabytes as checked

    value = checked(text)
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value
