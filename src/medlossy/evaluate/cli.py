"""``medlossy evaluate`` and ``medlossy evaluate-pretrained``: one thin function per command."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from medlossy.atomic import atomic_output
from medlossy.errors import MedlossyError
from medlossy.store.remote import folder_only


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
    predictions = folder_only(arguments.predictions, "a folder of predictions",
                              "its label maps are listed and read whole")
    table = evaluate_predictions(
        predictions, reference, ratio_train=arguments.ratio_train,
        ratio_test=arguments.ratio_test, fold=arguments.fold, hd95=arguments.hd95,
        only_predicted=arguments.only_predicted)
    _write_table(table, arguments.out)
    _print_summary(table)
    print(f"{arguments.out}: {len(table)} rows", file=sys.stderr)


def _print_agreement(table: pd.DataFrame) -> None:
    from medlossy.pretrained.agreement import summary

    rows = summary(table)
    several = rows.groupby(["model", "codec", "reference"])["class"].nunique() > 2
    print("model, codec, reference, ratio, class: mean Dice, HD95 mm, |volume difference| mL "
          "(over cases)")
    for _, row in rows.iterrows():
        if row["class"] == "mean" and not several[(row["model"], row["codec"],
                                                   row["reference"])]:
            continue  # one class: its mean is the class itself
        print(f"  {row['model']:<10} {row['codec']:<7} {row['reference']:<12} "
              f"x{row['ratio']:<5g} {row['class']:<14} {row['dice']:.4f}  "
              f"{row['hd95_mm']:7.2f}  {row['abs_volume_difference_ml']:8.2f}  "
              f"({row['cases']} cases)")


def evaluate_pretrained(arguments: argparse.Namespace) -> None:
    if arguments.arch is not None:
        _evaluate_checkpoint(arguments)
        return
    from medlossy.pretrained import get_model
    from medlossy.pretrained.agreement import evaluate_agreement, read_class_map

    if Path(arguments.model).is_file():
        raise MedlossyError(arguments.model, "a checkpoint file needs --arch swin_unetr")
    models = [get_model(spec, device=arguments.device)
              for spec in [arguments.model, *arguments.compare]]
    class_map = None if arguments.label_map is None else read_class_map(arguments.label_map)
    table = evaluate_agreement(models, arguments.sweep, class_map=class_map,
                               hd95=not arguments.no_hd95, predictions=arguments.predictions,
                               show_progress=not arguments.quiet)
    _write_table(table, arguments.out)
    _print_agreement(table)
    print(f"{arguments.out}: {len(table)} rows", file=sys.stderr)


def _evaluate_checkpoint(arguments: argparse.Namespace) -> None:
    from medlossy.pretrained.evaluate import evaluate_pretrained as run
    from medlossy.pretrained.swin_unetr import SwinUNETRSetup

    if arguments.roi < 1 or arguments.feature_size < 1 or arguments.out_channels < 2:
        raise MedlossyError(None, "--roi and --feature-size must be positive and "
                                  "--out-channels at least 2")
    setup = SwinUNETRSetup(feature_size=arguments.feature_size,
                           out_channels=arguments.out_channels, roi=(arguments.roi,) * 3)
    table = run(arguments.model, arguments.sweep, arch=arguments.arch,
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
        "evaluate-pretrained", help="a pretrained model on every ratio of a sweep: agreement "
                                    "with its own x1 prediction (and the labels, if any)",
        description="Predict every case of every ratio of a sweep with a pretrained model and "
                    "compare each prediction with the model's own prediction on the lossless "
                    "(x1) images, and with the labels where the sweep has them: per case, "
                    "ratio and class, Dice, HD95 (mm) and the volume (mL) and its difference. "
                    "MODEL: deepbet or hd-bet (brain extraction for T1 / T1, T1c, T2, FLAIR "
                    "MR; optional extras medlossy[deepbet], medlossy[hdbet]; hd-bet runs its "
                    "fast mode: one network, no test-time mirroring), or a trained nnU-Net v2 "
                    "model folder (one fold, no mirroring). A model refuses images it was not "
                    "made for. With --arch: a Swin UNETR checkpoint (BTCV setup) or a "
                    "medlossy nnU-Net model folder, evaluated against the labels as before "
                    "(see docs/evaluation.md).")
    pretrained.add_argument("model", help="deepbet, hd-bet, an nnU-Net model folder, or with "
                                          "--arch a checkpoint file / medlossy model folder")
    pretrained.add_argument("sweep", help="sweep folder (medlossy dataset compress --out)")
    pretrained.add_argument("--compare", action="append", default=[], metavar="MODEL",
                            help="another model of the same task: also run it and report the "
                                 "two models' disagreement at x1 (repeatable; default: none)")
    pretrained.add_argument("--arch", choices=("swin_unetr", "nnunet"), default=None,
                            help="evaluate a checkpoint of this architecture against the "
                                 "labels instead (default: MODEL is a plug-in)")
    pretrained.add_argument("--label-map", default=None,
                            help='JSON {"model class": "dataset class"} by name where they '
                                 'differ (with --arch: {"model class id": "dataset class id"}; '
                                 "default: classes matched by name / identity)")
    pretrained.add_argument("--out", required=True, help="CSV to write (e.g. agreement.csv)")
    pretrained.add_argument("--roi", type=int, default=96,
                            help="sliding-window size (--arch swin_unetr)")
    pretrained.add_argument("--feature-size", type=int, default=48,
                            help="Swin UNETR feature size")
    pretrained.add_argument("--out-channels", type=int, default=14,
                            help="classes the Swin UNETR predicts, background included")
    pretrained.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                            help="where to predict (auto: a GPU when there is one)")
    pretrained.add_argument("--hd95", action="store_true",
                            help="with --arch: also HD95 in mm (the agreement always has it)")
    pretrained.add_argument("--no-hd95", action="store_true",
                            help="agreement without HD95 (faster; default: with)")
    pretrained.add_argument("--predictions", default=None,
                            help="keep the predicted label maps here, per model and ratio, and "
                                 "reuse those already there (default: discarded)")
    pretrained.add_argument("--quiet", action="store_true", help="no progress bars")
    pretrained.set_defaults(handler=evaluate_pretrained)
