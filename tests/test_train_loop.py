"""train_model: what a model folder holds, determinism on CPU, resume after an interruption."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.errors import MedlossyError
from medlossy.train.config import TrainConfig
from medlossy.train.loop import (
    CHECKPOINT_FILE,
    DESCRIPTION_FILE,
    MODEL_FILE,
    poly_learning_rate,
    train_model,
)
from medlossy.train.network import build_network
from medlossy.train.sampling import PatchSampler
from medlossy.train.splits import kfold_splits, training_subset

CONFIG = TrainConfig.from_preset(
    "lowres", target_spacing=(6.0, 6.0, 6.0), patch_size=(16, 16, 16), filters=(4, 8, 16),
    epochs=3, iterations_per_epoch=2, batch_size=1, folds=2, fold=0, seed=0, device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("data"), 6,
                                 PhantomConfig(shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0)))


@pytest.fixture(scope="module")
def model(dataset: Path, tmp_path_factory) -> Path:
    """One uninterrupted 3-epoch run, seed 0."""
    return train_model(dataset, tmp_path_factory.mktemp("runs") / "model", CONFIG)


def _description(folder: Path) -> dict:
    return json.loads((folder / DESCRIPTION_FILE).read_text())


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / MODEL_FILE, weights_only=True)["network"]


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_json_names_the_datasets_labels(model: Path, dataset: Path) -> None:
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]

    assert _description(model)["labels"] == labels


def _cases(dataset: Path) -> list[str]:
    return sorted(p.name.removesuffix(".nii.gz") for p in (dataset / "labelsTr").iterdir())


def test_model_json_records_the_folds_cases(model: Path, dataset: Path) -> None:
    split = kfold_splits(_cases(dataset), 2)[0]

    trained_on = _description(model)["trained_on"]

    assert trained_on["train_cases"] == split["train"]
    assert trained_on["test_cases"] == split["test"]
    assert (trained_on["fold"], trained_on["folds"]) == (0, 2)


def test_history_has_one_loss_per_epoch_with_the_poly_schedule(model: Path) -> None:
    history = _description(model)["training"]["history"]

    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert all(np.isfinite(entry["loss"]) and entry["loss"] > 0 for entry in history)
    assert [entry["lr"] for entry in history] == pytest.approx(
        [poly_learning_rate(CONFIG, epoch) for epoch in range(3)])


def test_model_pt_loads_into_the_described_network(model: Path) -> None:
    network = build_network(_description(model)["network"])

    network.load_state_dict(_weights(model))

    with torch.no_grad():
        output = network(torch.zeros(1, 1, 16, 16, 16))
    assert output.shape == (1, 9, 16, 16, 16)


def test_checkpoint_reports_the_last_epoch(model: Path) -> None:
    checkpoint = torch.load(model / CHECKPOINT_FILE, weights_only=False)

    assert checkpoint["epoch"] == 3
    assert not [p for p in model.iterdir() if ".partial-" in p.name]


def test_same_seed_gives_identical_losses_and_weights(model: Path, dataset: Path,
                                                       tmp_path: Path) -> None:
    again = train_model(dataset, tmp_path / "again", CONFIG)

    assert _description(again)["training"]["history"] == \
        _description(model)["training"]["history"]
    assert _identical(_weights(again), _weights(model))


def test_a_finished_model_of_another_recipe_is_refused_not_trained_over(
        model: Path, dataset: Path, tmp_path: Path) -> None:
    """train --out MODEL with another recipe retrained over the finished model."""
    finished = tmp_path / "finished"
    shutil.copytree(model, finished)
    before = {p.name: p.read_bytes() for p in finished.iterdir()}

    with pytest.raises(MedlossyError, match="holds a model trained with another recipe"):
        train_model(dataset, finished, replace(CONFIG, seed=1))
    assert {p.name: p.read_bytes() for p in finished.iterdir()} == before


@pytest.mark.parametrize("files, expected", [
    ({"notes.txt": b"mine"}, "files that are not a model's"),
    ({MODEL_FILE: b"x", DESCRIPTION_FILE: b"{}"}, "a model without its checkpoint"),
    ({CHECKPOINT_FILE: b"cut short"}, "cannot be read as a checkpoint"),
])
def test_a_folder_of_other_files_is_refused_before_any_work(
        dataset: Path, tmp_path: Path, files: dict, expected: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)

    with pytest.raises(MedlossyError, match=expected):
        train_model(dataset, out, CONFIG)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def _no_work(monkeypatch) -> None:
    from medlossy.train import loop

    def work(*args, **kwargs):
        raise AssertionError("training loaded its data")
    monkeypatch.setattr(loop, "load_case", work)


def test_a_rerun_of_a_finished_training_leaves_its_files_as_written(
        model: Path, dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """train twice with the same options: the rerun rewrote model.pt and model.json, whose
    record of the run became 0 iterations in 0 s (and a read-only model folder a traceback)."""
    finished = tmp_path / "finished"
    shutil.copytree(model, finished)
    before = _snapshot(finished)
    _no_work(monkeypatch)

    assert train_model(dataset, finished, CONFIG) == finished

    assert _snapshot(finished) == before
    assert _description(finished)["training"]["iterations_this_run"] == 3 * 2


def test_a_folder_another_training_is_writing_is_refused(
        dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """Two trains into one --out both ran, and left a model.json of one seed beside the
    model and checkpoint of the other."""
    out = tmp_path / "busy"
    out.mkdir()
    other = os.open(out, os.O_RDONLY)  # what the first training holds while it runs
    fcntl.flock(other, fcntl.LOCK_EX)
    _no_work(monkeypatch)
    try:
        with pytest.raises(MedlossyError, match="being trained into by another run"):
            train_model(dataset, out, replace(CONFIG, seed=1))
    finally:
        os.close(other)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("make", [
    lambda out: (out.parent / "file").write_text("x") and out.parent / "file" / "m",
    lambda out: out.symlink_to(out.parent / "missing") or out,
])
def test_an_out_that_cannot_be_a_folder_is_refused_before_any_work(
        dataset: Path, tmp_path: Path, monkeypatch, make) -> None:
    """--out under a file, or a broken link: one epoch trained before the error."""
    out = make(tmp_path / "out")
    _no_work(monkeypatch)

    with pytest.raises((MedlossyError, OSError)):
        train_model(dataset, out, CONFIG)


def test_an_unwritable_folder_is_refused_before_any_work(
        dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """An unwritable --out failed after an epoch, with a traceback (torch.save's
    RuntimeError). os.access is faked: this test may run as root."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    _no_work(monkeypatch)
    with pytest.raises(MedlossyError, match="is not writable"):
        train_model(dataset, tmp_path / "ro", CONFIG)
    assert not (tmp_path / "ro").exists()


