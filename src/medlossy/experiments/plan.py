"""``medlossy study CONFIG --plan``: the power of the configured design, before training.

Data flow: the config (train_folds, seeds, margin, tail criterion, assumed model sd) and each
training dataset's labelled cases (``dryrun.dataset_size``: the data on disk, else the
config's ``cases`` hint) -> the test cases the trained folds hold -> simulated per-case Dice
tables of that design at a true effect (``calibration.simulated_dice``) -> the study's own
decision (``statistics.decide``) -> the share of studies ending in each verdict. So users
size cases, folds and seeds before paying for the training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medlossy.experiments.calibration import SPREAD, Design, simulated_dice
from medlossy.experiments.config import StudyConfig
from medlossy.experiments.dryrun import dataset_size
from medlossy.experiments.statistics import Criteria, decide

#: Simulated studies per design: a share's standard error is at most 1.1 points.
STUDIES = 2000


def _shares(design: Design, criteria: Criteria, studies: int, seed: int,
            ) -> dict[str, float]:
    reference, compressed, folds = simulated_dice(design, studies=studies, seed=seed)
    decision = decide(compressed[0] - reference, folds, criteria)
    verdicts = decision["verdict"]
    return {"non_inferior": float(np.mean(verdicts == "non-inferior")),
            "inconclusive": float(np.mean(verdicts == "inconclusive")),
            "inferior": float(np.mean(verdicts == "inferior")),
            "detectable_margin": float(np.median(decision["detectable_margin"]))}


def plan_power(config: StudyConfig, *, effect: float = 0.0, model_sd: float | None = None,
               case_sd: float = SPREAD, studies: int = STUDIES, seed: int = 0,
               ) -> pd.DataFrame:
    """Per training dataset: the verdicts' shares when every compressed ratio's true mean
    Dice difference is ``effect`` (model-to-model sd ``model_sd``, default the config's
    ``assumed_model_sd``; per-case sd ``case_sd``), and the false non-inferiority at the
    margin for the same design."""
    model_sd = config.assumed_model_sd if model_sd is None else model_sd
    if not -1 <= effect <= 1:
        raise ValueError(f"--effect is a mean Dice difference, in [-1, 1]; got {effect:g}")
    for option, value in (("--model-sd", model_sd), ("--case-sd", case_sd)):
        if not 0 <= value < 1:
            raise ValueError(f"{option} is a standard deviation of Dice, in [0, 1); got "
                             f"{value:g}")
    if not any(e.train for e in config.datasets) or not (
            {"train", "cross", "pretrained", "budget"} & set(config.experiments)):
        raise ValueError("nothing to plan: no dataset is trained (train = true and a "
                         "training experiment), so there is no design to simulate")
    criteria = Criteria(config.margin, 0.95, config.tail_drop, config.tail_limit,
                        config.assumed_model_sd)
    rows = []
    for entry in (e for e in config.datasets if e.train):
        size = dataset_size(entry.path, entry.cases, entry.voxels_per_case)
        cases = round(size.cases * len(config.train_folds) / config.folds)
        if cases < 2:
            rows.append({"dataset": size.name, "test_cases": cases})
            continue
        design = Design(cases, len(config.train_folds), len(config.training_seeds),
                        model_sd=model_sd, case_sd=case_sd, difference=effect)
        shares = _shares(design, criteria, studies, seed)
        at_margin = _shares(Design(cases, design.folds, design.seeds, model_sd=model_sd,
                                   case_sd=case_sd, difference=-config.margin),
                            criteria, studies, seed + 1)
        rows.append({"dataset": size.name, "test_cases": cases,
                     "folds_x_seeds": f"{design.folds} x {design.seeds}",
                     "effect": effect, "model_sd": model_sd, "case_sd": case_sd, **shares,
                     "false_non_inferior_at_margin": at_margin["non_inferior"]})
    return pd.DataFrame(rows)


def format_plan(table: pd.DataFrame, config: StudyConfig, studies: int = STUDIES) -> str:
    from medlossy.tables import markdown_table

    notes = [
        f"Shares of {studies} simulated studies of this design (per ratio and class) ending "
        "in each verdict when the true mean Dice difference is 'effect'; 'non_inferior' is "
        "the power. Margin "
        f"{config.margin:g}; tail: fewer than {config.tail_limit:.0%} of cases losing more "
        f"than {config.tail_drop:g} Dice.",
        "'detectable_margin': the smallest margin shown with 80% power at effect 0 "
        "(median over the simulated studies).",
        "More test cases narrow the case term and the tail bound; more trained folds or "
        "seeds narrow the training-noise term (one fold and one seed can only assume it).",
    ]
    return "\n\n".join(["## Power of the design", markdown_table(table.round(4)),
                        "## Notes", "\n".join(f"- {n}" for n in notes)]) + "\n"
