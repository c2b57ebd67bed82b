"""The demo's study recipe: what the built-in backend makes of it, on a small phantom."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from medlossy.data.phantom import LABELS, generate_case
from medlossy.experiments.config import DatasetEntry, StudyConfig
from medlossy.experiments.demo import (
    DEMO_BUDGET_FRACTIONS,
    DEMO_EXPERIMENTS,
    DEMO_MIXED,
    DEMO_PHANTOM,
    DEMO_TRAIN_RATIOS,
    DEMO_TRAINING,
)


def test_the_backend_accepts_the_demo_recipe_as_written(tmp_path: Path) -> None:
    config = StudyConfig(datasets=(DatasetEntry(tmp_path, train=True, synthetic=True),),
                         train_ratios=DEMO_TRAIN_RATIOS, budget_fractions=DEMO_BUDGET_FRACTIONS,
                         training=dict(DEMO_TRAINING))
    train = config.backend.config(config.train_request(0))

    assert train.mirror_axes == () and train.sampling == "classes"
    assert train.optimizer == "adamw" and train.filters[0] >= 16
    # x1, x20, one few-shot and one compressed budget arm, and the mixed-ratio model's
    # continuation of the x1 model: the demo's 15 minutes hold about 2,400 iterations on two
    # cores.
    models = len(set(DEMO_TRAIN_RATIOS) | {1}) + 2 * sum(f < 1 for f in DEMO_BUDGET_FRACTIONS)
    mixed = DEMO_MIXED["mixed_epochs"] if "mixed" in DEMO_EXPERIMENTS else 0
    assert DEMO_MIXED["mixed_start"] == "x1"
    assert (models * train.epochs + mixed) * train.iterations_per_epoch <= 5 * 480


def test_demo_phantom_vessels_and_kidneys_stand_out_from_soft_tissue() -> None:
    case = generate_case(0, replace(DEMO_PHANTOM, mean_jitter_hu=0.0))
    image, labels = case.image.array, case.labels.array
    liver = image[labels == LABELS["liver"]].mean()
    for name in ("aorta", "inferior_vena_cava", "kidney_left", "kidney_right", "spleen"):
        assert np.median(image[labels == LABELS[name]]) > liver + 15, name


def test_the_demo_runs_deepbet_on_the_real_brain_or_says_why_not(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """The brain MR and its pretrained network join the demo when both can be had; a missing
    extra or a failed package download leaves them out with a note, not a crash."""
    import importlib.util

    from medlossy.errors import MedlossyError
    from medlossy.experiments import demo

    fetched = tmp_path / "data" / "Dataset902_BrainMR"
    monkeypatch.setattr(demo, "prepare_brain_mr", lambda out, cache, labels: fetched)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: object() if name == "deepbet" else real_find_spec(name))
    entries, note = demo._brain_datasets(tmp_path, None)
    assert [(e.path, e.train, e.body_region) for e in entries] == [(fetched, False, "head")]
    assert "deepbet" in note and "REAL" in note

    def refuse(out, cache, labels):
        raise MedlossyError("mricron-data.deb", "apt-get is not available")

    monkeypatch.setattr(demo, "prepare_brain_mr", refuse)
    entries, note = demo._brain_datasets(tmp_path, None)
    assert entries == [] and "left out" in note and "apt-get is not available" in note

    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name == "deepbet" else real_find_spec(name))
    entries, note = demo._brain_datasets(tmp_path, None)
    assert entries == [] and "medlossy[deepbet]" in note
