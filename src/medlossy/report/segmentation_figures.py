"""Figures of the segmentation experiments in the style of the paper's Fig. 2 and 3."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from medlossy.report.plotting import finish, log_ticks, plt


def plot_dice_by_ratio(results: pd.DataFrame, experiment: str, stem: Path,
                       title: str, notes: Mapping[float, str] | None = None) -> list[Path]:
    """Mean Dice per class against the ratio, one labelled line per class, and the per-case
    mean (thick, black); one panel per dataset."""
    rows = results[(results["experiment"] == experiment) & (results["metric"] == "dice")]
    column = "ratio_train" if experiment == "train" else "ratio_test"
    datasets = sorted(rows["dataset"].unique()) or [""]
    figure, axes_row = plt.subplots(1, len(datasets), figsize=(7.4 * len(datasets), 4.4),
                                    dpi=120, squeeze=False)
    colours = plt.get_cmap("tab20")
    for axes, dataset in zip(axes_row[0], datasets, strict=True):
        mine = rows[rows["dataset"] == dataset]
        classes = sorted(c for c in mine["class"].unique() if c != "mean")
        for index, name in enumerate(classes):
            means = mine[mine["class"] == name].groupby(column)["value"].mean()
            axes.plot(means.index, means.values, marker=".", linewidth=1.0,
                      color=colours(index % 20), label=name)
        means = mine[mine["class"] == "mean"].groupby(column)["value"].mean()
        axes.plot(means.index, means.values, marker="o", linewidth=2.5, color="black",
                  label="per-case mean")
        log_ticks(axes, mine[column].unique(), notes=notes)
        axes.set_ylim(0, 1)
        axes.set_xlabel("compression ratio")
        axes.set_ylabel("Dice")
        axes.set_title(f"{title}: {dataset}" if dataset else title, fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return paths


def plot_cross_matrix(matrix: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    figure, axes = plt.subplots(figsize=(5.2, 4.4), dpi=120)
    image = axes.imshow(matrix.values, cmap="viridis", vmin=np.nanmin(matrix.values) - 0.02,
                        vmax=np.nanmax(matrix.values) + 0.02)
    axes.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=45, ha="right")
    axes.set_yticks(range(len(matrix.index)), matrix.index)
    for (i, j), value in np.ndenumerate(matrix.values):
        axes.text(j, i, f"{value:.3f}", ha="center", va="center", color="white", fontsize=8)
    figure.colorbar(image, ax=axes, label="mean Dice")
    return finish(figure, axes, stem, xlabel="test ratio", ylabel="training ratio",
                  title=title, legend=False, grid=False)


def plot_budget(budget: pd.DataFrame, stem: Path) -> list[Path]:
    """Mean Dice of few-shot (uncompressed subset) and compressed (all data) per budget."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (dataset, arm), group in budget.groupby(["dataset", "arm"]):
        group = group.sort_values("budget_fraction")
        axes.errorbar(group["budget_fraction"] * 100, group["mean_dice"], yerr=group["sd"],
                      marker="o", capsize=3, label=f"{dataset}: {arm}")
    log_ticks(axes, budget["budget_fraction"].unique() * 100, "{:g}%")
    return finish(figure, axes, stem,
                  xlabel="storage budget (nominal share of the raw training bytes)",
                  ylabel="mean Dice on uncompressed hold-out",
                  title="Equal storage: few-shot uncompressed vs all data compressed")


def plot_mixed(comparison: pd.DataFrame, stem: Path,
               notes: Mapping[float, str] | None = None) -> list[Path]:
    """Mean Dice per test ratio of the mixed-ratio model, the x1 model and the model trained
    at each ratio (where one was)."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for dataset, group in comparison.groupby("dataset"):
        group = group.sort_values("ratio_test")
        for column, label, style in (("mixed_dice", "one model, every ratio", "o-"),
                                     ("x1_model_dice", "x1 model", "s--"),
                                     ("ratio_model_dice", "model trained at that ratio", "^:")):
            shown = group[np.isfinite(group[column])]
            if len(shown):
                axes.plot(shown["ratio_test"], shown[column], style,
                          label=f"{dataset}: {label}")
    log_ticks(axes, comparison["ratio_test"].unique(), notes=notes)
    return finish(figure, axes, stem, xlabel="test ratio", ylabel="mean Dice",
                  title="One model for every ratio against one model per ratio")


def plot_non_inferiority(tests: pd.DataFrame, margin: float, stem: Path,
                         notes: Mapping[float, str] | None = None) -> list[Path]:
    """Per-case mean paired Dice difference vs ratio 1 with 95% CIs (thick), each class's
    lower bound (thin, dashed), and the margin: a class below the margin line fails."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for dataset, group in tests.groupby("dataset"):
        mean = group[group["class"] == "mean"]
        axes.errorbar(mean["ratio"], mean["mean_difference"],
                      yerr=[mean["mean_difference"] - mean["ci_low"],
                            mean["ci_high"] - mean["mean_difference"]],
                      marker="o", capsize=3, linewidth=2, label=f"{dataset}: per-case mean")
        for name, rows in group[group["class"] != "mean"].groupby("class"):
            axes.plot(rows["ratio"], rows["ci_low"], linestyle=":", marker=".",
                      linewidth=1, label=f"{dataset}: {name} (lower bound)")
    axes.axhline(-margin, color="red", linestyle="--", label=f"margin -{margin:g}")
    axes.axhline(0, color="black", linewidth=0.6)
    log_ticks(axes, tests["ratio"].unique(), notes=notes)
    return finish(figure, axes, stem, xlabel="compression ratio",
                  ylabel="Dice(ratio) - Dice(x1), 95% CI",
                  title="Paired difference against uncompressed training")
