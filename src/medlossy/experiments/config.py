"""The study configuration: one TOML file, validated before any work starts.

Example (every key optional except ``datasets``)::

    experiments = ["quality", "train", "cross", "pretrained", "budget"]
    ratios = [1, 2, 5, 10, 20, 50, 70, 100]        # compression (quality experiment)
    train_ratios = [1, 5, 20, 50]                 # one model per ratio (and fold)
    mixed_ratios = "all"                          # experiment "mixed": one model, every ratio
    mixed_weights = [2, 1, 1, 1]                  # optional: how often each of mixed_ratios
    mixed_start = "scratch"                       # or "x1": continue the x1 model on them
    mixed_epochs = 4                              # optional: its epochs (default [training]'s)
    folds = 3
    train_folds = [0]                             # repeats: [0, 1, 2]
    seed = 0
    seeds = [0, 1, 2]                             # optional: one model per seed (repeats)
    budget_fractions = [0.05, 0.2, 1.0]           # few-shot shares of uncompressed data
    margin = 0.01                                 # non-inferiority margin, Dice
    min_test_cases = 10                           # fewer: no safe ratio is named
    safe_ratio_over = "classes"                   # smallest over classes; or "mean"
    tail_drop = 0.05                              # a case "fails" losing more Dice than this
    tail_limit = 0.1                              # bound on the failing share for "safe"
    assumed_model_sd = 0.02                       # training noise when 1 model per ratio
    reader_results = "rs/report/answers.csv"      # optional, from medlossy reader analyze
    codec = "jpeg2k"                              # or a list to compare: ["jpeg2k", "htj2k"]
    tile = 256                                    # optional: stores in tiles (jpeg2k, htj2k)

    [[datasets]]
    path = "nnUNet_raw/Dataset011_AMOS"
    body_region = "abdomen"                       # optional: abdomen, chest, musculoskeletal, head

    [training]
    backend = "builtin"                            # or "nnunet" (options: docs/study.md)
    epochs = 300
    iterations_per_epoch = 250
    preset = "lowres"                              # the rest: the backend's own options
    patch_size = [64, 64, 64]

    [pretrained]                                   # optional; else the ratio-1 model
    checkpoint = "swin_unetr_btcv.pt"
    label_map = "btcv2amos.json"

    [pretrained]                                   # or: a pretrained model's agreement
    model = "deepbet"                              # or "hd-bet", or an nnU-Net model folder
    compare = ["hd-bet"]                           # optional: models of the same task
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlossy.backends import TrainingBackend, TrainRequest, get_backend
from medlossy.errors import MedlossyError
from medlossy.experiments.guidelines import BODY_REGIONS

if TYPE_CHECKING:
    from medlossy.codecs.base import SliceCodec

#: Where the mixed-ratio model starts: a fresh network, or the x1 model (continued).
MIXED_STARTS = ("scratch", "x1")
EXPERIMENTS = ("quality", "train", "cross", "pretrained", "budget", "mixed", "reader")
_TOP_KEYS = {"experiments", "ratios", "train_ratios", "mixed_ratios", "mixed_weights",
             "mixed_start", "mixed_epochs", "folds", "train_folds", "seed", "seeds",
             "budget_fractions", "margin", "min_test_cases", "safe_ratio_over", "tail_drop",
             "tail_limit", "assumed_model_sd", "datasets",
             "training", "pretrained", "reader_results", "base_id", "codec", "tile"}
#: [training] keys of the study; every other key is an option of the chosen backend.
_STUDY_TRAINING_KEYS = ("backend", "epochs", "iterations_per_epoch")
_DATASET_KEYS = {"path", "train", "synthetic", "cases", "voxels_per_case", "crop_to_label",
                 "crop_margin_mm", "body_region"}


@dataclass(frozen=True)
class DatasetEntry:
    path: Path
    train: bool = True  # False: quality only (too few labelled cases to train on)
    synthetic: bool = False
    #: Size hints for ``--dry-run`` before the dataset is on disk (cases, mean voxels).
    cases: int | None = None
    voxels_per_case: float | None = None
    #: Crop every case to these label values first (the paper crops LiTS to the liver).
    crop_to_label: tuple[int, ...] = ()
    crop_margin_mm: float = 10.0
    #: What the images show (a key of ``guidelines.BODY_REGIONS``): the report then puts
    #: published clinical guidance for lossy compression beside the safe ratio.
    body_region: str | None = None


@dataclass(frozen=True)
class StudyConfig:
    datasets: tuple[DatasetEntry, ...]
    experiments: tuple[str, ...] = ("quality", "train", "cross", "pretrained", "budget")
    ratios: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 70, 100)
    train_ratios: tuple[float, ...] = (1, 5, 20, 50)
    #: Experiment "mixed": one model trained on patches from a ratio drawn at random among
    #: these ("all": every ratio of ``ratios``), tested at every ratio.
    mixed_ratios: tuple[float, ...] | str = "all"
    #: How often the mixed model draws each of ``mixed_ratios``' patches, in their order
    #: (empty: equally often).
    mixed_weights: tuple[float, ...] = ()
    #: "scratch": the mixed model is trained from a fresh network; "x1": it continues the x1
    #: model of the same fold and seed (its weights, optimizer state and last learning rate)
    #: for ``mixed_epochs`` more epochs, so it costs only those.
    mixed_start: str = "scratch"
    #: Epochs of the mixed model (None: [training] epochs).
    mixed_epochs: int | None = None
    folds: int = 3
    train_folds: tuple[int, ...] = (0,)
    seed: int = 0
    #: Training repeats: one model per seed for every ratio and fold (empty: ``seed`` only).
    seeds: tuple[int, ...] = ()
    budget_fractions: tuple[float, ...] = (0.05, 0.2, 1.0)
    margin: float = 0.01
    min_test_cases: int = 10  # fewest test cases behind a named safe ratio
    safe_ratio_over: str = "classes"  # or "mean": the per-case mean alone
    #: Tail criterion: the share of cases losing more than ``tail_drop`` Dice must be
    #: bounded below ``tail_limit`` for a ratio to be called safe.
    tail_drop: float = 0.05
    tail_limit: float = 0.1
    #: Model-to-model sd of a mean Dice difference, assumed where one model per ratio (one
    #: fold, one seed) cannot estimate it.
    assumed_model_sd: float = 0.02
    #: One codec, or several to compare (each gets its own sweep, models and report rows).
    codec: str | tuple[str, ...] = "jpeg2k"
    #: Stores in square tiles of this side (None: whole slices), for training from stores.
    tile: int | None = None
    base_id: int = 800
    training: dict[str, Any] = field(default_factory=dict)
    #: checkpoint + label_map (a Swin UNETR against the labels), or model + compare (a
    #: pretrained model's agreement with itself at x1, on every dataset; see
    #: ``experiments.pretrained``).
    pretrained: dict[str, Any] = field(default_factory=dict)
    reader_results: Path | None = None

    @property
    def backend(self) -> TrainingBackend:
        """The training backend ``[training] backend`` names (default: the built-in)."""
        return get_backend(str(self.training.get("backend", "builtin")))

    @property
    def codecs(self) -> tuple[str, ...]:
        """Every codec the study compresses with, in the config's order."""
        return (self.codec,) if isinstance(self.codec, str) else tuple(self.codec)

    @property
    def mixed_model_ratios(self) -> tuple[float, ...]:
        """The ratios the mixed-ratio model draws its patches from."""
        return self.ratios if self.mixed_ratios == "all" else tuple(self.mixed_ratios)

    def sweep_name(self, dataset_name: str, codec: str) -> str:
        """The sweep's (and its models') name: the dataset's with one codec; with several,
        dataset_codec, so the report compares codecs at equal ratio."""
        return dataset_name if len(self.codecs) == 1 else f"{dataset_name}_{codec}"

    @property
    def training_seeds(self) -> tuple[int, ...]:
        """The seed of every training repeat."""
        return self.seeds or (self.seed,)

    def train_request(self, fold: int, fraction: float = 1.0,
                      reference: Path | None = None, seed: int | None = None,
                      ) -> TrainRequest:
        """What one training unit asks of the backend (``seed``: default ``seed``)."""
        options = {k: v for k, v in self.training.items() if k not in _STUDY_TRAINING_KEYS}
        return TrainRequest(fold=fold, folds=self.folds,
                            seed=self.seed if seed is None else seed,
                            train_fraction=fraction,
                            epochs=int(self.training.get("epochs", 300)),
                            iterations_per_epoch=int(self.training.get("iterations_per_epoch",
                                                                       250)),
                            options=options, reference_dataset=reference)

    @property
    def budget_ratios(self) -> tuple[float, ...]:
        """The ratio whose footprint equals each budget fraction of uncompressed data."""
        return tuple(round(1 / f, 6) for f in self.budget_fractions)

    def digest(self) -> str:
        """A short hash of everything that decides the results."""
        document = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(document.encode()).hexdigest()[:12]


