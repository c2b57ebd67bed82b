"""Train one model on one dataset and fold; checkpoints every epoch, resumes after a kill."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.utils import set_determinism

from medlossy import __version__
from medlossy.atomic import atomic_output
from medlossy.datasets.nnunet_raw import RawDataset, open_raw_dataset
from medlossy.errors import MedlossyError
from medlossy.jsonfile import write_json
from medlossy.terminal import progress_bar
from medlossy.train.config import TrainConfig
from medlossy.train.network import build_network, network_arguments
from medlossy.train.precision import uses_bfloat16
from medlossy.train.preprocessing import (
    LoadedCase,
    fit_normalisation,
    load_case,
    prepare,
    store_folder,
)
from medlossy.train.sampling import PatchSampler, epoch_batches
from medlossy.train.splits import kfold_splits, training_subset

MODEL_FILE = "model.pt"
DESCRIPTION_FILE = "model.json"
CHECKPOINT_FILE = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MedlossyError(None, "--device cuda asked for, but PyTorch sees no GPU")
    return torch.device(name)


def _labels(dataset: RawDataset) -> dict[str, int]:
    labels = dataset.metadata.get("labels", {})
    if not labels or any(not isinstance(v, int) for v in labels.values()):
        raise MedlossyError(dataset.root / "dataset.json",
                            "needs integer labels {name: value} (region-based labels are not "
                            "supported by the built-in backend)")
    return labels


def _save(path: Path, payload: dict) -> None:
    # an open file: an unwritable folder is an OSError naming it (torch.save of a path raises
    # a RuntimeError), and the archive's inner name is fixed, not the temporary file's
    with atomic_output(path) as temporary, open(temporary, "wb") as file:
        torch.save(payload, file)


def build_optimizer(network: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimizer at its initial learning rate (the poly schedule sets it)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    return torch.optim.SGD(network.parameters(), lr=config.learning_rate,
                           momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


def poly_learning_rate(config: TrainConfig, epoch: int, start: float | None = None) -> float:
    """lr0 * (1 - epoch / epochs) ** 0.9, the study's schedule (lr0: ``start`` where given,
    else the config's learning rate)."""
    lr0 = config.learning_rate if start is None else start
    return lr0 * (1 - epoch / config.epochs) ** config.poly_exponent


def _entry_weights(weights: Sequence[float] | None, counts: list[int]) -> list[float] | None:
    """Each (case, ratio) entry's probability: its ratio's weight shared by its cases."""
    if weights is None:
        return None
    # inf passes ">= 0" but makes every probability inf / inf = nan
    if len(weights) != len(counts) or any(not 0 <= w < math.inf for w in weights) \
            or not sum(weights):
        raise ValueError(f"mixed weights must be {len(counts)} finite numbers >= 0, one per "
                         f"ratio and not all 0, got {list(weights)}")
    total = sum(weights)
    return [w / total / n for w, n in zip(weights, counts, strict=True) for _ in range(n)]


def _continue(start: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
              arguments: dict, specs: list, split: dict, device: torch.device) -> float:
    """Load the model this training continues (network, and the optimizer's state where its
    checkpoint is kept) and return its last learning rate; refuse another network, split or
    normalisation."""
    try:
        description = json.loads((start / DESCRIPTION_FILE).read_text())
        trained_on, history = description["trained_on"], description["training"]["history"]
        same = (description["network"] == arguments and trained_on["train_cases"] ==
                split["train"] and description["preprocessing"]["normalisation"] == specs)
        learning_rate = float(history[-1]["lr"])
    # JSON that is not a finished model's description: keys, types or history missing
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        raise MedlossyError(start, f"not a model trained by medlossy ({DESCRIPTION_FILE} "
                                   "missing or unreadable)") from None
    if not same:
        raise MedlossyError(start, "was trained with another network, split or "
                                   "normalisation: cannot continue it on these data")
    checkpoint_path = start / CHECKPOINT_FILE
    path = checkpoint_path if checkpoint_path.exists() else start / MODEL_FILE
    try:
        saved = torch.load(path, map_location=device, weights_only=False)
        network.load_state_dict(saved["network"])
        if path == checkpoint_path:
            optimizer.load_state_dict(saved["optimizer"])
    # torch.load of a cut-short or foreign file raises any of these (RuntimeError: not a zip)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError,
            pickle.UnpicklingError) as error:
        raise MedlossyError(path, f"cannot be read as this model's weights "
                                  f"({type(error).__name__}: {str(error).splitlines()[0]})"
                            ) from None
    return learning_rate


