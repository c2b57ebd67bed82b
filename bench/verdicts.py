"""False non-inferiority, power and family-wise error of the study's verdicts, by simulation.

Per-case Dice tables are drawn (``medlossy.experiments.calibration.simulated_dice``: a base
Dice per case, one random shift per trained model, per-case effects of the compression,
optionally a share of cases that fail badly, per-prediction noise), never from the decision
code's formulas; medlossy's own ``statistics.decide`` and ``statistics.safe_ratios`` make
every decision. True mean difference at the margin (-0.01) for the error rates, 0 for power.

    PYTHONPATH=src .venv/bin/python bench/verdicts.py [--studies 20000] > bench/results/verdicts.md
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
from scipy import stats

from medlossy.experiments.calibration import MARGIN, Design, simulated_dice, t_lower
from medlossy.experiments.statistics import Criteria, decide, safe_ratios

DESIGNS = ((3, 1), (3, 3), (1, 1))  # (folds, seeds): the paper's, with repeats, one model


def _differences(design: Design, studies: int, seed: int,
                 shifts: tuple[float, ...] = ()) -> tuple[list[np.ndarray], np.ndarray]:
    reference, compressed, folds = simulated_dice(design, shifts, studies=studies, seed=seed)
    return [dice - reference for dice in compressed], folds


def _cell(design: Design, studies: int, seed: int, criteria: Criteria) -> dict[str, object]:
    """Error rates at the margin and power at 0 for one design."""
    (null,), folds = _differences(design, studies, seed)
    at_margin = decide(null, folds, criteria)
    (harmless,), _ = _differences(design, max(studies // 4, 1000), seed + 1, (0.0,))
    at_zero = decide(harmless, folds, criteria)
    per_case = null.mean(axis=1)
    return {
        "folds x seeds": f"{design.folds} x {design.seeds}", "model_sd": design.model_sd,
        "cases": design.cases, "failing": design.failing,
        "false NI (verdict)": np.mean(at_margin["verdict"] == "non-inferior"),
        "false NI (mean alone)": np.mean(at_margin["ci_low"] > -MARGIN),
        # the former interval: case-only t over seed-averaged cases with one seed (with
        # seeds it was the seed interval, unchanged)
        "former": np.mean(t_lower(per_case) > -MARGIN) if design.seeds == 1 else np.nan,
        "power (verdict)": np.mean(at_zero["verdict"] == "non-inferior"),
        "power (mean alone)": np.mean(at_zero["ci_low"] > -MARGIN),
        "inferior at 0": np.mean(at_zero["verdict"] == "inferior"),
        "detectable margin": float(np.median(at_zero["detectable_margin"])),
        "skewness": float(np.median(stats.skew(per_case, axis=-1))),
        "studies": len(per_case)}


def _fwer(design: Design, studies: int, seed: int, criteria: Criteria) -> dict[str, object]:
    """x2 and x5 harmless, x10 and x20 at the margin, x1 models shared: how often the safe
    ratio reaches x10 or beyond, and how often x5 is found."""
    ratios = (2.0, 5.0, 10.0, 20.0)
    differences, folds = _differences(design, studies, seed, (0.0, 0.0, -MARGIN, -MARGIN))
    rows = []
    for ratio, values in zip(ratios, differences, strict=True):
        decision = decide(values, folds, criteria)
        rows.append(pd.DataFrame({"dataset": np.arange(studies), "class": "mean",
                                  "ratio": ratio, "cases": design.cases,
                                  "verdict": decision["verdict"],
                                  "ci_low": decision["ci_low"]}))
    reached = np.array([s.ratio for s in safe_ratios(pd.concat(rows)).values()])
    return {"folds x seeds": f"{design.folds} x {design.seeds}", "cases": design.cases,
            "model_sd": design.model_sd, "FWER (x10 or beyond)": np.mean(reached >= 10),
            "x5 found": np.mean(reached >= 5), "studies": studies}


def _markdown(table: pd.DataFrame) -> str:
    shown = table.copy()
    for column in shown.columns:
        if column.startswith(("false", "former", "power", "inferior", "FWER", "x5")):
            shown[column] = shown[column].map(lambda v: "" if np.isnan(v) else f"{100 * v:.1f}%")
    shown = shown.round(3)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.to_numpy()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20000,
                        help="simulated studies per cell at the margin (default 20000; "
                             "power cells a quarter, at least 1000)")
    parser.add_argument("--tail-limit", type=float, default=Criteria.tail_limit,
                        help=f"the tail criterion's limit (default {Criteria.tail_limit})")
    arguments = parser.parse_args()
    criteria = Criteria(tail_limit=arguments.tail_limit)
    started = time.process_time()
    print(f"load {os.getloadavg()[0]:.2f}; criteria {criteria}")
    cells = []
    for seed, (folds, seeds) in enumerate(DESIGNS):
        for model_sd in (0.005, 0.01, 0.02):
            for cases in (30, 90):
                cells.append(_cell(Design(cases, folds, seeds, model_sd), arguments.studies,
                                   100 * seed + cases + int(1000 * model_sd), criteria))
        for cases in (10, 30, 90):
            cells.append(_cell(Design(cases, folds, seeds, failing=0.15), arguments.studies,
                               7 + 100 * seed + cases, criteria))
    print("\n## Error at the margin and power\n")
    print(_markdown(pd.DataFrame(cells)))
    fwer = [_fwer(Design(cases, folds, seeds), max(arguments.studies // 4, 1000), cases,
                  criteria)
            for folds, seeds in DESIGNS for cases in (30, 90)]
    print("\n## Fixed sequence\n")
    print(_markdown(pd.DataFrame(fwer)))
    print(f"\nCPU time {time.process_time() - started:.0f} s")


if __name__ == "__main__":
    main()