def _fail(source: str, problem: str) -> MedlossyError:
    return MedlossyError(source, f"bad study config: {problem}")


def _check_codecs(config: StudyConfig, source: str) -> None:
    from medlossy.codecs import CodecError, get_codec

    if not config.codecs or len(set(config.codecs)) != len(config.codecs):
        raise _fail(source, f"codec must be a name or a list of distinct names, got "
                            f"{config.codec!r}")
    for name in config.codecs:
        try:
            codec = get_codec(name)
        except CodecError as error:
            raise _fail(source, str(error)) from None
        if "ratio" not in codec.modes and any(r > 1 for r in config.ratios
                                              + config.train_ratios):
            raise _fail(source, f"codec {name!r} has no ratio mode (see `medlossy codecs`)")
        if config.tile is not None:
            _check_tile(codec, config.tile, source)


def _check_tile(codec: SliceCodec, tile: object, source: str) -> None:
    from medlossy.compression import check_tile

    if isinstance(tile, bool) or not isinstance(tile, int):
        raise _fail(source, f"tile must be a whole number of pixels, got {tile!r}")
    try:
        check_tile(codec, tile, option="tile")
    except MedlossyError as error:
        raise _fail(source, error.problem) from None


def training_experiments(config: StudyConfig) -> set[str]:
    """The experiments that train or evaluate trained models. ``pretrained`` with a
    ``model`` (its agreement with itself) trains nothing: alone it needs no labels; beside
    another training experiment the ratio-1 model is also evaluated on compressed inputs."""
    wanted = {"train", "cross", "pretrained", "budget", "mixed"} & set(config.experiments)
    if "model" in config.pretrained and wanted <= {"pretrained"}:
        return set()
    return wanted