def _mixed_datasets(dataset: RawDataset, folders: Sequence[str | Path],
                    names: list[str]) -> list[RawDataset]:
    """The other ratios' datasets of a mixed-ratio model, each holding every training case:
    a sweep's datasets of distinct recorded ratios, ``dataset`` the x1 one."""
    others = [open_raw_dataset(folder) for folder in folders]
    if others and _ratio(dataset) != 1:
        raise MedlossyError(dataset.root, f"is at ratio {_ratio(dataset)}, not x1: a "
                                          "mixed-ratio model takes its split, labels and "
                                          "normalisation from the x1 dataset of a sweep")
    ratios = [_ratio(other) for other in others]
    for other, ratio in zip(others, ratios, strict=True):
        if ratio is None or ratio == 1 or ratios.count(ratio) > 1:
            raise MedlossyError(other.root, "is not another ratio of the sweep (its "
                                            f"dataset.json records ratio {ratio}; each "
                                            "--mixed dataset needs its own ratio above 1)")
    for other in others:
        have = {case.name for case in other.cases()}
        missing = sorted(set(names) - have)
        if missing:
            raise MedlossyError(other.root, f"has no case {missing[0]} of {dataset.root.name} "
                                            "(a mixed-ratio model needs every training case "
                                            "at every ratio)")
        if other.channels != dataset.channels:
            raise MedlossyError(other.root, f"has channels {other.channels}; "
                                            f"{dataset.root.name} has {dataset.channels}")
    return others


def _check_same_labels(sources: list[RawDataset], loaded: list[list[LoadedCase]]) -> None:
    """Every ratio's copy of a case has the x1 labels (a sweep stores them losslessly): else
    the datasets are not one cohort at several ratios."""
    reference = {case.name: case.labels for case in loaded[0]}
    for source, cases in zip(sources[1:], loaded[1:], strict=True):
        for case in cases:
            if case.labels is None or not np.array_equal(case.labels, reference[case.name]):
                raise MedlossyError(source.root, f"case {case.name}'s labels differ from the x1 "
                                                 "dataset's: not another ratio of its sweep")


def _ratio(dataset: RawDataset) -> float | None:
    return dataset.metadata.get("medlossy", {}).get("ratio")


def _resumable_checkpoint(out: Path, fingerprint: str, replace: bool) -> dict | None:
    """The checkpoint in ``out`` that this training resumes (None: start afresh); a folder
    holding another model, or files of its own, is refused (``replace``: trained over)."""
    try:
        return _own_checkpoint(out, fingerprint)
    except MedlossyError:
        if replace and out.is_dir():
            return None
        raise


def _own_checkpoint(out: Path, fingerprint: str) -> dict | None:
    """The checkpoint in the folder ``out`` (:func:`_held` refused a file) to resume."""
    written = [out / name for name in (CHECKPOINT_FILE, MODEL_FILE, DESCRIPTION_FILE)]
    if not out.exists() or not any(out.iterdir()):
        return None
    if not written[0].exists():
        kind = "a model without its checkpoint" if any(p.exists() for p in written[1:]) \
            else "files that are not a model's"
        raise MedlossyError(out, f"holds {kind}: training writes only into a new or empty "
                                 "folder or resumes its own; choose a new --out")
    try:
        checkpoint = torch.load(written[0], map_location="cpu", weights_only=False)
        same = checkpoint.get("fingerprint") == fingerprint
    # torch.load of a cut-short or foreign file raises any of these (RuntimeError: not a zip)
    except (OSError, RuntimeError, EOFError, ValueError, AttributeError,
            pickle.UnpicklingError) as error:
        raise MedlossyError(written[0], f"cannot be read as a checkpoint ({type(error).__name__}"
                                        f": {str(error).splitlines()[0]}); choose a new --out"
                            ) from None
    if not same:
        raise MedlossyError(out, "holds a model trained with another recipe, dataset, split or "
                                 "start: it is never trained over; choose a new --out")
    return checkpoint


def _finished(out: Path, checkpoint: dict | None, config: TrainConfig) -> bool:
    """Whether ``checkpoint`` (this training's) ends it and its model files were written."""
    return checkpoint is not None and checkpoint["epoch"] >= config.epochs and \
        all((out / name).exists() for name in (MODEL_FILE, DESCRIPTION_FILE))


