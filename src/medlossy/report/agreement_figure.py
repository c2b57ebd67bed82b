"""Figure of a pretrained model's agreement with its own x1 prediction against the ratio."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medlossy.report.plotting import finish, log_ticks, plt


def plot_agreement(means: pd.DataFrame, stem: Path, *, between: pd.DataFrame | None = None,
                   ) -> list[Path]:
    """One line per dataset and codec (``means``: dataset, codec, model, ratio, mean_dice,
    ci_low, ci_high, the model against its own x1 prediction) with its 95% intervals; a
    dashed line per pair of models (``between``: model, reference, mean_dice) where two
    models of one task disagree at x1, for scale."""
    figure, axes = plt.subplots(figsize=(7.4, 4.4), dpi=120)
    several = means["model"].nunique() > 1
    for (dataset, codec, model), rows in means.groupby(["dataset", "codec", "model"]):
        rows = rows.sort_values("ratio")
        low = (rows["mean_dice"] - rows["ci_low"]).clip(lower=0).fillna(0)
        high = (rows["ci_high"] - rows["mean_dice"]).clip(lower=0).fillna(0)
        label = f"{dataset.removesuffix('_' + codec)} {codec}" + (f" ({model})" if several
                                                                    else "")
        axes.errorbar(rows["ratio"], rows["mean_dice"], yerr=[low, high], marker="o",
                      capsize=3, linewidth=1.5, label=label)
    for row in (between if between is not None else pd.DataFrame()).itertuples():
        axes.axhline(row.mean_dice, linestyle="--", color="grey", linewidth=1.0,
                     label=f"{row.model} vs {row.reference}")
    log_ticks(axes, means["ratio"].unique())
    return finish(figure, axes, stem, xlabel="compression ratio",
                  ylabel="Dice against the model's own x1 prediction",
                  title="Pretrained model: agreement with itself at x1")