def _check_pretrained(config: StudyConfig, source: str) -> None:
    from medlossy.pretrained import model_names

    unknown = set(config.pretrained) - {"checkpoint", "label_map", "model", "compare"}
    if unknown:
        raise _fail(source, f"unknown [pretrained] key(s) {sorted(unknown)}")
    if "model" not in config.pretrained:
        if "compare" in config.pretrained:
            raise _fail(source, "[pretrained] compare needs model")
        return
    if "checkpoint" in config.pretrained:
        raise _fail(source, "[pretrained] takes a checkpoint or a model, not both")
    for spec in [config.pretrained["model"], *config.pretrained.get("compare", ())]:
        if not isinstance(spec, str) or (spec not in model_names() and not Path(spec).is_dir()):
            raise _fail(source, f"[pretrained] model {spec!r} is neither "
                                f"{' nor '.join(model_names())} nor a model folder")


def _check_mixed(config: StudyConfig, source: str) -> None:
    ratios = config.mixed_ratios
    if ratios != "all" and not isinstance(ratios, tuple | list):
        raise _fail(source, f"mixed_ratios must be \"all\" or a list of ratios, got {ratios!r}")
    chosen = config.mixed_model_ratios
    if any(isinstance(r, bool) or not isinstance(r, int | float) for r in chosen):
        raise _fail(source, f"mixed_ratios must be numbers, got {list(chosen)}")
    if 1 not in chosen or len(set(chosen)) < 2:
        raise _fail(source, f"mixed_ratios must include 1 (labels, split and normalisation "
                            f"come from the x1 data) and another ratio, got {list(chosen)}")
    outside = sorted(set(chosen) - set(config.ratios))
    if outside:
        raise _fail(source, f"mixed_ratios {outside} are not among ratios "
                            f"{list(config.ratios)} (only those are swept)")
    weights = config.mixed_weights
    if weights and (len(weights) != len(chosen) or any(
            isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < math.inf
            for w in weights)
            or not sum(weights)):
        raise _fail(source, f"mixed_weights must be one number >= 0 per ratio of "
                            f"mixed_ratios {list(chosen)}, finite and not all 0, got "
                            f"{list(weights)}")
    if config.mixed_start not in MIXED_STARTS:
        raise _fail(source, f"mixed_start must be one of {', '.join(MIXED_STARTS)}, got "
                            f"{config.mixed_start!r}")
    if config.mixed_epochs is not None and (isinstance(config.mixed_epochs, bool) or not
                                            isinstance(config.mixed_epochs, int) or
                                            config.mixed_epochs < 1):
        raise _fail(source, f"mixed_epochs must be a whole number >= 1, got "
                            f"{config.mixed_epochs!r}")
    request = config.train_request(config.train_folds[0])
    try:
        config.backend.recipe(replace(request, mixed_datasets=(Path("x"),)))
    except ValueError as error:
        raise _fail(source, f"experiment mixed: {error}") from None


