"""Segmentation quality: Dice (and HD95) per case and class, as a tidy table."""

from medlossy.evaluate.dice import dice_per_class, hd95_per_class, mean_dice
from medlossy.evaluate.evaluate import COLUMNS, evaluate_case, evaluate_predictions, summary

__all__ = ["COLUMNS", "dice_per_class", "evaluate_case", "evaluate_predictions",
           "hd95_per_class", "mean_dice", "summary"]
