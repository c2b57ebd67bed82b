"""Score the raters' answers against the key (STUDY.md, "Reader study").

Per answer: +1 when the rater picked the less compressed image, 0 for "cannot decide", -1 for
the more compressed one. The study's measure is the mean score per ratio pair: near 0 the
two ratios cannot be told apart, near +1 the loss is always seen. Reported per rater and
pooled, with seeded bootstrap 95% CIs, plus Cohen's kappa between raters, a heatmap in the
style of the study's Fig. 1 (left) and CSV files.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.errors import MedlossyError
from medlossy.reader_study.db import Database
from medlossy.reader_study.pairs import load_key

POOLED = "pooled"
SCORES = {"correct": 1, "undecided": 0, "wrong": -1}
CONFIDENCE = 0.95


def scored_answers(answers: list[dict], key: dict[str, dict]) -> pd.DataFrame:
    """One row per answer with the pair's ratios and the score (+1 / 0 / -1)."""
    rows = []
    for answer in answers:
        entry = key.get(answer["pair"])
        if entry is None:
            raise MedlossyError(None, f"answer for pair {answer['pair']} which is not in the key")
        ratios = (entry["left"]["ratio"], entry["right"]["ratio"])
        if answer["answer"] == "undecided":
            score = 0
        else:
            score = 1 if answer["answer"] == entry["less_compressed"] else -1
        rows.append({**answer, "dataset": entry["dataset"], "case": entry["case"],
                     "channel": entry["channel"], "slice": entry["slice"],
                     "left_ratio": ratios[0], "right_ratio": ratios[1],
                     "less_compressed": entry["less_compressed"],
                     "ratio_low": min(ratios), "ratio_high": max(ratios), "score": score})
    columns = ["rater", "pair", "answer", "answered_at", "revisions", "dataset", "case",
               "channel", "slice", "left_ratio", "right_ratio", "less_compressed", "ratio_low",
               "ratio_high", "score"]
    return pd.DataFrame(rows, columns=columns)


def bootstrap_mean_ci(scores: np.ndarray, clusters: np.ndarray, *, resamples: int,
                      rng: np.random.Generator) -> tuple[float, float]:
    """Percentile CI of the mean, resampling whole clusters (pairs) with replacement.

    The pooled mean holds every rater's answer to the same image; those answers are not
    independent, so the image (pair) is the unit that is resampled.
    """
    if len(scores) == 0:
        return float("nan"), float("nan")
    labels, index = np.unique(clusters, return_inverse=True)
    sums = np.bincount(index, weights=scores, minlength=len(labels))
    counts = np.bincount(index, minlength=len(labels)).astype(float)
    draws = rng.integers(0, len(labels), size=(resamples, len(labels)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def cohen_kappa(first: np.ndarray, second: np.ndarray) -> float:
    """Cohen's kappa of two raters' labels on the same items.

    A few lines of numpy rather than a scikit-learn dependency for one formula:
    kappa = (p_observed - p_chance) / (1 - p_chance). NaN when chance agreement is 1 (both
    raters gave one and the same label throughout: kappa is undefined).
    """
    first, second = np.asarray(first), np.asarray(second)
    if len(first) != len(second):
        raise ValueError("both raters must label the same items")
    if len(first) == 0:
        return float("nan")
    labels = np.union1d(first, second)
    observed = float(np.mean(first == second))
    chance = float(sum(np.mean(first == label) * np.mean(second == label) for label in labels))
    if chance >= 1.0:
        return float("nan")
    return (observed - chance) / (1.0 - chance)


def score_table(scored: pd.DataFrame, ratio_pairs: list[tuple[float, float]], *,
                resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean score per ratio pair, per rater and pooled, with bootstrap CIs."""
    rng = np.random.default_rng(seed)
    rows = []
    raters = sorted(scored["rater"].unique())
    for who in [*raters, POOLED]:
        subset = scored if who == POOLED else scored[scored["rater"] == who]
        for low, high in ratio_pairs:
            cell = subset[(subset["ratio_low"] == low) & (subset["ratio_high"] == high)]
            scores = cell["score"].to_numpy(dtype=float)
            ci_low, ci_high = bootstrap_mean_ci(scores, cell["pair"].to_numpy(),
                                                resamples=resamples, rng=rng)
            rows.append({
                "rater": who, "ratio_low": low, "ratio_high": high, "n": len(scores),
                "mean_score": float(scores.mean()) if len(scores) else float("nan"),
                "ci_low": ci_low, "ci_high": ci_high,
                "correct": int((scores == 1).sum()), "undecided": int((scores == 0).sum()),
                "wrong": int((scores == -1).sum())})
    return pd.DataFrame(rows)


def agreement_table(scored: pd.DataFrame) -> pd.DataFrame:
    """Cohen's kappa for every two raters, over the pairs both answered.

    The labels are the scores (saw the loss / cannot decide / picked the wrong side): the
    side itself is random, so agreeing on "left" means nothing beyond agreeing on the score.
    """
    rows = []
    wide = scored.pivot_table(index="pair", columns="rater", values="score", aggfunc="first")
    for first, second in itertools.combinations(sorted(wide.columns), 2):
        both = wide[[first, second]].dropna()
        rows.append({"rater_a": first, "rater_b": second, "n": len(both),
                     "percent_agreement": float((both[first] == both[second]).mean() * 100)
                     if len(both) else float("nan"),
                     "kappa": cohen_kappa(both[first].to_numpy(), both[second].to_numpy())})
    return pd.DataFrame(rows, columns=["rater_a", "rater_b", "n", "percent_agreement", "kappa"])


def plot_matrix(table: pd.DataFrame, ratios: list[float], path: Path) -> None:
    """Mean score per ratio pair as a lower-triangular heatmap, pooled and per rater."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [POOLED, *sorted(set(table["rater"]) - {POOLED})]
    rows, columns = ratios[1:], ratios[:-1]  # more compressed x less compressed
    figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 1.2, 3.6),
                                squeeze=False, constrained_layout=True)
    image = None
    for number, (axis, who) in enumerate(zip(axes[0], panels, strict=True)):
        matrix = np.full((len(rows), len(columns)), np.nan)
        for row in table[table["rater"] == who].itertuples():
            matrix[rows.index(row.ratio_high), columns.index(row.ratio_low)] = row.mean_score
        image = axis.imshow(matrix, cmap="RdYlBu_r", vmin=-1, vmax=1)
        for i, j in itertools.product(range(len(rows)), range(len(columns))):
            if not np.isnan(matrix[i, j]):
                axis.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                          color="white" if abs(matrix[i, j]) > 0.6 else "black")
        axis.set_xticks(range(len(columns)), [f"{r:g}" for r in columns])
        axis.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
        axis.set_xlabel("less compressed (ratio)")
        if number == 0:
            axis.set_ylabel("more compressed (ratio)")
        axis.set_title("pooled" if who == POOLED else who)
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.85,
                    label="mean score (+1 loss seen, 0 cannot tell)")
    figure.savefig(path, dpi=130)
    plt.close(figure)


