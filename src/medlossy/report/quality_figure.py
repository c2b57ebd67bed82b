"""PSNR against compression ratio, one line per dataset (the study's Fig. 1, right)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medlossy.report.plotting import finish, log_ticks, plt


def plot_quality(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg; lossless (ratio 1, infinite PSNR) is left out."""
    lossy = table[np.isfinite(table["psnr_db"])]
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (dataset, modality), group in lossy.groupby(["dataset", "modality"]):
        axes.scatter(group["ratio_achieved"], group["psnr_db"], s=12, alpha=0.45)
        means = group.groupby("ratio_target").agg(ratio=("ratio_achieved", "mean"),
                                                  psnr=("psnr_db", "mean"))
        axes.plot(means["ratio"], means["psnr"], marker="o", label=f"{dataset} ({modality})")
    log_ticks(axes, lossy["ratio_target"].unique())
    return finish(figure, axes, stem,
                  xlabel="compression ratio (raw 16-bit bytes / stored bytes)",
                  ylabel="PSNR (dB)", title="Image quality after JPEG 2000 compression")
