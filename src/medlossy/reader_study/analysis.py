"""Score the raters' answers against the key (STUDY.md, "Reader study").

Per answer: +1 when the rater picked the less compressed image, 0 for "cannot decide", -1 for
the more compressed one. The study's measure is the mean score per ratio pair: near 0 the
two ratios cannot be told apart, near +1 the loss is always seen.

Data flow: answers (database) + key -> one scored row per answer, flagged when the pair's
two images are pixel-identical (left out of scores and agreement by default, counted) ->
mean per ratio pair, per rater (that rater's images random) and pooled (raters and images
both random: ``intervals``) -> detection curve, 50 % detection ratio and Bradley-Terry
quality scale (``psychometric``) -> agreement: Cohen's kappa and linearly weighted
kappa for every two raters (scikit-learn), Krippendorff's ordinal alpha over all raters
(``krippendorff``) -> CSV files, a heatmap in the style of the study's Fig. 1 (left),
report.md and summary.json.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from medlossy.atomic import atomic_output
from medlossy.errors import MedlossyError
from medlossy.outputs import check_only
from medlossy.reader_study.db import Database
from medlossy.reader_study.designs import DEFAULT_DESIGN, Design, get_design
from medlossy.reader_study.intervals import score_interval
from medlossy.reader_study.pairs import load_key
from medlossy.reader_study.psychometric import (
    Estimate,
    curve_table,
    detection_rows,
    fit_curve,
    quality_table,
    threshold_estimate,
    threshold_problem,
)

REPORT_FILES = ("answers.csv", "scores.csv", "agreement.csv", "psychometric.csv",
                "quality.csv", "reader_study.png", "detection.png", "report.md", "summary.json")

POOLED = "pooled"
SCORES = {"correct": 1, "undecided": 0, "wrong": -1}
SCALE = (-1, 0, 1)  #: the ordinal scale, in order (weighted kappa, alpha)


def scored_answers(answers: list[dict], key: dict[str, dict],
                   design: Design | None = None) -> pd.DataFrame:
    """One row per answer with the pair's ratios and the score (+1 / 0 / -1) under the
    study's ``design`` (``designs``; side-by-side when not given)."""
    design = design or get_design(DEFAULT_DESIGN)
    rows = []
    for answer in answers:
        entry = key.get(answer["pair"])
        if entry is None:
            raise MedlossyError(None, f"answer for pair {answer['pair']} which is not in the key")
        if answer.get("design", design.name) != design.name:
            raise MedlossyError(None, f"a {answer['design']} answer in a {design.name} study")
        ratios = (entry["left"]["ratio"], entry["right"]["ratio"])
        score = design.score(answer["answer"], entry["less_compressed"])
        rows.append({**answer, "design": design.name, "dataset": entry["dataset"],
                     "case": entry["case"],
                     "channel": entry["channel"], "slice": entry["slice"],
                     "left_ratio": ratios[0], "right_ratio": ratios[1],
                     "left_psnr_db": entry["left"].get("psnr_db"),
                     "right_psnr_db": entry["right"].get("psnr_db"),
                     "less_compressed": entry["less_compressed"],
                     "ratio_low": min(ratios), "ratio_high": max(ratios), "score": score,
                     "identical": identical_pair(entry)})
    columns = ["rater", "pair", "design", "answer", "answered_at", "response_ms", "revisions",
               "dataset", "case", "channel", "slice", "left_ratio", "right_ratio", "left_psnr_db",
               "right_psnr_db", "less_compressed", "ratio_low", "ratio_high", "score", "identical"]
    return pd.DataFrame(rows, columns=columns)


def identical_pair(entry: dict[str, Any]) -> bool:
    """Whether both images of a pair are pixel-identical.

    ``reader make`` records it (``identical``); keys made before that are judged from the
    stores: both sides lossless (no error, so PSNR infinite) means the same pixels.
    """
    if "identical" in entry:
        return bool(entry["identical"])

    def lossless(side: dict[str, Any]) -> bool:
        psnr = side.get("psnr_db")
        return side.get("ratio") == 1 or (psnr is not None and math.isinf(psnr))
    return lossless(entry["left"]) and lossless(entry["right"])