def _markdown(table: pd.DataFrame, columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table[columns].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v)
                                        for v in row) + " |")
    return "\n".join(lines)


def analyze_study(study: str | os.PathLike[str], database: Database,
                  out: str | os.PathLike[str], *, bootstrap: int = 2000,
                  seed: int = 0) -> dict[str, Any]:
    """Write answers.csv, scores.csv, agreement.csv, reader_study.png, report.md and
    summary.json to ``out`` (replaced as a whole)."""
    study = Path(study)
    if bootstrap < 100:
        raise MedlossyError(None, f"--bootstrap must be at least 100, got {bootstrap}")
    settings = json.loads((study / "study.json").read_text())
    ratios = [float(r) for r in settings["ratios"]]
    ratio_pairs = [(float(a), float(b)) for a, b in settings["ratio_pairs"]]
    scored = scored_answers(database.all_answers(), load_key(study))
    table = score_table(scored, ratio_pairs, resamples=bootstrap, seed=seed)
    agreement = agreement_table(scored)
    pooled = table[table["rater"] == POOLED]
    summary = {
        "answers": len(scored), "raters": int(scored["rater"].nunique()),
        "pairs": settings["pairs"], "datasets": settings["datasets"],
        "window": settings["window"], "bootstrap_resamples": bootstrap,
        "pooled": [{"ratio_low": r.ratio_low, "ratio_high": r.ratio_high, "n": r.n,
                    "mean_score": None if np.isnan(r.mean_score) else r.mean_score,
                    "ci_low": None if np.isnan(r.ci_low) else r.ci_low,
                    "ci_high": None if np.isnan(r.ci_high) else r.ci_high}
                   for r in pooled.itertuples()],
        "kappa": [{"rater_a": r.rater_a, "rater_b": r.rater_b, "n": r.n,
                   "kappa": None if np.isnan(r.kappa) else r.kappa}
                  for r in agreement.itertuples()],
    }
    report = "\n\n".join([
        "# Reader study",
        f"{len(scored)} answers from {summary['raters']} raters on {settings['pairs']} pairs "
        f"({', '.join(settings['datasets'])}; window {settings['window']}). Score per answer: "
        "+1 the less compressed image was picked, 0 cannot decide, -1 the more compressed "
        "one. Mean per ratio pair; 95% bootstrap CIs (resampling images, "
        f"{bootstrap} resamples, seed {seed}).",
        "![mean score per ratio pair](reader_study.png)",
        "## Pooled",
        _markdown(pooled, ["ratio_low", "ratio_high", "n", "mean_score", "ci_low", "ci_high",
                           "correct", "undecided", "wrong"]),
        "## Per rater",
        _markdown(table[table["rater"] != POOLED],
                  ["rater", "ratio_low", "ratio_high", "n", "mean_score", "ci_low", "ci_high"]),
        "## Agreement (Cohen's kappa on the scores)",
        _markdown(agreement, ["rater_a", "rater_b", "n", "percent_agreement", "kappa"])
        if len(agreement) else "Fewer than two raters answered: no agreement to report.",
    ]) + "\n"
    out = Path(out)
    with atomic_output(out) as folder:
        folder.mkdir()
        scored.to_csv(folder / "answers.csv", index=False)
        table.to_csv(folder / "scores.csv", index=False)
        agreement.to_csv(folder / "agreement.csv", index=False)
        plot_matrix(table, ratios, folder / "reader_study.png")
        (folder / "report.md").write_text(report)
        (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    files = ["answers.csv", "scores.csv", "agreement.csv", "reader_study.png", "report.md",
             "summary.json"]
    return {**summary, "files": files}
