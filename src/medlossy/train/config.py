"""The training recipe: the study's defaults, presets for resolution, validated once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from medlossy.train.precision import PRECISIONS, arithmetic

#: Sized for CPUs: coarse spacing, small patches and networks (see shared DATA.md timings).
PRESETS: dict[str, dict[str, Any]] = {
    "lowres": {"target_spacing": (3.0, 3.0, 3.0), "patch_size": (64, 64, 64),
               "filters": (8, 16, 32, 64)},
    "fullres": {"target_spacing": (1.5, 1.5, 1.5), "patch_size": (96, 96, 96),
                "filters": (16, 32, 64, 128, 256)},
}


OPTIMIZERS = ("sgd", "adamw")
SAMPLINGS = ("foreground", "classes")
SPEED_OPTIONS = ("channels_last", "compile", "loader_workers", "pin_memory")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model. Defaults follow the study (nnU-Net's recipe):
    SGD Nesterov momentum 0.99, lr 1e-2 with poly decay (exponent 0.9), Dice + cross-entropy,
    a third of patches forced to contain foreground. The paper trained 300 x 250 iterations;
    the defaults here are the paper's, the demo passes far fewer.
    """

    preset: str = "lowres"
    target_spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    patch_size: tuple[int, int, int] = (64, 64, 64)
    filters: tuple[int, ...] = (8, 16, 32, 64)
    epochs: int = 300
    iterations_per_epoch: int = 250
    batch_size: int = 2
    #: "sgd" (the study's, Nesterov with ``momentum``) or "adamw" (``momentum`` unused):
    #: AdamW learns the small classes in far fewer iterations, which a CPU demo needs.
    optimizer: str = "sgd"
    learning_rate: float = 1e-2
    momentum: float = 0.99
    poly_exponent: float = 0.9
    weight_decay: float = 3e-5
    foreground_fraction: float = 1 / 3
    #: Where patches are centred: "foreground" (nnU-Net: ``foreground_fraction`` of patches on
    #: any label > 0, the rest anywhere) or "classes" (``foreground_fraction`` of patches on
    #: each foreground class in turn, equally often, so small organs are seen as often as
    #: large ones; the rest on background).
    sampling: str = "foreground"
    augment: bool = True
    #: Axes mirrored at random by the augmentation (nnU-Net mirrors all three). Mirroring the
    #: left-right axis swaps the sides of lateral classes (left/right kidney, aorta/IVC):
    #: with few iterations the network cannot yet tell them apart from the anatomy around.
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    seed: int = 0
    fold: int = 0
    folds: int = 3
    #: Share of the fold's training cases to train on (few-shot runs of the storage budget
    #: experiment); a fixed subset for a given fold and fraction, at least one case.
    train_fraction: float = 1.0
    device: str = "auto"
    #: Speed only (not part of the recipe's hash; results equal up to float rounding):
    #: channels-last 3D memory layout, torch.compile (CUDA only; ignored on CPU), batches
    #: made by this many loader processes while the GPU trains (0: in this process), pinned
    #: host memory for the copies to the GPU (CUDA only).
    channels_last: bool = False
    compile: bool = False
    loader_workers: int = 0
    pin_memory: bool = True
    #: Arithmetic of the network's forward pass: "auto" (bfloat16 mixed precision where the
    #: device computes it natively: CUDA GPUs, CPUs with AMX or AVX-512 BF16; float32
    #: elsewhere), "bf16" or "fp32". bfloat16 changes results by training noise, so the
    #: recipe holds the arithmetic it resolves to here (a cached model of the other is not
    #: reused); the precision used is recorded in model.json.
    precision: str = "auto"
    #: Where training images come from: "nifti" (the dataset's decoded image files) or
    #: "store" (decoded in memory from the compressed stores of a `medlossy dataset compress`
    #: sweep, which dataset.json names; no decoded copy is read). Same voxels, same model.
    source: str = "nifti"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.preset not in PRESETS:
            problems.append(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.epochs < 1 or self.iterations_per_epoch < 1 or self.batch_size < 1:
            problems.append("epochs, iterations and batch size must be >= 1")
        if not 0 <= self.fold < self.folds:
            problems.append(f"fold must be in 0..{self.folds - 1}, got {self.fold}")
        if self.folds < 2:
            problems.append(f"folds must be >= 2, got {self.folds}")
        if len(self.filters) < 2 or any(p % 2 ** (len(self.filters) - 1) for p in
                                         self.patch_size):
            problems.append(f"patch size {self.patch_size} must be divisible by "
                            f"{2 ** (len(self.filters) - 1)} for {len(self.filters)} stages")
        if not 0 < self.train_fraction <= 1:
            problems.append(f"train fraction must be in (0, 1], got {self.train_fraction}")
        if any(axis not in (0, 1, 2) for axis in self.mirror_axes) or \
                len(set(self.mirror_axes)) != len(self.mirror_axes):
            problems.append(f"mirror axes must be distinct axes among 0, 1, 2, got "
                            f"{self.mirror_axes}")
        if not 0 <= self.foreground_fraction <= 1:
            problems.append("foreground fraction must be in [0, 1]")
        if self.loader_workers < 0:
            problems.append(f"loader_workers must be >= 0, got {self.loader_workers}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.sampling not in SAMPLINGS:
            problems.append(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.learning_rate > 0:
            problems.append(f"learning rate must be > 0, got {self.learning_rate}")
        if self.source not in ("nifti", "store"):
            problems.append(f"source must be nifti or store, got {self.source!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device must be auto, cpu or cuda, got {self.device!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> TrainConfig:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(preset=preset, **values)

    def with_fold(self, fold: int) -> TrainConfig:
        return replace(self, fold=fold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def recipe(self) -> dict[str, Any]:
        """Everything that decides the model: :meth:`to_dict` without the speed options,
        ``precision`` as the arithmetic it means on this machine."""
        recipe = {k: v for k, v in asdict(self).items() if k not in SPEED_OPTIONS}
        recipe["precision"] = arithmetic(self.device, self.precision)
        return recipe