def validate(config: StudyConfig, source: str, *, check_files: bool = True) -> StudyConfig:
    """Impossible combinations and missing files, all reported before any work
    (``check_files=False``: the settings only, for a dry run before the data are there)."""
    from medlossy.datasets.nnunet_raw import open_raw_dataset

    for key, kinds in (("margin", int | float), ("tail_drop", int | float),
                       ("tail_limit", int | float), ("assumed_model_sd", int | float),
                       ("min_test_cases", int)):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "a whole number" if kinds is int else "a number"
            raise _fail(source, f"{key} must be {kind}, got {value!r}")
    unknown = set(config.experiments) - set(EXPERIMENTS)
    if unknown:
        raise _fail(source, f"unknown experiment(s) {sorted(unknown)}; known: {EXPERIMENTS}")
    if not config.datasets:
        raise _fail(source, "no datasets")
    for entry in config.datasets:
        if entry.body_region is not None and entry.body_region not in BODY_REGIONS:
            raise _fail(source, f"body_region of {entry.path} must be one of "
                                f"{', '.join(BODY_REGIONS)}, got {entry.body_region!r}")
    _check_codecs(config, source)
    if any(r < 1 for r in config.ratios + config.train_ratios):
        raise _fail(source, "ratios must be >= 1 (1 = lossless)")
    training = training_experiments(config)
    _check_pretrained(config, source)
    if training and 1 not in config.train_ratios:
        raise _fail(source, "train_ratios must include 1: every comparison is against the "
                            "uncompressed model")
    if any(not 0 < f <= 1 for f in config.budget_fractions):
        raise _fail(source, "budget fractions must be in (0, 1]")
    if len(set(config.seeds)) != len(config.seeds):
        raise _fail(source, f"seeds must be distinct, got {list(config.seeds)}")
    if any(not 0 <= f < config.folds for f in config.train_folds):
        raise _fail(source, f"train_folds must be in 0..{config.folds - 1}")
    if not 0 < config.margin < 1:
        raise _fail(source, "margin must be in (0, 1)")
    if config.safe_ratio_over not in ("classes", "mean"):
        raise _fail(source, f"safe_ratio_over must be 'classes' or 'mean', got "
                            f"{config.safe_ratio_over!r}")
    for key in ("tail_drop", "tail_limit"):
        if not 0 < getattr(config, key) < 1:
            raise _fail(source, f"{key} must be in (0, 1)")
    if not 0 <= config.assumed_model_sd < 1:
        raise _fail(source, "assumed_model_sd must be in [0, 1)")
    if config.min_test_cases < 2:
        raise _fail(source, "min_test_cases must be at least 2 (an interval needs two cases)")
    try:
        config.backend.recipe(config.train_request(config.train_folds[0]))
    except (ValueError, TypeError) as error:
        raise _fail(source, f"[training]: {error}") from None
    if "mixed" in training:
        _check_mixed(config, source)
    for entry in config.datasets if check_files else ():
        dataset = open_raw_dataset(entry.path)
        labelled = [c for c in dataset.cases() if c.label is not None]
        if training and entry.train:
            if config.folds > len(labelled):
                raise _fail(source, f"{config.folds} folds but {entry.path} has "
                                    f"{len(labelled)} labelled cases")
            smallest = min(config.budget_fractions) * len(labelled) * (1 - 1 / config.folds)
            if "budget" in config.experiments and round(smallest) < 1:
                raise _fail(source, f"budget fraction {min(config.budget_fractions)} leaves "
                                    f"no training case of {entry.path}")
    if not check_files:
        return config
    for key in ("checkpoint", "label_map"):
        if key in config.pretrained and not Path(config.pretrained[key]).exists():
            raise _fail(source, f"pretrained {key} {config.pretrained[key]} does not exist")
    if config.reader_results is not None and not Path(config.reader_results).exists():
        raise _fail(source, f"reader_results {config.reader_results} does not exist")
    return config