def cohen_kappa(first: np.ndarray, second: np.ndarray, *, weights: str | None = None) -> float:
    """Cohen's kappa of two raters' scores on the same items (scikit-learn), unweighted or
    ``weights="linear"`` for the ordinal -1 < 0 < +1 scale (a miss by one step counts half).

    NaN when there are no items or kappa is undefined (both raters gave one and the same
    label throughout: chance agreement is 1).
    """
    from sklearn.metrics import cohen_kappa_score

    first, second = np.asarray(first), np.asarray(second)
    if len(first) != len(second):
        raise ValueError("both raters must label the same items")
    if len(first) == 0 or (len(np.union1d(first, second)) == 1):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(cohen_kappa_score(first, second, labels=list(SCALE),
                                       weights=weights))


def krippendorff_alpha(scored: pd.DataFrame) -> float:
    """Krippendorff's alpha (ordinal) over all raters and pairs (``krippendorff`` package).

    It takes any number of raters and answers missing at random; NaN with fewer than two
    raters or no variation at all.
    """
    import krippendorff

    wide = scored.pivot_table(index="rater", columns="pair", values="score", aggfunc="first")
    if wide.shape[0] < 2 or (wide.notna().sum(axis=0) >= 2).sum() == 0:
        return float("nan")
    values = wide.to_numpy(dtype=float)
    if len(np.unique(values[~np.isnan(values)])) < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=values, level_of_measurement="ordinal",
                                    value_domain=list(SCALE)))


def _scored_for_scores(scored: pd.DataFrame, include_identical: bool) -> pd.DataFrame:
    return scored if include_identical else scored[~scored["identical"].astype(bool)]


def score_table(scored: pd.DataFrame, ratio_pairs: list[tuple[float, float]], *,
                include_identical: bool = False) -> pd.DataFrame:
    """Mean score per ratio pair, per rater and pooled, with 95 % intervals.

    Pooled: raters and images random (``intervals.score_interval``: Obuchowski-Rockette,
    Hillis df, Wilson form); per rater: that rater's images random. Answers on
    pixel-identical pairs are left out unless ``include_identical``; the column
    ``identical_left_out`` counts them per cell.
    """
    rows = []
    used = _scored_for_scores(scored, include_identical)
    raters = sorted(scored["rater"].unique())
    for who in [*raters, POOLED]:
        subset = used if who == POOLED else used[used["rater"] == who]
        everything = scored if who == POOLED else scored[scored["rater"] == who]
        for low, high in ratio_pairs:
            cell = subset[(subset["ratio_low"] == low) & (subset["ratio_high"] == high)]
            scores = cell["score"].to_numpy(dtype=float)
            ci_low, ci_high, df = score_interval(scores, cell["rater"].to_numpy(),
                                                 cell["pair"].to_numpy())
            in_cell = everything[(everything["ratio_low"] == low) &
                                 (everything["ratio_high"] == high)]
            mean = float(scores.mean()) if len(scores) else float("nan")
            rows.append({
                "rater": who, "ratio_low": low, "ratio_high": high, "n": len(scores),
                "mean_score": mean, "ci_low": ci_low, "ci_high": ci_high, "df": df,
                # The same on the proportion scale: detection (flicker) or correct
                # identification (2AFC) rate.
                "rate": (mean + 1) / 2, "rate_ci_low": (ci_low + 1) / 2,
                "rate_ci_high": (ci_high + 1) / 2,
                "correct": int((scores == 1).sum()), "undecided": int((scores == 0).sum()),
                "wrong": int((scores == -1).sum()),
                "identical_left_out": 0 if include_identical else
                int(in_cell["identical"].astype(bool).sum())})
    return pd.DataFrame(rows)


def agreement_table(scored: pd.DataFrame, *, include_identical: bool = False) -> pd.DataFrame:
    """Cohen's kappa and linearly weighted kappa for every two raters, over the pairs both
    answered (pixel-identical pairs left out unless ``include_identical``).

    The labels are the scores (saw the loss / cannot decide / picked the wrong side): the
    side itself is random, so agreeing on "left" means nothing beyond agreeing on the score.
    """
    rows = []
    used = _scored_for_scores(scored, include_identical)
    wide = used.pivot_table(index="pair", columns="rater", values="score", aggfunc="first")
    for first, second in itertools.combinations(sorted(wide.columns), 2):
        both = wide[[first, second]].dropna()
        a, b = both[first].to_numpy(), both[second].to_numpy()
        rows.append({"rater_a": first, "rater_b": second, "n": len(both),
                     "percent_agreement": float((a == b).mean() * 100)
                     if len(both) else float("nan"),
                     "kappa": cohen_kappa(a, b),
                     "weighted_kappa": cohen_kappa(a, b, weights="linear")})
    return pd.DataFrame(rows, columns=["rater_a", "rater_b", "n", "percent_agreement", "kappa",
                                       "weighted_kappa"])


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