def test_an_out_naming_a_sweeps_ratio_is_refused(dataset: Path, tmp_path: Path,
                                                 monkeypatch) -> None:
    """train SWEEP/r1 --out SWEEP/r1 wrote a model there, and SWEEP/r1 then named the
    model folder: train, predict and evaluate of SWEEP/r1 said "not a dataset"."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"datasets": {"r1": "Dataset800_X_r1"}}))
    _no_work(monkeypatch)

    with pytest.raises(MedlossyError, match="names a ratio's dataset of the sweep"):
        train_model(dataset, sweep / "r1", CONFIG)
    assert sorted(p.name for p in sweep.iterdir()) == ["sweep.json"]


def test_other_seed_differs_and_replaces_a_foreign_checkpoint_when_asked(
        model: Path, dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(model / CHECKPOINT_FILE, other / CHECKPOINT_FILE)  # made with seed 0

    train_model(dataset, other, replace(CONFIG, seed=1), replace=True)

    description = _description(other)
    assert description["training"]["iterations_this_run"] == 3 * 2  # started over
    assert [e["loss"] for e in description["training"]["history"]] != \
        [e["loss"] for e in _description(model)["training"]["history"]]
    assert not _identical(_weights(other), _weights(model))


def test_resume_after_an_interruption_matches_an_uninterrupted_run(
        model: Path, dataset: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "resumed"
    batch = PatchSampler.batch
    calls = []

    def interrupt_in_epoch_3(self):
        calls.append(1)
        if len(calls) > 2 * CONFIG.iterations_per_epoch:  # first batch of epoch 3
            raise KeyboardInterrupt
        return batch(self)

    with monkeypatch.context() as patch:
        patch.setattr(PatchSampler, "batch", interrupt_in_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            train_model(dataset, out, CONFIG)
    checkpoint = torch.load(out / CHECKPOINT_FILE, weights_only=False)
    assert checkpoint["epoch"] == 2
    assert not (out / MODEL_FILE).exists() and not (out / DESCRIPTION_FILE).exists()

    train_model(dataset, out, CONFIG)

    training = _description(out)["training"]
    assert training["iterations_this_run"] == CONFIG.iterations_per_epoch  # epoch 3 only
    assert training["history"][:2] == checkpoint["history"]
    assert training["history"] == _description(model)["training"]["history"]
    assert _identical(_weights(out), _weights(model))


def test_adamw_resumes_exactly_and_learns_differently_from_sgd(
        model: Path, dataset: Path, tmp_path: Path, monkeypatch) -> None:
    config = replace(CONFIG, optimizer="adamw", learning_rate=2e-3, weight_decay=1e-4)
    whole = train_model(dataset, tmp_path / "whole", config)
    batch, calls = PatchSampler.batch, []

    def interrupt_in_epoch_2(self):
        calls.append(1)
        if len(calls) > CONFIG.iterations_per_epoch:
            raise KeyboardInterrupt
        return batch(self)

    with monkeypatch.context() as patch:
        patch.setattr(PatchSampler, "batch", interrupt_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train_model(dataset, tmp_path / "resumed", config)
    state = torch.load(tmp_path / "resumed" / CHECKPOINT_FILE, weights_only=False)["optimizer"]
    assert all("exp_avg_sq" in moments for moments in state["state"].values())
    resumed = train_model(dataset, tmp_path / "resumed", config)

    assert _identical(_weights(resumed), _weights(whole))
    assert _description(whole)["config"]["optimizer"] == "adamw"
    assert not _identical(_weights(whole), _weights(model))


def test_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="optimizer must be one of"):
        replace(CONFIG, optimizer="lion")


def test_train_fraction_trains_on_the_fixed_subset(dataset: Path, tmp_path: Path) -> None:
    config = replace(CONFIG, train_fraction=0.5, epochs=1, iterations_per_epoch=1)

    trained_on = _description(train_model(dataset, tmp_path / "few", config))["trained_on"]

    full = kfold_splits(_cases(dataset), 2)[0]
    assert trained_on["train_cases"] == training_subset(full["train"], 0.5, 0)
    assert len(trained_on["train_cases"]) == 2  # round(0.5 * 3)
    assert trained_on["test_cases"] == full["test"]


def test_more_folds_than_labelled_cases_is_a_medlossy_error(dataset: Path,
                                                             tmp_path: Path) -> None:
    with pytest.raises(MedlossyError, match="7 folds need at least 7 labelled cases, got 6"):
        train_model(dataset, tmp_path / "m", replace(CONFIG, folds=7))
    assert not (tmp_path / "m").exists()


# Known: the training loader forks its workers from this threaded process (they share the
# prepared volumes copy-on-write; "spawn" would pickle every volume to every worker each epoch).
@pytest.mark.threaded_fork_allowed
def test_loader_workers_repeat_every_epoch_exactly_after_a_resume(
        dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """Batches made by two loader processes, seeded per (seed, epoch, process): a run
    interrupted before epoch 2 and resumed ends with the uninterrupted run's weights."""
    from medlossy.train import loop

    config = replace(CONFIG, epochs=2, loader_workers=2)
    straight = train_model(dataset, tmp_path / "straight", config)
    batches = loop.epoch_batches

    def interrupt_epoch_2(sampler, config, epoch, **options):
        if epoch == 1:
            raise KeyboardInterrupt
        return batches(sampler, config, epoch, **options)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "epoch_batches", interrupt_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train_model(dataset, tmp_path / "resumed", config)
    train_model(dataset, tmp_path / "resumed", config)
    assert _description(tmp_path / "resumed")["training"]["iterations_this_run"] == 2
    assert _identical(_weights(tmp_path / "resumed"), _weights(straight))


def test_speed_options_are_safe_on_cpu_and_leave_the_recipe_alone(
        model: Path, dataset: Path, tmp_path: Path) -> None:
    """channels-last trains the same model up to float rounding; compile is ignored on CPU;
    neither changes the recipe that names a cached unit."""
    fast = replace(CONFIG, channels_last=True, compile=True, pin_memory=True)
    assert fast.recipe() == CONFIG.recipe()
    train_model(dataset, tmp_path / "fast", fast)
    for name, value in _weights(tmp_path / "fast").items():
        assert torch.allclose(value, _weights(model)[name], atol=1e-4), name
