"""Experiment 1 of the study: image quality (PSNR) of each dataset at each ratio.

It is the dataset sweep's manifest: every image compressed at every ratio (with resumable,
checksummed outputs), PSNR with r = 4096 for CT and max - min over the dataset for MR.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medlossy.datasets.nnunet_raw import RawDataset
from medlossy.datasets.sweep import STUDY_RATIOS, plan_sweep, run_sweep

__all__ = ["STUDY_RATIOS", "run_quality"]


def run_quality(dataset: RawDataset, sweep_folder: Path, ratios: Sequence[float] = STUDY_RATIOS,
                *, base_id: int, workers: int | None = None, scheduler: str | None = None,
                show_progress: bool = False, codec: str | None = None,
                name: str | None = None, tile: int | None = None,
                origin: Path | None = None) -> pd.DataFrame:
    """Sweep ``dataset`` into ``sweep_folder`` with ``codec`` at the lossy ratios (None:
    JPEG 2000); one row per image and ratio, its ``dataset`` column ``name`` (default: the
    dataset's name) and ``study_codec`` the codec compared. ``tile``: stores in tiles of
    this side. ``origin``: the dataset ``dataset`` was cropped from (sweep.json's "input", so
    that the sweep stays the same source's when the study folder holding the copy moves).

    Lossless rows (no error at all) get an infinite PSNR. A ratio out of the codec's reach
    on some image of the dataset gets no rows (sweep.json's "out_of_reach" says why).
    """
    plan = plan_sweep(dataset, sweep_folder, ratios, base_id=base_id, codec=codec, tile=tile,
                      origin=origin)
    manifest = run_sweep(plan, workers=workers, scheduler=scheduler, drop_out_of_reach=True,
                         show_progress=show_progress)
    manifest.insert(0, "dataset", name or dataset.name)
    manifest.insert(1, "study_codec", codec or "jpeg2k")
    manifest["psnr_db"] = manifest["psnr_db"].astype(float).fillna(np.inf)
    return manifest
