"""What every training backend provides, and the registry that finds one by name.

The study (``experiments``) asks a backend for a model per unit through this interface only:
``recipe`` (everything that decides the model, hashed into the unit's cache key), ``train``,
``predict`` and ``describe``. The built-in MONAI U-Net and nnU-Net v2 plug in as one module
each, like the codecs (``medlossy.codecs.base``), so callers never branch on backend names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class TrainRequest:
    """What the study asks of one training unit; ``options`` are the backend's own keys.

    The split is the study's: ``folds``-fold cross-validation over case names
    (``medlossy.train.splits``), fold ``fold``, and a fixed ``train_fraction`` of its
    training cases (the storage budget's few-shot arm). ``reference_dataset`` is the
    uncompressed (x1) dataset of the same source, for backends that can reuse its decisions
    (nnU-Net's ``plans = "x1"`` control).
    """

    fold: int = 0
    folds: int = 3
    seed: int = 0
    train_fraction: float = 1.0
    epochs: int = 300
    iterations_per_epoch: int = 250
    options: Mapping[str, Any] = field(default_factory=dict)
    reference_dataset: Path | None = None
    #: The same cases at other ratios: one model trained on patches from a ratio drawn at
    #: random for each (built-in backend only; empty: a model of one ratio).
    mixed_datasets: tuple[Path, ...] = ()
    #: How often each ratio's patches are drawn (the x1 dataset's first, then
    #: ``mixed_datasets``'); empty: equally often.
    mixed_weights: tuple[float, ...] = ()
    #: A trained model of the same dataset, split and network whose training this one
    #: continues (built-in backend only; the unit that trains it must run first).
    start_from: Path | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a trained model is, whichever backend trained it."""

    backend: str
    ratio: float | str | None  # "mixed": a model trained on every ratio
    fold: int
    train_cases: list[str]
    test_cases: list[str]
    epochs: int
    iterations_per_epoch: int
    seconds: float | None = None
    device: str | None = None


@dataclass(frozen=True)
class Workload:
    """Work of one training unit, for ``medlossy study --dry-run`` estimates."""

    iterations: int
    voxels_per_iteration: int  # batch x patch voxels
    checkpoint_bytes: float = 0.0  # what a trained unit keeps on disk
    preprocessed_share: float = 0.0  # cached preprocessed data per ratio, x raw 16-bit bytes
    note: str = ""


class TrainingBackend(ABC):
    """Trains segmentation models on nnU-Net raw datasets and predicts with them."""

    name: ClassVar[str]

    @abstractmethod
    def recipe(self, request: TrainRequest) -> dict[str, Any]:
        """Every setting that decides the model, validated (ValueError names the problem,
        also a request the backend cannot serve, such as ``mixed_datasets``)."""

    @abstractmethod
    def train(self, dataset: Path, out: Path, request: TrainRequest, *,
              cache: Path | None = None, show_progress: bool = False,
              replace: bool = False) -> Path:
        """Train into ``out`` (a rerun resumes); ``cache``: a folder that units of the same
        study may share (preprocessed data); ``replace``: train over a model of another
        recipe or dataset found in ``out`` (a study's own unit folders) instead of refusing
        it. Returns ``out``."""

    @abstractmethod
    def predict(self, model: Path, dataset: Path, out: Path, *, cases: str = "test",
                device: str = "auto", show_progress: bool = False) -> Path:
        """CASE<file_ending> label maps of ``dataset``'s cases in ``out``: "test" = the
        model's held-out cases, "all" = every case. Returns ``out``."""

    @abstractmethod
    def describe(self, model: Path) -> ModelInfo:
        """What ``model`` is; MedlossyError when it is not this backend's trained model."""

    @abstractmethod
    def owns(self, model: Path) -> bool:
        """Whether ``model`` is a folder this backend wrote (trained or not)."""

    @abstractmethod
    def is_trained(self, model: Path) -> bool:
        """Whether ``model`` holds a finished model."""

    @abstractmethod
    def workload(self, request: TrainRequest) -> Workload:
        """Iterations and voxels per iteration of one unit (before any data is read)."""


_REGISTRY: dict[str, type[TrainingBackend]] = {}
_ALIASES = {"monai": "builtin"}


def register(backend_type: type[TrainingBackend]) -> type[TrainingBackend]:
    """Class decorator: make a backend available by its ``name``."""
    _REGISTRY[backend_type.name] = backend_type
    return backend_type


def get_backend(name: str) -> TrainingBackend:
    """An instance of the backend registered as ``name`` ("monai" is the built-in's old name)."""
    try:
        return _REGISTRY[_ALIASES.get(name, name)]()
    except KeyError:
        raise ValueError(f"unknown training backend {name!r}; known: "
                         f"{', '.join(backend_names())}") from None


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def backend_of(model: Path) -> TrainingBackend:
    """The backend that wrote the model folder ``model``."""
    from medlossy.errors import MedlossyError

    for backend_type in _REGISTRY.values():
        backend = backend_type()
        if backend.owns(Path(model)):
            return backend
    raise MedlossyError(model, "not a medlossy model folder (train one with `medlossy train`)")


def check_options(options: Mapping[str, Any], known: Sequence[str], backend: str) -> None:
    """ValueError naming unknown keys of a backend's options."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for backend {backend!r}; known: "
                         f"{', '.join(sorted(known))}")
