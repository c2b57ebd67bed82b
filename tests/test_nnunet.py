"""The nnU-Net v2 backend: environment, dataset linking, errors, and (slow, where nnunetv2 is
installed) an end-to-end run on CPU with nnU-Net's 1-epoch trainer."""

from __future__ import annotations

import json
import sys
import time
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
        train_nnunet(dataset, tmp_path / "model", "3d_fullres", 0)
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


def test_predict_refuses_a_folder_that_is_no_model(tmp_path: Path) -> None:
    from medlossy.nnunet.run import predict_nnunet

    with pytest.raises(MedlossyError, match="not a medlossy nnU-Net model folder"):
        predict_nnunet(tmp_path, tmp_path, tmp_path / "out")


@pytest.mark.slow
def test_end_to_end_on_cpu(tmp_path: Path) -> None:
    """Sweep (x1, x20) -> nnU-Net plan/preprocess/train (1 epoch, CPU) on x1 -> predict the
    held-out case at both ratios -> the tidy table. Several minutes on two cores."""
    pytest.importorskip("nnunetv2")
    # nnU-Net builds its network through timm, which needs torchvision: an install without
    # it (pip --no-deps next to a CPU torch) cannot train, so it skips too.
    pytest.importorskip("torchvision")
    from medlossy.datasets.nnunet_raw import open_raw_dataset
    from medlossy.datasets.sweep import plan_sweep, run_sweep
    from medlossy.nnunet.run import held_out_cases, read_model, train_nnunet
    from medlossy.pretrained.evaluate import evaluate_pretrained, sweep_datasets

    source = write_sphere_dataset(tmp_path / "Dataset990_Sphere")
    run_sweep(plan_sweep(open_raw_dataset(source), tmp_path / "sweep", [1, 20], base_id=990),
              workers=1)
    started = time.perf_counter()
    model = train_nnunet(sweep_datasets(tmp_path / "sweep")[1.0], tmp_path / "model",
                         config="3d_fullres", fold=0, trainer="nnUNetTrainer_1epoch",
                         device="cpu", processes=1)
    trained = time.perf_counter() - started
    assert read_model(model)["status"] == "trained"
    held_out = held_out_cases(model)
    assert held_out and len(held_out) == 1  # 5 cases, nnU-Net's 5-fold split
    table = evaluate_pretrained(model, tmp_path / "sweep", arch="nnunet", device="cpu",
                                predictions=tmp_path / "predictions")
    total = time.perf_counter() - started
    assert set(table["case"]) == set(held_out)
    assert set(table["ratio_test"]) == {1.0, 20.0}
    assert (table["ratio_train"] == 1.0).all() and (table["fold"] == 0).all()
    dice = table[table["class"] == "sphere"].set_index("ratio_test")["value"]
    assert dice.between(0, 1).all() and not dice.isna().any()
    print(f"\nnnU-Net end to end: train {trained:.0f} s, total {total:.0f} s, "
          f"sphere Dice by test ratio {dice.to_dict()}")
    # One epoch (250 iterations) already finds a bright sphere in uncompressed images.
    assert dice[1.0] > 0.5