def plot_detection(curve: pd.DataFrame, params: np.ndarray | None,
                   found: dict[str, Any], path: Path) -> None:
    """Detection probability against the ratio: observed, fitted, and the 50 % point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axis = plt.subplots(figsize=(5.2, 3.6), constrained_layout=True)
    axis.plot(curve["ratio"], curve["detection"], "o", color="black", label="observed")
    if params is not None and len(curve):
        ratios = np.geomspace(curve["reference_ratio"].iloc[0] or 1, curve["ratio"].max(), 200)
        axis.plot(ratios, expit(params[0] + params[1] * np.log(ratios)),
                  color="tab:blue", label="fitted")
    if found["value"] is not None:
        axis.axvline(found["value"], color="tab:red", label="50 % detection")
        if found["ci_low"] is not None and found["ci_high"] is not None:
            axis.axvspan(found["ci_low"], found["ci_high"], color="tab:red", alpha=0.15)
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 10, not 10^1
    axis.set_ylim(-0.05, 1.05)
    axis.set_xlabel("compression ratio (against the least compressed)")
    axis.set_ylabel("detection probability")
    axis.legend(loc="upper left", fontsize=8)
    figure.savefig(path, dpi=130)
    plt.close(figure)


def _markdown(table: pd.DataFrame, columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table[columns].itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v)
                                        for v in row) + " |")
    return "\n".join(lines)


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _estimate(found: Estimate, problem: str | None = None) -> dict[str, Any]:
    """``problem``: why the value is not determined (then every number is None)."""
    if problem is not None:
        return {"value": None, "ci_low": None, "ci_high": None, "df": None,
                "not_determined": problem}
    return {"value": _number(found.value), "ci_low": _number(found.low),
            "ci_high": _number(found.high), "df": _number(found.df)}


def _threshold(rows: pd.DataFrame, measure: str, guess: float) -> dict[str, Any]:
    problem = ("no answers against the least compressed ratio" if rows.empty else
               threshold_problem(rows, measure, guess=guess))
    if problem is not None:
        return _estimate(Estimate(*[float("nan")] * 4), problem)
    return _estimate(threshold_estimate(rows, measure, guess=guess))


def psychometric_summary(used: pd.DataFrame, ratios: list[float],
                         design: Design | None = None
                         ) -> tuple[pd.DataFrame, np.ndarray | None, pd.DataFrame,
                                    dict[str, Any]]:
    """Detection curve table and fit, quality scale table, the 50 % detection points.

    The curve's floor is the design's ``guess`` (1/2 forced choice, 0 flicker). The
    Bradley-Terry scale needs preferences between ratios: side-by-side only (an empty table
    otherwise).
    """
    design = design or get_design(DEFAULT_DESIGN)
    rows = detection_rows(used, ratios[0])
    guess = design.guess
    thresholds = {"reference_ratio": ratios[0], "guess": guess,
                  "ratio": _threshold(rows, "ratio", guess),
                  "psnr_db": _threshold(rows, "psnr", guess)}
    params = fit_curve(rows, "ratio", guess=guess)
    quality = (quality_table(used, ratios) if design.all_ratio_pairs else
               pd.DataFrame(columns=["ratio", "quality", "ci_low", "ci_high", "df"]))
    return curve_table(rows, ratios[0], params, guess=guess), params, quality, thresholds


def _curve_note(design: Design) -> str:
    """How the detection curve was fitted, for the report."""
    if design.guess:
        fit = ("P(+1) = 1/2 + 1/2 logistic(a + b log ratio) (a rater who sees nothing is "
               "right half the time), so 50 % detection is 75 % correct")
    else:
        fit = ("P(seen) = logistic(a + b log ratio), 50 % detection = half the answers see "
               "the flicker (false alarms are not measured)")
    scale = ("; quality: Bradley-Terry over every ratio pair" if design.all_ratio_pairs
             else "")
    return (f"Detection against the least compressed ratio, fitted as {fit}{scale}. "
            "Intervals: delete-one-rater plus delete-one-image jackknife, t on "
            "Satterthwaite's df.")


def _interval(value: float | None, low: float | None, high: float | None,
              unit: str = "") -> str:
    if value is None:
        return "n/a"
    if low is None or high is None:
        return f"{value:.3g}{unit} (no interval)"
    return f"{value:.3g}{unit} [{low:.3g}, {high:.3g}]"


def _threshold_text(found: dict[str, Any], unit: str = "") -> str:
    if found.get("not_determined"):
        return f"n/a: {found['not_determined']}"
    return _interval(found["value"], found["ci_low"], found["ci_high"], unit)


def _raters(count: int) -> str:
    return f"{count} rater{'' if count == 1 else 's'}"


def result_lines(summary: dict[str, Any]) -> list[str]:
    """The results for stdout: pooled scores, the 50 % detection points, quality scale."""
    lines = ["pooled mean score and rate (+1: the rater " + summary["success"]
             + "; 95% CI, raters and images random):"]
    lines += [f"  x{r['ratio_low']:g} vs x{r['ratio_high']:g}: n {r['n']}, score "
              + _interval(r["mean_score"], r["ci_low"], r["ci_high"]) + ", rate "
              + _interval(r["rate"], r["rate_ci_low"], r["rate_ci_high"])
              for r in summary["pooled"]]
    found = summary["detection_50"]
    chance = "75% correct, " if found.get("guess") else ""
    lines.append(f"50% detection against x{found['reference_ratio']:g} ({chance}visually "
                 "lossless up to): ratio " + _threshold_text(found["ratio"])
                 + ", compressed side's PSNR " + _threshold_text(found["psnr_db"], " dB"))
    if summary["quality"]:
        lines.append("quality scale (Bradley-Terry, logits against x"
                     f"{summary['quality'][0]['ratio']:g}): " + "; ".join(
                         f"x{q['ratio']:g} " + _interval(q["quality"], q["ci_low"],
                                                          q["ci_high"])
                         for q in summary["quality"]))
    return lines


def analyze_study(study: str | os.PathLike[str], database: Database,
                  out: str | os.PathLike[str], *,
                  include_identical: bool = False) -> dict[str, Any]:
    """Write the report files (``REPORT_FILES``) to ``out`` (replaced as a whole, so it may
    hold nothing else), readable by their owner only."""
    study, out = Path(study), Path(out)
    check_only(out, REPORT_FILES, "a reader study report folder")
    settings = json.loads((study / "study.json").read_text())
    ratios = [float(r) for r in settings["ratios"]]
    ratio_pairs = [(float(a), float(b)) for a, b in settings["ratio_pairs"]]
    key = load_key(study)
    design = get_design(settings.get("design", DEFAULT_DESIGN))
    scored = scored_answers(database.all_answers(), key, design)
    table = score_table(scored, ratio_pairs, include_identical=include_identical)
    used = _scored_for_scores(scored, include_identical)
    curve, params, quality, thresholds = psychometric_summary(used, ratios, design)
    agreement = agreement_table(scored, include_identical=include_identical)
    alpha = krippendorff_alpha(used)
    pooled = table[table["rater"] == POOLED]
    identical_pairs = sum(identical_pair(entry) for entry in key.values())
    identical_answers = int(scored["identical"].astype(bool).sum())
    summary = {
        "answers": len(scored), "raters": int(scored["rater"].nunique()),
        "pairs": settings["pairs"], "datasets": settings["datasets"],
        "window": settings["window"], "design": design.name, "success": design.success,
        "pooled_ci": "Obuchowski-Rockette, raters and images random, Hillis df, Wilson form",
        "identical_pairs": identical_pairs, "identical_answers": identical_answers,
        "identical_included": include_identical,
        "pooled": [{"ratio_low": r.ratio_low, "ratio_high": r.ratio_high, "n": r.n,
                    "mean_score": _number(r.mean_score), "ci_low": _number(r.ci_low),
                    "ci_high": _number(r.ci_high), "df": _number(r.df),
                    "rate": _number(r.rate), "rate_ci_low": _number(r.rate_ci_low),
                    "rate_ci_high": _number(r.rate_ci_high),
                    "identical_left_out": r.identical_left_out}
                   for r in pooled.itertuples()],
        "detection_50": thresholds,
        "quality": [{"ratio": q.ratio, "quality": _number(q.quality),
                     "ci_low": _number(q.ci_low), "ci_high": _number(q.ci_high)}
                    for q in quality.itertuples()],
        "kappa": [{"rater_a": r.rater_a, "rater_b": r.rater_b, "n": r.n,
                   "kappa": _number(r.kappa), "weighted_kappa": _number(r.weighted_kappa)}
                  for r in agreement.itertuples()],
        "krippendorff_alpha_ordinal": _number(alpha),
    }
    left_out = ("included in the scores (--include-identical)" if include_identical else
                f"left out of scores and agreement ({identical_answers} answers)")
    report = "\n\n".join([
        "# Reader study",
        f"{len(scored)} answers from {_raters(summary['raters'])} on {settings['pairs']} pairs "
        f"({', '.join(settings['datasets'])}; window {settings['window']}; design "
        f"{design.name}). Score per answer: +1 the rater {design.success}, 0 cannot decide, "
        "-1 otherwise; rate = (score + 1) / 2. Mean per ratio pair with 95% CIs: pooled, "
        "raters and images both random "
        "(Obuchowski-Rockette with Hillis's degrees of freedom, in a Wilson interval on the "
        "effective number of answers); per rater, that rater's images random.",
        f"{identical_pairs} of {settings['pairs']} pairs show two pixel-identical images "
        "(both ratios stored losslessly, e.g. x2 on CT where lossless already beats x2): "
        f"{left_out}.",
        "![mean score per ratio pair](reader_study.png)",
        "## Pooled",
        _markdown(pooled, ["ratio_low", "ratio_high", "n", "mean_score", "ci_low", "ci_high",
                           "rate", "rate_ci_low", "rate_ci_high", "df", "correct", "undecided",
                           "wrong", "identical_left_out"]),
        "## Detection and quality",
        "\n".join(result_lines(summary)[len(pooled) + 1:]),
        "![detection against the ratio](detection.png)",
        _curve_note(design),
        _markdown(curve, ["ratio", "n", "psnr_db", "correct", "detection", "fitted_detection"]),
        _markdown(quality, ["ratio", "quality", "ci_low", "ci_high"]) if len(quality) else
        "No quality scale: it needs preferences between every two ratios (side-by-side).",
        "## Per rater",
        _markdown(table[table["rater"] != POOLED],
                  ["rater", "ratio_low", "ratio_high", "n", "mean_score", "ci_low", "ci_high"]),
        "## Agreement",
        "Every two raters: Cohen's kappa, and kappa with linear weights for the ordinal scale "
        "-1 < 0 < +1. All raters: Krippendorff's alpha (ordinal) = "
        + ("n/a" if np.isnan(alpha) else f"{alpha:.2f}") + ".",
        _markdown(agreement, ["rater_a", "rater_b", "n", "percent_agreement", "kappa",
                              "weighted_kappa"])
        if len(agreement) else "Fewer than two raters answered: no agreement to report.",
    ]) + "\n"
    with atomic_output(out) as folder:
        folder.mkdir(mode=0o700)  # whatever the umask: nobody else gets in while it is written
        scored.to_csv(folder / "answers.csv", index=False)
        table.to_csv(folder / "scores.csv", index=False)
        agreement.to_csv(folder / "agreement.csv", index=False)
        curve.to_csv(folder / "psychometric.csv", index=False)
        quality.to_csv(folder / "quality.csv", index=False)
        plot_matrix(table, ratios, folder / "reader_study.png")
        plot_detection(curve, params, thresholds["ratio"], folder / "detection.png")
        (folder / "report.md").write_text(report)
        (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        _owner_only(folder)
    return {**summary, "files": list(REPORT_FILES)}


def _owner_only(folder: Path) -> None:
    """The report unblinds the study (answers.csv joins every answer with the key): 0700 and
    0600, as the key and the database."""
    folder.chmod(0o700)
    for path in folder.iterdir():
        path.chmod(0o600)
