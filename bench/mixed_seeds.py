"""The demo's model for every ratio against the x1 and x20 models, over several seeds.

Usage (about 25 minutes a seed-triple on 2 idle cores; a rerun reuses what --out holds):
    .venv/bin/python bench/mixed_seeds.py [--out bench/out/mixed_seeds] [--seeds 0,1,2]

Data flow: the demo's phantom cohort (``DEMO_PHANTOM``, 12 SYNTHETIC cases) -> a study with
the demo's recipe, ratios and mixed-model settings (``DEMO_TRAINING``, ``DEMO_MIXED``), fold
0 of 3, one x1, one x20 and one mixed model per seed -> report section 3b (the differences
paired over test cases and seeds) and, on stdout, each seed's mean Dice per model and test
ratio. One seed is the demo's single model per ratio; the seeds show its training noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from medlossy.data.phantom import write_phantom_dataset
from medlossy.experiments.config import DatasetEntry, StudyConfig, validate
from medlossy.experiments.demo import (
    DEMO_MIXED,
    DEMO_PHANTOM,
    DEMO_PHANTOM_CASES,
    DEMO_TRAIN_RATIOS,
    DEMO_TRAINING,
)
from medlossy.experiments.statistics import compare_mixed
from medlossy.experiments.study import run_study
from medlossy.tables import markdown_table


def per_seed_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice (over test cases and classes) per model, test ratio and seed."""
    rows = results[results["experiment"].isin(["train", "pretrained", "mixed"])]
    model = rows["experiment"].where(rows["experiment"] == "mixed",
                                     "x" + rows["ratio_train"].map("{:g}".format) + " model")
    per_case = rows.assign(model=model).groupby(
        ["model", "ratio_test", "train_seed", "case"])["value"].mean()
    table = per_case.groupby(["model", "ratio_test", "train_seed"]).mean() \
        .unstack("train_seed").round(4)
    table.columns = [f"seed {seed:g}" for seed in table.columns]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/mixed_seeds"))
    parser.add_argument("--seeds", default="0,1,2")
    arguments = parser.parse_args()
    seeds = tuple(int(seed) for seed in arguments.seeds.split(","))
    phantom = write_phantom_dataset(arguments.out / "data", DEMO_PHANTOM_CASES, DEMO_PHANTOM)
    config = validate(StudyConfig(
        datasets=(DatasetEntry(phantom, train=True, synthetic=True, body_region="abdomen"),),
        experiments=("train", "pretrained", "mixed"), train_ratios=DEMO_TRAIN_RATIOS,
        folds=3, train_folds=(0,), seeds=seeds, margin=0.01, training=dict(DEMO_TRAINING),
        **DEMO_MIXED), "bench/mixed_seeds.py")
    run_study(config, arguments.out / "study", workers=1)
    results = pd.read_csv(arguments.out / "study" / "results.csv", dtype={"case": str})
    print(f"## Mean Dice per seed (fold 0, {results['case'].nunique()} test cases)\n")
    print(markdown_table(per_seed_table(results).reset_index()))
    print(f"\n## Mixed minus the other models, paired over cases and seeds {seeds}\n")
    print(markdown_table(compare_mixed(results).round(4)))


if __name__ == "__main__":
    main()
