"""The nnU-Net v2 backend: environment, dataset linking, errors, and (slow, where nnunetv2 is
installed) an end-to-end run on CPU with nnU-Net's 1-epoch trainer."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlossy.errors import MedlossyError
from medlossy.nnunet import commands
from medlossy.nnunet.commands import NnunetFolders


def write_sphere_dataset(root: Path, cases: int = 5, size: int = 32, seed: int = 0) -> Path:
    """nnU-Net raw dataset of CT-like cubes with one bright sphere each (label 1)."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    grid = np.indices((size,) * 3)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for index in range(cases):
        centre = rng.uniform(size * 0.35, size * 0.65, 3)
        radius = rng.uniform(size * 0.18, size * 0.28)
        distance = np.sqrt(sum((grid[a] - centre[a]) ** 2 for a in range(3)))
        label = (distance <= radius).astype(np.uint8)
        image = rng.normal(0, 25, label.shape) + 200 * label - 50
        name = f"sphere_{index:03d}"
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine),
                 root / "imagesTr" / f"{name}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "sphere": 1},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


def test_missing_nnunet_tells_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(commands.shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(MedlossyError, match=r"pip install 'medlossy\[nnunet\]'"):
        commands.require_nnunet()


def test_train_nnunet_checks_installation_before_any_work(monkeypatch, tmp_path: Path) -> None:
    from medlossy.nnunet.run import train_nnunet

    monkeypatch.setattr(commands.shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    dataset = write_sphere_dataset(tmp_path / "Dataset990_Sphere", cases=1, size=8)
    with pytest.raises(MedlossyError, match="nnU-Net v2 is not installed"):
        train_nnunet(dataset, tmp_path / "model", configuration="3d_fullres", fold=0, folds=1)
    assert not (tmp_path / "model").exists()


def test_dataset_folder_must_be_named_like_nnunet(tmp_path: Path) -> None:
    assert commands.dataset_id(tmp_path / "Dataset812_AMOS_r20") == (812, "Dataset812_AMOS_r20")
    with pytest.raises(MedlossyError, match="DatasetXXX_Name"):
        commands.dataset_id(tmp_path / "amos")


def test_environment_points_nnunet_at_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    environment = NnunetFolders(tmp_path / "run").create().environment()
    assert environment["nnUNet_raw"] == str((tmp_path / "run" / "raw").resolve())
    assert environment["nnUNet_preprocessed"].endswith("preprocessed")
    assert environment["nnUNet_results"].endswith("results")
    assert int(environment["nnUNet_n_proc_DA"]) >= 1


def test_link_dataset_replaces_a_stale_link_of_the_same_id(tmp_path: Path) -> None:
    first = write_sphere_dataset(tmp_path / "a" / "Dataset990_Sphere", cases=1, size=8)
    second = write_sphere_dataset(tmp_path / "b" / "Dataset990_Sphere_r20", cases=1, size=8)
    folders = NnunetFolders(tmp_path / "run").create()
    folders.link_dataset(first)
    linked = folders.link_dataset(second)
    assert [p.name for p in folders.raw.iterdir()] == ["Dataset990_Sphere_r20"]
    assert (linked / "dataset.json").read_text() == (second / "dataset.json").read_text()


def test_a_failing_command_names_its_log(tmp_path: Path) -> None:
    script = "import sys; print('planning'); print('RuntimeError: no GPU'); sys.exit(3)"
    log = tmp_path / "logs" / "step.log"
    with pytest.raises(MedlossyError, match=r"step\.log: python.* failed \(exit 3\).*no GPU"):
        commands.run_logged([sys.executable, "-c", script], {}, log, quiet=True)
    assert "planning" in log.read_text()


def test_a_failing_command_names_the_store_a_worker_could_not_read(tmp_path: Path) -> None:
    # nnU-Net's loader and preprocessor run medlossy's reader in background workers; when one
    # dies, nnU-Net's last lines only say so: the error names the store (was: "One or more
    # background workers are no longer alive")
    script = ("import sys, traceback\n"
              "from medlossy.errors import MedlossyError\n"
              "try:\n"
              "    raise MedlossyError('case003_0000.zarr', 'slice 26 is corrupt')\n"
              "except MedlossyError:\n"
              "    traceback.print_exc(file=sys.stdout)\n"
              "print('Traceback (most recent call last):')\n"
              "print('  File \"nondet_multi_threaded_augmenter.py\", line 206')\n"
              "print('RuntimeError: One or more background workers are no longer alive')\n"
              "sys.exit(1)\n")
    source = str(Path(commands.__file__).parents[2])  # the child imports this medlossy
    log = tmp_path / "train.log"
    with pytest.raises(MedlossyError, match=r"train\.log: python.* failed \(exit 1\): "
                                            r"case003_0000\.zarr: slice 26 is corrupt$"):
        commands.run_logged([sys.executable, "-c", script], {"PYTHONPATH": source}, log,
                            quiet=True)


@pytest.mark.parametrize("content", [{"notes.txt": "mine"}, {"scan.nii.gz": "mine"}],
                         ids=["other files", "volumes without nnU-Net's marker"])
def test_predict_never_replaces_a_folder_it_did_not_write(tmp_path: Path, content) -> None:
    from medlossy.nnunet.run import predict_nnunet

    out = tmp_path / "results"
    out.mkdir()
    for name, text in content.items():
        (out / name).write_text(text)
    with pytest.raises(MedlossyError, match="choose a new or empty folder"):
        predict_nnunet(tmp_path / "model", tmp_path, out)
    assert {p.name: p.read_text() for p in out.iterdir()} == content


def test_predict_refuses_a_folder_that_is_no_model(tmp_path: Path) -> None:
    from medlossy.nnunet.run import predict_nnunet

    with pytest.raises(MedlossyError, match="not a medlossy nnU-Net model folder"):
        predict_nnunet(tmp_path, tmp_path, tmp_path / "out")


@pytest.mark.parametrize("names", [("model.pt", "model.json", "checkpoint.pt"), (".DS_Store",)])
def test_train_nnunet_refuses_a_folder_of_other_files_before_any_work(
        tmp_path: Path, names: tuple[str, ...], monkeypatch) -> None:
    """--backend nnunet into a built-in model's folder (or one holding a .DS_Store) wrote its
    description and nnunet/ beside them, and planned there."""
    from medlossy.nnunet import run

    pytest.importorskip("nnunetv2")

    def plan(*args, **kwargs):
        raise AssertionError("nnU-Net planned")
    monkeypatch.setattr(run, "prepare", plan)
    dataset = write_sphere_dataset(tmp_path / "Dataset990_Sphere", cases=2, size=8)
    out = tmp_path / "model"
    out.mkdir()
    for name in names:
        (out / name).write_bytes(b"x")
    with pytest.raises(MedlossyError, match="holds files that are not an nnU-Net model's"):
        run.train_nnunet(dataset, out, configuration="3d_fullres", fold=0, folds=2)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_splits_are_the_study_folds_in_nnunet_format(tmp_path: Path) -> None:
    from medlossy.datasets.nnunet_raw import open_raw_dataset
    from medlossy.nnunet.run import study_splits
    from medlossy.train.splits import kfold_splits, training_subset

    dataset = open_raw_dataset(write_sphere_dataset(tmp_path / "Dataset990_Sphere", cases=7,
                                                    size=8))
    names = [f"sphere_{i:03d}" for i in range(7)]
    splits = study_splits(dataset, 3, 1.0)
    assert [s["val"] for s in splits] == [s["test"] for s in kfold_splits(names, 3)]
    assert [s["train"] for s in splits] == [s["train"] for s in kfold_splits(names, 3)]
    few = study_splits(dataset, 3, 0.5)
    assert few[1]["train"] == training_subset(splits[1]["train"], 0.5, 1)
    assert few[1]["val"] == splits[1]["val"]


def test_backend_options_are_checked_before_any_work() -> None:
    from medlossy.backends import TrainRequest, get_backend

    backend = get_backend("nnunet")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['preset'\]"):
        backend.recipe(TrainRequest(options={"preset": "lowres"}))
    with pytest.raises(ValueError, match="plans must be one of"):
        backend.recipe(TrainRequest(options={"plans": "x20"}))
    recipe = backend.recipe(TrainRequest(epochs=7, iterations_per_epoch=3))
    assert (recipe["epochs"], recipe["iterations_per_epoch"]) == (7, 3)
    assert recipe["configuration"] == "3d_lowres" and recipe["trainer"] == "MedlossyTrainer"


def test_a_conversion_killed_midway_leaves_no_stores_behind_after_the_rerun(
        tmp_path: Path, monkeypatch) -> None:
    # kill -9 during the conversion into stores left the atomic write's temporary folder
    # (every store converted so far) beside nnU-Net's folder; the rerun converted again but
    # kept it for good
    from medlossy.nnunet.run import store_preprocessed
    from medlossy.nnunet.storage import parse_storage

    prepared = NnunetFolders(tmp_path / "prep")
    dataset = prepared.preprocessed / "Dataset990_Sphere"
    dataset.mkdir(parents=True)
    plans = {"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}}}
    prepared.plans("Dataset990_Sphere").write_text(json.dumps(plans))
    folder = "nnUNetPlans_3d_fullres_medlossy_htj2k_lossless_t128"
    killed = dataset / f".{folder}.partial-0123abcd"
    (killed / "case000_0000.zarr").mkdir(parents=True)
    other = dataset / ".nnUNetPlans_3d_fullres_medlossy_htj2k_x20_t128.partial-0123abcd"
    other.mkdir()  # another storage's conversion, perhaps running now: not this one's

    def convert(arguments, folders, log, *, quiet=False) -> None:
        (folders.preprocessed / arguments[1] / folder).mkdir()
        (folders.preprocessed / arguments[1] / f"{folder}.json").write_text("{}")

    monkeypatch.setattr(commands, "worker", convert)
    assert store_preprocessed(prepared, "Dataset990_Sphere", "3d_fullres",
                              parse_storage("lossless"), quiet=True) == folder
    assert sorted(p.name for p in dataset.iterdir()) == sorted(
        [other.name, folder, f"{folder}.json", "nnUNetPlans.json"])


@pytest.mark.parametrize("setting, expected", [("1", 1), ("3", 3), ("4,2", None), ("x", None),
                                               (None, None)])
def test_cpu_training_uses_the_threads_omp_num_threads_allows(
        monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: int | None) -> None:
    """nnU-Net's CPU training took every core even with OMP_NUM_THREADS=1 (a test study beside
    another job ran 14 times slower with two spinning threads on two cores)."""
    from medlossy.nnunet import worker

    if setting is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", setting)
    assert worker._cpu_threads() == (expected or os.cpu_count())
