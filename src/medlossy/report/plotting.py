"""Shared figure plumbing: the headless backend, log-scaled ratio axes, PNG + SVG output."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt


def log_ticks(axes, ticks: Iterable[float], template: str = "x{:g}",
              notes: Mapping[float, str] | None = None) -> None:
    """A log-scaled x axis with one labelled tick per value (ratios, budget shares); a
    note (e.g. "lossless") goes under its tick."""
    ticks = sorted(ticks)
    notes = notes or {}
    axes.set_xscale("log")
    axes.set_xticks(ticks, [template.format(t) + (f"\n{notes[float(t)]}"
                                                  if float(t) in notes else "")
                            for t in ticks])
    axes.minorticks_off()


def finish(figure, axes, stem: Path, *, xlabel: str, ylabel: str, title: str,
           legend: bool = True, grid: bool = True) -> list[Path]:
    """Label, grid, lay out and write ``stem``.png and ``stem``.svg; closes the figure."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if grid:
        axes.grid(True, alpha=0.3)
    if legend:
        axes.legend(fontsize=8)
    figure.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path)
    plt.close(figure)
    return paths
