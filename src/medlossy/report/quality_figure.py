"""PSNR against compression ratio, one line per dataset (the study's Fig. 1, right)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_quality(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg; lossless (ratio 1, infinite PSNR) is left out."""
    lossy = table[np.isfinite(table["psnr_db"])]
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (dataset, modality), group in lossy.groupby(["dataset", "modality"]):
        axes.scatter(group["ratio_achieved"], group["psnr_db"], s=12, alpha=0.45)
        means = group.groupby("ratio_target").agg(ratio=("ratio_achieved", "mean"),
                                                  psnr=("psnr_db", "mean"))
        axes.plot(means["ratio"], means["psnr"], marker="o", label=f"{dataset} ({modality})")
    axes.set_xscale("log")
    ticks = sorted(lossy["ratio_target"].unique())
    axes.set_xticks(ticks, [f"x{t:g}" for t in ticks])
    axes.minorticks_off()
    axes.set_xlabel("compression ratio (raw 16-bit bytes / stored bytes)")
    axes.set_ylabel("PSNR (dB)")
    axes.set_title("Image quality after JPEG 2000 compression")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path)
    plt.close(figure)
    return paths
