"""The built-in backend: MONAI's DynUNet trained by ``medlossy.train`` (CPU or one GPU)."""

from __future__ import annotations

import json
import math
from dataclasses import fields
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
from medlossy.train.config import TrainConfig

_STUDY_FIELDS = {"fold", "folds", "seed", "train_fraction", "epochs", "iterations_per_epoch",
                 "extra"}
OPTIONS = tuple(f.name for f in fields(TrainConfig) if f.name not in _STUDY_FIELDS)


@register
class BuiltinBackend(TrainingBackend):
    """``[training] backend = "builtin"``: options are :class:`TrainConfig`'s fields."""

    name = "builtin"

    def config(self, request: TrainRequest) -> TrainConfig:
        options: dict[str, Any] = dict(request.options)
        check_options(options, OPTIONS, self.name)
        for key in ("patch_size", "target_spacing", "filters", "mirror_axes"):
            if key in options:
                options[key] = tuple(options[key])
        return TrainConfig.from_preset(
            options.pop("preset", "lowres"), fold=request.fold, folds=request.folds,
            seed=request.seed, train_fraction=request.train_fraction, epochs=request.epochs,
            iterations_per_epoch=request.iterations_per_epoch, **options)

    def recipe(self, request: TrainRequest) -> dict[str, Any]:
        return self.config(request).recipe()

    def train(self, dataset: Path, out: Path, request: TrainRequest, *,
              cache: Path | None = None, show_progress: bool = False,
              replace: bool = False) -> Path:
        from medlossy.train.loop import train_model

        return train_model(dataset, out, self.config(request), mixed=request.mixed_datasets,
                           mixed_weights=request.mixed_weights or None,
                           start_from=request.start_from, show_progress=show_progress,
                           replace=replace)

    def predict(self, model: Path, dataset: Path, out: Path, *, cases: str = "test",
                device: str = "auto", show_progress: bool = False) -> Path:
        from medlossy.train.inference import predict_dataset

        predict_dataset(model, dataset, out, cases=cases, device=device,
                        show_progress=show_progress)
        return Path(out)

    def describe(self, model: Path) -> ModelInfo:
        from medlossy.train.loop import DESCRIPTION_FILE

        path = Path(model) / DESCRIPTION_FILE
        try:
            description = json.loads(path.read_text())
        except FileNotFoundError:
            raise MedlossyError(model, f"not a trained model ({DESCRIPTION_FILE} missing)"
                                ) from None
        except json.JSONDecodeError as error:
            raise MedlossyError(path, f"not valid JSON ({error})") from None
        trained_on, config = description["trained_on"], description["config"]
        training = description.get("training", {})
        return ModelInfo(
            backend=self.name, ratio=trained_on.get("ratio"), fold=int(trained_on["fold"]),
            train_cases=list(trained_on["train_cases"]),
            test_cases=list(trained_on["test_cases"]),
            epochs=len(training.get("history", [])) or int(config["epochs"]),
            iterations_per_epoch=int(config["iterations_per_epoch"]),
            seconds=training.get("seconds_this_run"), device=training.get("device"))

    def owns(self, model: Path) -> bool:
        from medlossy.train.loop import CHECKPOINT_FILE, DESCRIPTION_FILE

        description = Path(model) / DESCRIPTION_FILE
        if description.exists():
            try:
                return json.loads(description.read_text()).get("backend") == "monai"
            except json.JSONDecodeError:
                return False
        return (Path(model) / CHECKPOINT_FILE).exists()

    def is_trained(self, model: Path) -> bool:
        from medlossy.train.loop import DESCRIPTION_FILE

        return (Path(model) / DESCRIPTION_FILE).exists()

    def workload(self, request: TrainRequest) -> Workload:
        config = self.config(request)
        # The network state dict and the last checkpoint (with SGD momentum, or AdamW's two
        # moments), float32. About four 3x3x3 convolutions per stage (two down, two up).
        parameters = sum(4 * a * b * 27 for a, b in zip(config.filters, config.filters[1:],
                                                        strict=False))
        copies = 4 if config.optimizer == "adamw" else 3
        return Workload(config.epochs * config.iterations_per_epoch,
                        math.prod(config.patch_size) * config.batch_size,
                        checkpoint_bytes=copies * 4 * parameters,
                        note=f"patch {'x'.join(map(str, config.patch_size))}, batch "
                             f"{config.batch_size}")