def train_model(dataset_folder: str | Path, out: str | Path, config: TrainConfig, *,
                mixed: Sequence[str | Path] = (), mixed_weights: Sequence[float] | None = None,
                start_from: str | Path | None = None, show_progress: bool = False,
                replace: bool = False) -> Path:
    """Train on the training cases of ``config.fold``; returns the model folder.

    ``mixed``: the same cases at other ratios (a sweep's other datasets): one model for every
    ratio, each patch drawn from a case at a ratio chosen at random (``dataset_folder``'s
    included), uniformly or with ``mixed_weights`` (one per ratio, ``dataset_folder``'s
    first). Labels, split and normalisation come from ``dataset_folder`` (the x1 data).
    Every ratio's cases are held in memory: ratios x one model's memory.

    ``start_from``: a model trained by this function on the same split and network, whose
    training this one continues (weights and optimizer state) for ``config.epochs`` more,
    the poly schedule starting at that model's last learning rate.

    ``out``: a new or empty folder, or this training's own (it resumes); a folder holding a
    model of another recipe, dataset or split is refused unless ``replace`` (it starts over).
    """
    with _held(Path(out)):
        return _train(dataset_folder, Path(out), config, mixed=mixed,
                      mixed_weights=mixed_weights, start_from=start_from,
                      show_progress=show_progress, replace=replace)


