"""The built-in demo study: real CT/MR for image quality, a synthetic cohort for training.

Sized to finish in about ten minutes on two CPU cores: the phantom volumes are small and
trained at a coarse 4 mm, the network small, four models (x1, x20 and the two storage-budget
arms) each train 480 iterations; the model for every ratio continues the x1 model for 160
more (see ``DEMO_MIXED``). The x1 model and the mixed-ratio model are tested at every ratio,
so the far end (x50-x100) is shown without a model of its own. The report says that such a
run cannot support conclusions.

What makes 480 iterations enough for every class at x1 (measured, see BENCHMARKS.md "The demo
study"): a contrast-enhanced (portal-venous) phantom, whose vessels, kidneys and spleen stand
out as on the abdominal CTs segmentation studies use; no mirroring (a left-right mirror swaps
the two kidneys and aorta/IVC); patches centred on each class in turn; AdamW; 16 filters at
full resolution (8 could not separate nine classes).

A pretrained network on real data: deepbet (brain extraction, the ``deepbet`` extra) on a real
T1 that a package registry ships (Colin27, Debian's mricron-data), at every ratio, against its
own x1 mask and FSL BET's. Where the extra or Debian's apt-get is missing, the demo runs
without that part and says why.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from medlossy.data.brain import prepare_brain_mr
from medlossy.data.demo import prepare_demo
from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.errors import MedlossyError
from medlossy.experiments.config import DatasetEntry, StudyConfig, validate

# 120x120x48 voxels of 3.2 x 3.2 x 4 mm (training resamples them to 4 mm): every slice's
# JPEG 2000 header (about 110 bytes) and the store's metadata count in the footprint, so
# smaller slices lose far more than real CT at high ratios (96x96 of 4 mm: 36.0 dB at x50
# against the demo CTs' 38.9, x100 out of reach). Measured in BENCHMARKS.md "The demo study".
DEMO_PHANTOM = PhantomConfig(shape=(120, 120, 48), spacing=(3.2, 3.2, 4.0), seed=0,
                             phase="portal-venous")
DEMO_PHANTOM_CASES = 12
DEMO_TRAINING = {
    "preset": "lowres", "target_spacing": [4.0, 4.0, 4.0], "patch_size": [48, 48, 32],
    "filters": [16, 32, 64, 128], "epochs": 12, "iterations_per_epoch": 40, "batch_size": 2,
    "optimizer": "adamw", "learning_rate": 3e-3, "weight_decay": 1e-4, "mirror_axes": [],
    "sampling": "classes", "foreground_fraction": 0.9,
}
#: Fewer, longer-trained models: x1 and x20 (the paper's "up to x20"); the far end is tested
#: with the x1 model and the mixed-ratio model (a model at x100 would cost another 90 s).
DEMO_TRAIN_RATIOS = (1, 20)
DEMO_BUDGET_FRACTIONS = (0.1, 1.0)
#: The model for every ratio continues the x1 model (160 iterations, a third of a model)
#: with two patches in three from x1, the third spread equally over x5-x100: trained from
#: scratch on every ratio drawn equally often it lost 0.06 Dice at x1-x20 (on the x50-x100
#: patches the vena cava's contrast to the liver is gone, and they pull the clean-data
#: decision); continued on every ratio equally often it lost 0.02, with half from x1 0.008.
#: x2 is left out: the phantom is stored losslessly at x2, the x1 patches again. Measured in
#: BENCHMARKS.md "The demo study".
DEMO_MIXED = {"mixed_ratios": (1, 5, 10, 20, 50, 70, 100),
              "mixed_weights": (12, 1, 1, 1, 1, 1, 1), "mixed_start": "x1", "mixed_epochs": 4}
DEMO_EXPERIMENTS = ("quality", "train", "cross", "pretrained", "budget", "mixed")
NOTES = ("Demo: the training experiments run on a SYNTHETIC phantom cohort (12 contrast-"
         "enhanced abdominal CTs made by medlossy, 120x120x48 voxels of 3.2 x 3.2 x 4 mm, "
         "trained at 4 mm; enhancement from "
         "typical portal-venous values, not measured) since no package ships enough labelled "
         "CTs; the real TotalSegmentator CTs and MR (labels are model predictions) are used for "
         "image quality only.")


#: The pretrained network the demo runs on the real brain MR (an optional extra).
DEMO_PRETRAINED = {"model": "deepbet"}


def _brain_datasets(out: Path, cache: str | None) -> tuple[list[DatasetEntry], str]:
    """The real brain MR for the pretrained network, or none and the note saying why."""
    if importlib.util.find_spec("deepbet") is None:
        return [], ("The pretrained brain-extraction step was left out: deepbet is not "
                    "installed (pip install 'medlossy[deepbet]'; `make demo` installs it).")
    try:
        brain = prepare_brain_mr(out / "data", cache=cache, labels=True)
    except MedlossyError as error:
        return [], f"The pretrained brain-extraction step was left out: {error}."
    return [DatasetEntry(brain, train=False, body_region="head")], (
        "deepbet (a pretrained brain-extraction network) runs on a REAL T1 (Colin27, from "
        "Debian's mricron-data) at every ratio; its label is FSL BET's mask, not a manual one.")


def demo_config(out: Path, cache: str | None = None, show_progress: bool = False,
                ) -> tuple[StudyConfig, str]:
    """Fetch and generate the demo data under ``out/data``; the demo's study config and the
    notes its report carries."""
    real = prepare_demo(out / "data", cache=cache, show_progress=show_progress)
    phantom = write_phantom_dataset(out / "data", DEMO_PHANTOM_CASES, DEMO_PHANTOM,
                                    show_progress=show_progress)
    brain, brain_note = _brain_datasets(out, cache)
    config = StudyConfig(
        datasets=(DatasetEntry(phantom, train=True, synthetic=True, body_region="abdomen"),
                  *(DatasetEntry(folder, train=False, body_region="abdomen")
                    for folder in real), *brain),
        experiments=DEMO_EXPERIMENTS,
        train_ratios=DEMO_TRAIN_RATIOS, folds=3, train_folds=(0,), seed=0,
        budget_fractions=DEMO_BUDGET_FRACTIONS, margin=0.01, training=dict(DEMO_TRAINING),
        **DEMO_MIXED,
        pretrained=dict(DEMO_PRETRAINED) if brain else {},
    )
    return validate(config, "built-in demo config"), f"{NOTES} {brain_note}"