def _pretrained_table(table: dict[str, Any], resolve: Any) -> dict[str, Any]:
    """[pretrained] with its paths made absolute (a model name stays a name)."""
    from medlossy.pretrained import model_names

    def model(value: Any) -> Any:
        return value if not isinstance(value, str) or value in model_names() else \
            str(resolve(value))

    result: dict[str, Any] = {}
    for key, value in table.items():
        if key == "model":
            result[key] = model(value)
        elif key == "compare":
            result[key] = tuple(model(v) for v in (value if isinstance(value, list) else
                                                    [value]))
        else:
            result[key] = str(resolve(value))
    return result


def load_config(path: str | Path, *, check_files: bool = True) -> StudyConfig:
    """Read and validate a study TOML file; relative paths are relative to the file."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MedlossyError(path, "no such study config") from None
    except tomllib.TOMLDecodeError as error:
        raise MedlossyError(path, f"not valid TOML ({error})") from None
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise _fail(str(path), f"unknown key(s) {sorted(unknown)}")
    base = path.parent

    def resolve(value: str) -> Path:
        return (base / value).resolve()

    entries = []
    for item in document.pop("datasets", []):
        extra = set(item) - _DATASET_KEYS
        if extra or "path" not in item:
            raise _fail(str(path), f"each [[datasets]] needs path (and optionally "
                                   f"{', '.join(sorted(_DATASET_KEYS - {'path'}))}); got "
                                   f"{sorted(item)}")
        entries.append(DatasetEntry(resolve(item["path"]), bool(item.get("train", True)),
                                    bool(item.get("synthetic", False)), item.get("cases"),
                                    item.get("voxels_per_case"),
                                    tuple(int(v) for v in item.get("crop_to_label", ())),
                                    float(item.get("crop_margin_mm", 10.0)),
                                    item.get("body_region")))
    pretrained = _pretrained_table(document.pop("pretrained", {}), resolve)
    reader = document.pop("reader_results", None)
    tuples = {k: tuple(v) for k, v in document.items() if isinstance(v, list)}
    config = StudyConfig(datasets=tuple(entries), pretrained=pretrained,
                         reader_results=resolve(reader) if reader else None,
                         **{**document, **tuples})
    return validate(config, str(path), check_files=check_files)
