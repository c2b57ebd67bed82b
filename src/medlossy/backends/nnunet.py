"""The nnU-Net v2 backend: ``medlossy.nnunet`` (the study's trainer class in a child process).

Options (``[training]`` of a study config): ``configuration`` ("3d_lowres", the paper's;
"3d_fullres" where nnU-Net plans no lowres), ``plans`` ("per-ratio", the paper's, or "x1"),
``validation_iterations`` (nnU-Net's 50), ``test_time_mirroring`` (nnU-Net's true),
``tile_step_size`` (0.5), ``device``, ``preprocessed`` (how nnU-Net's preprocessed training
images are kept: "blosc2", nnU-Net's float32, the default; "lossless" or "xR", 16-bit medlossy
stores read by nnU-Net's own loader), ``preprocessed_codec`` ("htj2k" or "jpeg2k"),
``preprocessed_tile`` (128; 0 = whole slices). The three enter the unit key only when
``preprocessed`` is not "blosc2", so units trained before keep their folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medlossy.backends.base import (
    ModelInfo,
    TrainingBackend,
    TrainRequest,
    Workload,
    check_options,
    register,
)
from medlossy.errors import MedlossyError
from medlossy.nnunet import run
from medlossy.nnunet.storage import BLOSC2, DEFAULT_CODEC, DEFAULT_TILE, parse_storage

OPTIONS = ("configuration", "plans", "validation_iterations", "test_time_mirroring",
           "tile_step_size", "device", "preprocessed", "preprocessed_codec",
           "preprocessed_tile")
DEFAULTS: dict[str, Any] = {"configuration": "3d_lowres", "plans": "per-ratio",
                            "validation_iterations": 50, "test_time_mirroring": True,
                            "tile_step_size": 0.5, "device": "auto",
                            "preprocessed": BLOSC2, "preprocessed_codec": DEFAULT_CODEC,
                            "preprocessed_tile": DEFAULT_TILE}
_STORAGE_OPTIONS = ("preprocessed", "preprocessed_codec", "preprocessed_tile")
#: nnU-Net plans the patch from the data; before planning, dry runs assume its usual
#: abdominal-CT size: batch 2 of 128^3 voxels.
ASSUMED_VOXELS_PER_ITERATION = 2 * 128 ** 3


@register
class NnunetBackend(TrainingBackend):
    """``[training] backend = "nnunet"``: nnU-Net v2 with ``MedlossyTrainer``."""

    name = "nnunet"

    def options(self, request: TrainRequest) -> dict[str, Any]:
        check_options(request.options, OPTIONS, self.name)
        options = {**DEFAULTS, **request.options}
        if options["plans"] not in run.PLANS_MODES:
            raise ValueError(f"plans must be one of {run.PLANS_MODES}, got "
                             f"{options['plans']!r}")
        if options["device"] not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {options['device']!r}")
        if request.epochs < 1 or request.iterations_per_epoch < 1 or \
                int(options["validation_iterations"]) < 1:
            raise ValueError("epochs, iterations and validation iterations must be >= 1")
        if not 0 < float(options["tile_step_size"]) <= 1:
            raise ValueError("tile_step_size must be in (0, 1]")
        parse_storage(options["preprocessed"], options["preprocessed_codec"],
                      options["preprocessed_tile"])
        return options

    def recipe(self, request: TrainRequest) -> dict[str, Any]:
        if request.mixed_datasets:
            raise ValueError("mixed-ratio models are trained by the built-in backend only "
                             "(nnU-Net preprocesses one dataset per model)")
        options = self.options(request)
        if options["preprocessed"] == BLOSC2:  # nnU-Net's own files: the key units had before
            options = {k: v for k, v in options.items() if k not in _STORAGE_OPTIONS}
        recipe = {"backend": self.name, "trainer": run.TRAINER, "fold": request.fold,
                  "folds": request.folds, "seed": request.seed,
                  "train_fraction": request.train_fraction, "epochs": request.epochs,
                  "iterations_per_epoch": request.iterations_per_epoch, **options}
        if options["plans"] == "x1" and request.reference_dataset is not None:
            recipe["plans_from"] = Path(request.reference_dataset).name
        return recipe

    def train(self, dataset: Path, out: Path, request: TrainRequest, *,
              cache: Path | None = None, show_progress: bool = False,
              replace: bool = False) -> Path:
        options = self.options(request)
        return run.train_nnunet(
            dataset, out, configuration=options["configuration"], fold=request.fold,
            folds=request.folds, epochs=request.epochs,
            iterations_per_epoch=request.iterations_per_epoch,
            validation_iterations=int(options["validation_iterations"]),
            train_fraction=request.train_fraction, plans=options["plans"],
            reference=request.reference_dataset,
            test_time_mirroring=bool(options["test_time_mirroring"]),
            tile_step_size=float(options["tile_step_size"]), cache=cache,
            device=options["device"], preprocessed=options["preprocessed"],
            preprocessed_codec=options["preprocessed_codec"],
            preprocessed_tile=int(options["preprocessed_tile"]), replace=replace,
            quiet=not show_progress)

    def predict(self, model: Path, dataset: Path, out: Path, *, cases: str = "test",
                device: str = "auto", show_progress: bool = False) -> Path:
        return run.predict_nnunet(model, dataset, out, cases=cases, device=device,
                                  quiet=not show_progress)

    def describe(self, model: Path) -> ModelInfo:
        description = run.read_model(model)
        training = description.get("training", {})
        ratio = description.get("ratio")
        return ModelInfo(
            backend=self.name, ratio=None if ratio is None else float(ratio),
            fold=int(description["fold"]), train_cases=list(description["train_cases"]),
            test_cases=list(description["test_cases"]),
            epochs=int(training.get("epochs", 0)),
            iterations_per_epoch=int(description["iterations_per_epoch"]),
            seconds=training.get("seconds_this_run"), device=training.get("device"))

    def owns(self, model: Path) -> bool:
        path = Path(model) / run.MODEL_FILE
        try:
            return json.loads(path.read_text()).get("backend") == "nnunet"
        except (OSError, json.JSONDecodeError):
            return False

    def is_trained(self, model: Path) -> bool:
        try:
            return run.read_model(model).get("status") == "trained" and \
                run.checkpoint(model).exists()
        except MedlossyError:  # an unreadable folder is simply not trained
            return False

    def workload(self, request: TrainRequest) -> Workload:
        self.options(request)
        # checkpoint_final + checkpoint_best of nnU-Net's default 3D U-Net (about 31 M
        # parameters, weights and SGD momentum in float32); preprocessed float32 data.
        return Workload(request.epochs * request.iterations_per_epoch,
                        ASSUMED_VOXELS_PER_ITERATION, checkpoint_bytes=0.5e9,
                        preprocessed_share=2.0,
                        note="patch assumed 2 x 128^3 (nnU-Net plans it from the data)")
