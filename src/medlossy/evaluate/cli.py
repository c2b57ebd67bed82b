"""``medlossy evaluate`` and ``medlossy evaluate-pretrained``: one thin function per command."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.errors import MedlossyError


def _fold(text: str) -> int | str:
    return "all" if text == "all" else int(text)


def _write_table(table: pd.DataFrame, out: str) -> None:
    with atomic_output(Path(out)) as temporary:
        table.to_csv(temporary, index=False)


def _print_summary(table: pd.DataFrame) -> None:
    from medlossy.evaluate.evaluate import summary

    rows = summary(table, "dice")
    several = rows[["ratio_train", "ratio_test", "fold"]].drop_duplicates().shape[0] > 1
    print("mean Dice per class (over cases; both-empty cases excluded):")
    for _, row in rows.iterrows():
        prefix = ""
        if several:
            train = "pretrained" if pd.isna(row["ratio_train"]) else f"x{row['ratio_train']:g}"
            prefix = f"train {train} test x{row['ratio_test']:g}  "
        value = "nan" if math.isnan(row["mean"]) else f"{row['mean']:.4f}"
        print(f"  {prefix}{row['class']:<24} {value}  ({row['cases']} cases)")


def evaluate(arguments: argparse.Namespace) -> None:
    from medlossy.datasets.sweep import resolve_dataset_folder
    from medlossy.evaluate.evaluate import evaluate_predictions

    # SWEEP/r20 as train and predict take it: a sweep's ids are not known in advance
    reference = resolve_dataset_folder(arguments.reference)
    table = evaluate_predictions(
        arguments.predictions, reference, ratio_train=arguments.ratio_train,
        ratio_test=arguments.ratio_test, fold=arguments.fold, hd95=arguments.hd95,
        only_predicted=arguments.only_predicted)
    _write_table(table, arguments.out)
    _print_summary(table)
    print(f"{arguments.out}: {len(table)} rows", file=sys.stderr)


def evaluate_pretrained(arguments: argparse.Namespace) -> None:
    from medlossy.pretrained.evaluate import evaluate_pretrained as run
    from medlossy.pretrained.swin_unetr import SwinUNETRSetup

    if arguments.roi < 1 or arguments.feature_size < 1 or arguments.out_channels < 2:
        raise MedlossyError(None, "--roi and --feature-size must be positive and "
                                  "--out-channels at least 2")
    setup = SwinUNETRSetup(feature_size=arguments.feature_size,
                           out_channels=arguments.out_channels, roi=(arguments.roi,) * 3)
    table = run(arguments.checkpoint, arguments.sweep, arch=arguments.arch,
                label_map=arguments.label_map, setup=setup, device=arguments.device,
                hd95=arguments.hd95, predictions=arguments.predictions,
                show_progress=not arguments.quiet)
    _write_table(table, arguments.out)
    _print_summary(table)
    print(f"{arguments.out}: {len(table)} rows", file=sys.stderr)


def add_evaluate_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` and ``evaluate-pretrained`` on the top-level subparsers."""
    nan = math.nan
    parser = sub.add_parser(
        "evaluate", help="Dice (and HD95) of predicted label maps against a dataset's labels",
        description="Compare PREDICTIONS/CASE.nii.gz with REFERENCE/labelsTr/CASE.nii.gz: Dice "
                    "per case and class and the mean over classes, as a tidy CSV (case, class, "
                    "ratio_train, ratio_test, fold, metric, value). A class empty in both "
                    "counts as NaN and is left out of means; see docs/evaluation.md.")
    parser.add_argument("predictions", help="folder of predicted label maps")
    parser.add_argument("reference", help="nnU-Net raw dataset with the true labels (labelsTr)")
    parser.add_argument("--out", required=True, help="CSV to write (e.g. dice.csv)")
    parser.add_argument("--ratio-train", type=float, default=nan,
                        help="ratio the model was trained at (recorded in the table)")
    parser.add_argument("--ratio-test", type=float, default=nan,
                        help="ratio of the images it predicted (recorded in the table)")
    parser.add_argument("--fold", type=_fold, default=nan, help="cross-validation fold")
    parser.add_argument("--hd95", action="store_true", help="also HD95 in mm (needs MONAI)")
    parser.add_argument("--only-predicted", action="store_true",
                        help="evaluate the labelled cases that have a prediction (one fold's "
                             "validation cases) instead of requiring every case")
    parser.set_defaults(handler=evaluate)

    pretrained = sub.add_parser(
        "evaluate-pretrained", help="evaluate a pretrained checkpoint on every ratio of a sweep",
        description="Predict every labelled case of every ratio dataset of a sweep with a "
                    "pretrained network and evaluate against the exact labels. swin_unetr: "
                    "a MONAI Swin UNETR checkpoint with the BTCV setup (RAS, 1.5x1.5x2.0 mm, "
                    "HU -175..250 -> [0, 1], sliding window). nnunet: a model folder written "
                    "by `medlossy train --backend nnunet`.")
    pretrained.add_argument("checkpoint", help="checkpoint file (swin_unetr) or model folder "
                                               "(nnunet)")
    pretrained.add_argument("sweep", help="sweep folder (medlossy dataset compress --out)")
    pretrained.add_argument("--arch", choices=("swin_unetr", "nnunet"), required=True,
                            help="the checkpoint's architecture")
    pretrained.add_argument("--label-map", default=None,
                            help='JSON {"model class id": "dataset class id"}; unmapped model '
                                 "classes become background (default: identity)")
    pretrained.add_argument("--out", required=True, help="CSV to write (e.g. results.csv)")
    pretrained.add_argument("--roi", type=int, default=96, help="sliding-window size")
    pretrained.add_argument("--feature-size", type=int, default=48, help="Swin UNETR feature size")
    pretrained.add_argument("--out-channels", type=int, default=14,
                            help="classes the network predicts, background included")
    pretrained.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                            help="where to predict (auto: a GPU when there is one)")
    pretrained.add_argument("--hd95", action="store_true", help="also HD95 in mm")
    pretrained.add_argument("--predictions", default=None,
                            help="keep the predicted label maps here (default: discarded)")
    pretrained.add_argument("--quiet", action="store_true", help="no progress bars")
    pretrained.set_defaults(handler=evaluate_pretrained)