def _sweep_ratio(out: Path) -> bool:
    """Whether ``out`` is SWEEP/r20, a name that commands resolve to a sweep's dataset."""
    try:
        return out.name in json.loads((out.parent / "sweep.json").read_text())["datasets"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextmanager
def _held(out: Path) -> Iterator[None]:
    """Hold the model folder ``out`` (created if missing) for one training: a second training
    into it meanwhile is refused instead of interleaving its checkpoints and model files."""
    if (out.is_symlink() or out.exists()) and not out.is_dir():
        raise MedlossyError(out, "is a file or a broken link, not a model folder: choose a "
                                 "new --out")
    if _sweep_ratio(out):
        raise MedlossyError(out, "names a ratio's dataset of the sweep it is in: a model "
                                 "there would hide that dataset; choose a new --out")
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    out.mkdir(parents=True, exist_ok=True)
    handle, held = os.open(out, os.O_RDONLY), False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the process dies
        except BlockingIOError:
            raise MedlossyError(out, "is being trained into by another run: wait for it to "
                                     "finish, or choose a new --out") from None
        except OSError:
            pass  # no locks on folders there (NFS emulates flock by write locks): as before
        held = True
        yield
    finally:
        for folder in created if held else ():  # refused or failed before writing
            try:
                folder.rmdir()
            except OSError:
                break
        os.close(handle)


def _train(dataset_folder: str | Path, out: Path, config: TrainConfig, *,
           mixed: Sequence[str | Path], mixed_weights: Sequence[float] | None,
           start_from: str | Path | None, show_progress: bool, replace: bool) -> Path:
    """:func:`train_model` while holding ``out``."""
    dataset = open_raw_dataset(dataset_folder)
    out = Path(out)
    if start_from is not None and Path(start_from).resolve() == out.resolve():
        # its checkpoint's fingerprint differs: training would start over in it and
        # replace the model it continues
        raise MedlossyError(out, "is the model to continue: train the continued model into "
                                 "another folder")
    labels = _labels(dataset)
    labelled = [case for case in dataset.cases() if case.label is not None]
    try:
        split = kfold_splits([c.name for c in labelled], config.folds)[config.fold]
    except ValueError as error:
        raise MedlossyError(dataset.root, str(error)) from None
    if config.train_fraction < 1:
        split = {**split, "train": training_subset(split["train"], config.train_fraction,
                                                   config.fold)}
    device = resolve_device(config.device)
    set_determinism(seed=config.seed)
    torch.manual_seed(config.seed)

    sources = [dataset, *_mixed_datasets(dataset, mixed, split["train"])]
    fingerprint = hashlib.sha256(json.dumps(
        [config.recipe(), str(dataset.root.resolve()), split,
         *[str(source.root.resolve()) for source in sources[1:]],
         # only where set: a checkpoint written before these options still resumes
         *([list(mixed_weights)] if mixed_weights else []),
         *([str(Path(start_from).resolve())] if start_from else [])], sort_keys=True,
        default=str).encode()).hexdigest()
    # before any work: refusals first
    checkpoint = _resumable_checkpoint(out, fingerprint, replace)
    if _finished(out, checkpoint, config):
        return out  # a rerun: nothing to train, and the model's files stay as written
    if not os.access(out, os.W_OK | os.X_OK):
        raise MedlossyError(out, "is not writable: choose a new --out")
    loaded = []
    for source in sources:
        stores = store_folder(source) if config.source == "store" else None
        loaded.append([load_case(source, case, stores) for case in source.cases()
                       if case.name in split["train"]])
    _check_same_labels(sources, loaded)
    specs = fit_normalisation(dataset, loaded[0], seed=config.seed)
    # Each (case, ratio) is one entry: drawing an entry uniformly draws a case, then a ratio
    # (with mixed_weights: a ratio by its weight, then one of its cases).
    prepared = [prepare(case, specs, config.target_spacing) for cases in loaded
                for case in cases]
    counts = [len(cases) for cases in loaded]
    del loaded
    arguments = network_arguments(len(dataset.channels), max(labels.values()) + 1,
                                  config.filters)
    network = build_network(arguments).to(device)
    optimizer = build_optimizer(network, config)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                               batch=True)
    sampler = PatchSampler(prepared, config, _entry_weights(mixed_weights, counts))
    learning_rate = config.learning_rate
    if start_from is not None:
        learning_rate = _continue(Path(start_from), network, optimizer, arguments, specs,
                                  split, device)

    start_epoch, history = 0, []
    checkpoint_path = out / CHECKPOINT_FILE
    if checkpoint is not None:
        network.load_state_dict(checkpoint["network"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        sampler.restore(checkpoint["sampler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        start_epoch, history = checkpoint["epoch"], checkpoint["history"]
        del checkpoint

    use_amp = uses_bfloat16(device, config.precision)
    memory_format = torch.channels_last_3d if config.channels_last else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    # torch.compile needs a C compiler and pays off on GPUs only; ignored on CPU.
    forward = torch.compile(network) if config.compile and device.type == "cuda" else network
    patch_voxels = math.prod(config.patch_size) * config.batch_size
    started = time.perf_counter()
    network.train()
    for epoch in range(start_epoch, config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = poly_learning_rate(config, epoch, learning_rate)
        losses = []
        batches = epoch_batches(sampler, config, epoch,
                                pin_memory=config.pin_memory and device.type == "cuda")
        progress = progress_bar(batches, total=config.iterations_per_epoch,
                                desc=f"epoch {epoch + 1}/{config.epochs}", unit="it",
                                leave=False, show=show_progress)
        for images, targets in progress:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                enabled=use_amp):
                logits = forward(images)
            loss = loss_function(logits.float(), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                        "lr": optimizer.param_groups[0]["lr"]})
        _save(checkpoint_path, {
            "fingerprint": fingerprint, "epoch": epoch + 1, "history": history,
            "network": network.state_dict(), "optimizer": optimizer.state_dict(),
            "sampler": sampler.state(), "torch_rng": torch.get_rng_state()})
    seconds = time.perf_counter() - started
    iterations = (config.epochs - start_epoch) * config.iterations_per_epoch

    _save(out / MODEL_FILE, {"network": network.state_dict()})
    ratio = "mixed" if mixed else _ratio(dataset)
    write_json(out / DESCRIPTION_FILE, {
        "backend": "monai", "format_version": 1, "software": f"medlossy {__version__}",
        "architecture": "DynUNet", "network": arguments,
        "preprocessing": {"target_spacing": list(config.target_spacing),
                          "normalisation": specs, "patch_size": list(config.patch_size)},
        "labels": labels, "channel_names": dataset.metadata["channel_names"],
        "trained_on": {"dataset": str(dataset.root), "ratio": ratio,
                       **({"mixed": [{"dataset": str(source.root), "ratio": _ratio(source)}
                                     for source in sources]} if mixed else {}),
                       **({"mixed_weights": list(mixed_weights)} if mixed_weights else {}),
                       **({"continued_from": str(start_from)} if start_from else {}),
                       "fold": config.fold,
                       "folds": config.folds, "train_cases": split["train"],
                       "test_cases": split["test"]},
        "config": config.to_dict(),
        "training": {"device": str(device), "torch": torch.__version__,
                     "precision": "bfloat16" if use_amp else "float32",
                     "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9,
                                                 3) if device.type == "cuda" else None,
                     "seconds_this_run": round(seconds, 2), "iterations_this_run": iterations,
                     "iterations_per_second": round(iterations / seconds, 4) if seconds else None,
                     "mvox_per_second": round(iterations * patch_voxels / seconds / 1e6, 4)
                     if seconds else None,
                     "history": history},
    })
    return out
