"""nnU-Net v2 reads medlossy stores (``medlossy.nnunet.store_io``): the same arrays, spacing
and affines as nnU-Net's own ``NibabelIOWithReorient`` on the decoded .nii.gz (oblique and
flipped grids, several channels); stores-only sweeps (``--layout stores``) that nnU-Net's
``verify_dataset_integrity`` and fingerprint extraction accept, in this process (a thread
pool stands in for nnU-Net's process pool); ``--nnunet-raw`` registration; and (slow) the
backend planning and preprocessing such a dataset through nnU-Net's own command."""

from __future__ import annotations

import gzip
import json
import multiprocessing.pool
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from nnunetv2.evaluation import evaluate_predictions as nnunet_evaluate
from nnunetv2.experiment_planning import verify_dataset_integrity as nnunet_verify
from nnunetv2.experiment_planning.dataset_fingerprint import (
    fingerprint_extractor,
)
from nnunetv2.imageio.nibabel_reader_writer import NibabelIO, NibabelIOWithReorient
from nnunetv2.imageio.reader_writer_registry import (
    determine_reader_writer_from_dataset_json,
    recursive_find_reader_writer_by_name,
)
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from medlossy.cli.main import main as cli_main
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.nnunet.store_io import MedlossyStoreIO, register
from medlossy.store.link import LINK_ENDING, NNUNET_READER, write_store_link


def _rotation(x_degrees: float, y_degrees: float) -> np.ndarray:
    a, b = np.radians(x_degrees), np.radians(y_degrees)
    about_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return about_y @ about_x


def _ct(seed: int = 0) -> nib.Nifti1Image:
    """int16 HU stored slices first, two axes flipped (LPS-like): nnU-Net's reorientation
    moves every axis."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:8, 0:64, 0:64]
    body = ((y - 32) / 26) ** 2 + ((x - 30) / 22) ** 2 < 1
    organ = ((y - 36) / 9) ** 2 + ((x - 24) / 7) ** 2 + ((z - 4) / 5) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0) + np.where(organ, 60.0, 0.0) + rng.normal(0, 12, z.shape)
    affine = np.array([[0.0, -0.78, 0.0, 120.0], [0.0, 0.0, -0.78, 95.0],
                       [2.5, 0.0, 0.0, -310.0], [0.0, 0.0, 0.0, 1.0]])
    return nib.Nifti1Image(np.rint(hu).astype(np.int16), affine)


def _mr(seed: int = 1) -> nib.Nifti1Image:
    """uint8 T1-like on an oblique grid (sform and qform) with a flipped first axis."""
    rng = np.random.default_rng(seed)
    x, y, _ = np.mgrid[0:64, 0:64, 0:8]
    head = ((x - 32) / 27) ** 2 + ((y - 32) / 30) ** 2 < 1
    brain = ((x - 32) / 21) ** 2 + ((y - 33) / 24) ** 2 < 1
    t1 = np.where(head, 250.0, 0.0) - np.where(brain, 150.0, 0.0) + rng.normal(0, 6, x.shape)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(18, -9) @ np.diag([-0.9, 0.9, 3.0])
    affine[:3, 3] = (28.0, -31.0, 12.0)
    image = nib.Nifti1Image(np.clip(np.rint(t1), 0, 255).astype(np.uint8), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    return image


def _run(*arguments: object) -> int:
    return cli_main([str(a) for a in arguments])


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(store, decoded .nii.gz) per source, written by the CLI at x8; "mr2" is a second
    channel on the MR's grid."""
    root = tmp_path_factory.mktemp("nnunet-store-io")
    made = {}
    for name, image, modality in (("ct", _ct(), "CT"), ("mr", _mr(), "MR"),
                                  ("mr2", _mr(seed=5), "MR")):
        source, store, decoded = (root / f"{name}.nii.gz", root / f"{name}.zarr",
                                  root / f"{name}_decoded.nii.gz")
        nib.save(image, source)
        assert _run("compress", source, store, "--ratio", 8, "--modality", modality,
                    "--quiet") == 0
        assert _run("decompress", store, decoded, "--quiet") == 0
        made[name] = store, decoded
    return made


def _assert_same(ours: tuple[np.ndarray, dict], theirs: tuple[np.ndarray, dict]) -> None:
    assert ours[0].dtype == theirs[0].dtype == np.float32
    np.testing.assert_array_equal(ours[0], theirs[0])
    assert ours[1]["spacing"] == theirs[1]["spacing"]
    for key in ("original_affine", "reoriented_affine"):
        np.testing.assert_array_equal(ours[1]["nibabel_stuff"][key],
                                      theirs[1]["nibabel_stuff"][key])


@pytest.mark.parametrize("name", ["ct", "mr"])
def test_a_store_reads_as_nnunet_reads_its_decoded_file(stores, tmp_path: Path,
                                                        name: str) -> None:
    store, decoded = stores[name]
    theirs = NibabelIOWithReorient().read_images([str(decoded)])
    link = tmp_path / f"case_0000{LINK_ENDING}"
    write_store_link(link, store)
    for given in (store, link):
        _assert_same(MedlossyStoreIO().read_images([str(given)]), theirs)
    # the grid was really turned: not what nnU-Net reads without reorienting
    unturned = NibabelIO().read_images([str(decoded)])[0]
    assert unturned.shape != theirs[0].shape or not np.array_equal(unturned, theirs[0])


def test_channels_of_a_case_stack_like_nnunets(stores, tmp_path: Path) -> None:
    (mr, mr_decoded), (mr2, mr2_decoded) = stores["mr"], stores["mr2"]
    links = []
    for channel, store in enumerate((mr, mr2)):
        links.append(tmp_path / f"case_{channel:04d}{LINK_ENDING}")
        write_store_link(links[-1], store)
    ours = MedlossyStoreIO().read_images([str(link) for link in links])
    theirs = NibabelIOWithReorient().read_images([str(mr_decoded), str(mr2_decoded)])
    assert ours[0].shape[0] == 2
    _assert_same(ours, theirs)
    with pytest.raises(RuntimeError, match="not all channels have the same"):
        MedlossyStoreIO().read_images([str(mr), str(stores["ct"][0])])


def test_labels_are_read_and_predictions_written_as_nnunet_does(stores,
                                                                tmp_path: Path) -> None:
    _, decoded = stores["mr"]
    label = nib.Nifti1Image((np.asarray(nib.load(decoded).dataobj) > 120).astype(np.uint8),
                            nib.load(decoded).affine)
    nib.save(label, tmp_path / "case.nii.gz")
    ours = MedlossyStoreIO().read_seg(str(tmp_path / "case.nii.gz"))
    theirs = NibabelIOWithReorient().read_seg(str(tmp_path / "case.nii.gz"))
    _assert_same(ours, theirs)
    # nnU-Net names a prediction with the dataset's file ending, which it also lists to
    # evaluate: the NIfTI file keeps that name, and reads back as the label it holds
    MedlossyStoreIO().write_seg(ours[0][0].astype(np.uint8), str(tmp_path / f"p{LINK_ENDING}"),
                                ours[1])
    NibabelIOWithReorient().write_seg(theirs[0][0].astype(np.uint8),
                                      str(tmp_path / "q.nii.gz"), theirs[1])
    assert sorted(p.name for p in tmp_path.glob("p*")) == [f"p{LINK_ENDING}"]
    written = nib.Nifti1Image.from_bytes(
        gzip.decompress((tmp_path / f"p{LINK_ENDING}").read_bytes()))
    expected = nib.load(tmp_path / "q.nii.gz")
    np.testing.assert_array_equal(written.get_fdata(), expected.get_fdata())
    _assert_same(MedlossyStoreIO().read_seg(str(tmp_path / f"p{LINK_ENDING}")), theirs)
    np.testing.assert_array_equal(written.affine, label.affine)


def test_nnunet_finds_the_registered_reader_by_name_and_ending() -> None:
    register()
    register()  # twice changes nothing
    assert MedlossyStoreIO.__name__ == NNUNET_READER
    assert recursive_find_reader_writer_by_name(NNUNET_READER) is MedlossyStoreIO
    assert determine_reader_writer_from_dataset_json(
        {"file_ending": LINK_ENDING}, verbose=False) is MedlossyStoreIO
    assert determine_reader_writer_from_dataset_json(
        {"overwrite_image_reader_writer": NNUNET_READER, "file_ending": LINK_ENDING},
        verbose=False) is MedlossyStoreIO


def _two_channel_dataset(root: Path, cases: int = 3) -> Path:
    """nnU-Net raw dataset: two CT channels on an oblique, flipped 40x36x8 grid, a blob."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0, 12) @ np.diag([-0.8, 0.9, 2.5])
    affine[:3, 3] = (10.0, -20.0, 5.0)
    x, y, z = np.indices((40, 36, 8))
    for index in range(cases):
        label = (np.sqrt((x - 20) ** 2 + (y - 18) ** 2 + ((z - 4) * 3) ** 2) < 6 + index
                 ).astype(np.uint8)
        for channel in range(2):
            image = rng.normal(0, 20, label.shape) + 300.0 * label - 100 + 50 * channel
            nib.save(nib.Nifti1Image(image.astype(np.int16), affine),
                     root / "imagesTr" / f"case{index}_{channel:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case{index}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "CT"}, "labels": {"background": 0, "blob": 1},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


@pytest.fixture(scope="module")
def stores_sweep(tmp_path_factory) -> SimpleNamespace:
    """A stores-only sweep (ratios 1 and 4) registered in a raw folder of its own."""
    root = tmp_path_factory.mktemp("stores-sweep")
    source = _two_channel_dataset(root / "Dataset700_Blob")
    out, raw = root / "sweep", root / "raw"
    assert _run("dataset", "compress", source, "--ratios", "1,4", "--out", out, "--layout",
                "stores", "--nnunet-raw", raw, "--base-id", 710, "--workers", 1,
                "--quiet") == 0
    return SimpleNamespace(source=source, out=out, raw=raw,
                           r4=raw / "Dataset711_Blob_r4", r1=raw / "Dataset710_Blob_r1")


def test_a_stores_sweep_holds_no_decoded_copy(stores_sweep) -> None:
    dataset = stores_sweep.r4
    assert dataset.is_symlink() and dataset.resolve() == (stores_sweep.out / "nnunet" /
                                                           dataset.name).resolve()
    images = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    assert images == [f"case{i}_{c:04d}{LINK_ENDING}" for i in range(3) for c in range(2)]
    assert not list(stores_sweep.out.rglob("*_000?.nii*"))
    for case in range(3):  # labels: bit-exact NIfTI copies
        name = f"case{case}.nii.gz"
        assert (dataset / "labelsTr" / name).read_bytes() == \
            (stores_sweep.source / "labelsTr" / name).read_bytes()
    description = json.loads((dataset / "dataset.json").read_text())
    assert description["file_ending"] == LINK_ENDING
    assert description["overwrite_image_reader_writer"] == NNUNET_READER
    cases = open_raw_dataset(dataset).cases()
    assert [case.label.name for case in cases] == [f"case{i}.nii.gz" for i in range(3)]
    assert _run("dataset", "verify", stores_sweep.out) == 0


def test_a_stores_sweep_has_monai_datalists(stores_sweep) -> None:
    """Datalists name the stores and the NIfTI labels (not labels ending in .mlstore)."""
    out = stores_sweep.out.parent / "datalists"
    assert _run("dataset", "datalist", stores_sweep.out, "--out", out) == 0
    datalist = json.loads((out / "r4.json").read_text())
    for entry in datalist["training"] + datalist["validation"]:
        assert entry["label"].endswith(".nii.gz") and "labelsTr/" in entry["label"]
        assert all(image.endswith(".zarr") for image in entry["image"])


def test_a_sweep_rerun_as_stores_drops_its_decoded_copies(tmp_path: Path) -> None:
    source = _two_channel_dataset(tmp_path / "Dataset720_Blob", cases=1)
    out = tmp_path / "sweep"
    common = ("--ratios", "4", "--out", out, "--base-id", 730, "--workers", 1, "--quiet")
    assert _run("dataset", "compress", source, *common) == 0
    images = out / "nnunet" / "Dataset730_Blob_r4" / "imagesTr"
    assert sorted(p.name for p in images.iterdir()) == ["case0_0000.nii.gz", "case0_0001.nii.gz"]
    assert _run("dataset", "compress", source, *common, "--layout", "stores") == 0
    assert sorted(p.name for p in images.iterdir()) == [f"case0_0000{LINK_ENDING}",
                                                        f"case0_0001{LINK_ENDING}"]
    assert _run("dataset", "verify", out) == 0


def test_a_stores_dataset_reads_as_its_decoded_twin(stores_sweep, tmp_path: Path) -> None:
    """The link of a registered dataset (through its symlink) gives what nnU-Net's reader
    gives on the decoded file of the same store."""
    link = stores_sweep.r4 / "imagesTr" / f"case1_0001{LINK_ENDING}"
    store = stores_sweep.out / "stores" / "r4" / "case1_0001.zarr"
    assert _run("decompress", store, tmp_path / "decoded.nii.gz", "--quiet") == 0
    _assert_same(MedlossyStoreIO().read_images([str(link)]),
                 NibabelIOWithReorient().read_images([str(tmp_path / "decoded.nii.gz")]))


def _in_process_pools(monkeypatch, module) -> None:
    """nnU-Net's spawn pool, replaced by threads of this process: the same calls, in
    seconds (spawned workers would import torch first)."""
    monkeypatch.setattr(module, "multiprocessing", SimpleNamespace(
        get_context=lambda method: SimpleNamespace(Pool=multiprocessing.pool.ThreadPool)))


def test_nnunet_verifies_a_stores_dataset(stores_sweep, monkeypatch, capsys) -> None:
    register()
    _in_process_pools(monkeypatch, nnunet_verify)
    nnunet_verify.verify_dataset_integrity(str(stores_sweep.r4), num_processes=1)
    assert "verify_dataset_integrity Done" in capsys.readouterr().out


def test_nnunet_fingerprints_a_stores_dataset(stores_sweep, monkeypatch,
                                              tmp_path: Path) -> None:
    register()
    _in_process_pools(monkeypatch, fingerprint_extractor)
    monkeypatch.setattr(fingerprint_extractor, "nnUNet_raw", str(stores_sweep.raw))
    monkeypatch.setattr(fingerprint_extractor, "nnUNet_preprocessed", str(tmp_path))
    extractor = fingerprint_extractor.DatasetFingerprintExtractor(stores_sweep.r4.name, 1)
    extractor.show_progress_bar = False
    fingerprint = extractor.run()
    # the reoriented grid, in nnU-Net's (z, y, x) order: 8 slices of 2.5 mm
    assert fingerprint["shapes_after_crop"] == [(8, 36, 40)] * 3
    np.testing.assert_allclose(fingerprint["spacings"], [[2.5, 0.9, 0.8]] * 3, rtol=1e-6)
    assert set(fingerprint["foreground_intensity_properties_per_channel"]) == {0, 1}


@pytest.mark.parametrize("content", [b"", b"\x1f\x8b\x08 cut short", b"\x00" * 400])
def test_a_mlstore_file_that_is_neither_link_nor_nifti_is_named(tmp_path: Path,
                                                                 content: bytes) -> None:
    from medlossy.errors import MedlossyError

    path = tmp_path / f"case{LINK_ENDING}"
    path.write_bytes(content)
    with pytest.raises(MedlossyError, match="neither a medlossy store link") as error:
        MedlossyStoreIO().read_seg(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_nnunet_finds_medlossys_trainer_by_name_without_importing_its_variants() -> None:
    """``nnUNetv2_predict -tr MedlossyTrainer`` (through the launcher): nnU-Net's lookup by
    name imported every trainer variant, one of which needs timm, and did not find the
    trainer anyway; registered, it is found in the first module the lookup imports."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from medlossy.nnunet.trainer import MedlossyTrainer
    from medlossy.nnunet.trainer import register as register_trainer

    before = set(sys.modules)
    register_trainer()
    register_trainer()  # twice changes nothing
    assert recursive_find_trainer_class_by_name("MedlossyTrainer") is MedlossyTrainer
    assert not [name for name in set(sys.modules) - before if ".variants" in name]


def test_nnunet_evaluates_predictions_of_a_stores_dataset_against_its_gt_copies(
        stores_sweep, monkeypatch, tmp_path: Path) -> None:
    """nnU-Net's evaluation chain on a stores dataset: its copies of the labels named with
    the dataset's ending (gt_segmentations/CASE.mlstore, as plan_and_preprocess writes
    them) against predictions its export names so too, listed, read and scored by
    nnU-Net's own compute_metrics_on_folder2 (nnUNetv2_evaluate_folder). Before: read_seg
    refused the copies ("not a medlossy store link") and predictions ended in .nii.gz."""
    register()
    _in_process_pools(monkeypatch, nnunet_evaluate)
    description = json.loads((stores_sweep.r4 / "dataset.json").read_text())
    ending = description["file_ending"]
    gt, predictions = tmp_path / "gt_segmentations", tmp_path / "predictions"
    gt.mkdir()
    predictions.mkdir()
    for case, files in get_filenames_of_train_images_and_targets(
            str(stores_sweep.r4), description).items():
        shutil.copyfile(files["label"], gt / f"{case}{ending}")  # nnU-Net's copy
    reader = determine_reader_writer_from_dataset_json(
        description, str(next(gt.iterdir())), verbose=False)()
    for index, case in enumerate(("case0", "case1", "case2")):
        seg, properties = reader.read_seg(str(gt / f"{case}{ending}"))
        if index == 0:
            truth = seg > 0
            seg[..., : seg.shape[-1] // 2] = 0  # half the blob missed
            missed = 2 * (truth & (seg > 0)).sum() / (truth.sum() + (seg > 0).sum())
        reader.write_seg(seg[0].astype(np.uint8), str(predictions / f"{case}{ending}"),
                         properties)
    plans = tmp_path / "plans.json"
    plans.write_text("{}")
    nnunet_evaluate.compute_metrics_on_folder2(
        str(gt), str(predictions), str(stores_sweep.r4 / "dataset.json"), str(plans),
        num_processes=1)
    summary = json.loads((predictions / "summary.json").read_text())
    dice = {Path(row["prediction_file"]).name: row["metrics"]["1"]["Dice"]
            for row in summary["metric_per_case"]}
    assert dice[f"case1{ending}"] == dice[f"case2{ending}"] == 1.0
    assert 0.4 < missed < 0.9
    assert dice[f"case0{ending}"] == pytest.approx(missed)


def test_registration_is_idempotent_and_refuses_a_taken_id(stores_sweep, tmp_path: Path,
                                                           capsys) -> None:
    arguments = ("dataset", "compress", stores_sweep.source, "--ratios", "1,4", "--out",
                 stores_sweep.out, "--layout", "stores", "--base-id", 710, "--workers", 1,
                 "--quiet")
    assert _run(*arguments, "--nnunet-raw", stores_sweep.raw) == 0  # all there already
    capsys.readouterr()
    taken = tmp_path / "raw"
    (taken / "Dataset711_Other").mkdir(parents=True)
    assert _run(*arguments, "--nnunet-raw", taken) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert error.startswith(f"medlossy: error: {taken / 'Dataset711_Other'}: ")
    assert "id 711" in error
    assert not (taken / "Dataset710_Blob_r1").exists()  # refused before linking any
    (taken / "Dataset711_Other").rmdir()
    (taken / "Dataset711_Blob_r4").mkdir()  # same name, but not this sweep's dataset
    assert _run(*arguments, "--nnunet-raw", taken) == 2
    assert "not a link" in capsys.readouterr().err


def test_registration_refuses_an_id_nnunet_keeps_plans_or_models_of_under_another_name(
        stores_sweep, tmp_path: Path, monkeypatch, capsys) -> None:
    # nnU-Net looks an id up in $nnUNet_raw, $nnUNet_preprocessed and $nnUNet_results
    # together: Dataset711_Other in nnUNet_results beside a registered Dataset711_Blob_r4
    # made every nnU-Net command on id 711 fail ("More than one dataset name found")
    arguments = ("dataset", "compress", stores_sweep.source, "--ratios", "1,4", "--out",
                 stores_sweep.out, "--layout", "stores", "--base-id", 710, "--workers", 1,
                 "--quiet", "--nnunet-raw", tmp_path / "raw")
    for name in ("nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path / name))
        (tmp_path / name).mkdir()
    (tmp_path / "nnUNet_preprocessed" / "Dataset710_Blob_r1").mkdir()  # its own plans: fine
    other = tmp_path / "nnUNet_results" / "Dataset711_Other"
    other.mkdir()
    assert _run(*arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"medlossy: error: {other}: ")
    assert "id 711" in error
    assert not (tmp_path / "raw" / "Dataset710_Blob_r1").exists()
    other.rmdir()
    assert _run(*arguments) == 0
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "Dataset710_Blob_r1", "Dataset711_Blob_r4"]


@pytest.mark.slow
def test_a_stores_sweep_trains_from_compressed_preprocessed_data_and_predicts(
        stores_sweep, tmp_path: Path) -> None:
    """The chain issue 23 asks CI to run, as a user types it: a stores-only sweep registered
    in a raw folder -> `medlossy train --backend nnunet --preprocessed lossless`: nnU-Net's
    own planning and preprocessing (the processes it spawns find the reader by name), its
    cases turned into 16-bit stores, 2 epochs of MedlossyTrainer reading them through
    nnU-Net's loader (with a decode cache) -> `medlossy predict` (NIfTI), its evaluation
    against the NIfTI labels -> nnUNetv2_predict through the launcher and nnU-Net's own
    evaluation. Several minutes on two busy cores."""
    import torch

    from medlossy.nnunet.run import checkpoint, evaluate_nnunet, read_model, study_splits

    model = tmp_path / "model"
    arguments = ["train", stores_sweep.r4, "--out", model, "--backend", "nnunet",
                 "--configuration", "3d_fullres", "--epochs", 2, "--iterations", 2,
                 "--validation-iterations", 1, "--folds", 3, "--fold", 0, "--device", "cpu",
                 "--preprocessed", "lossless", "--preprocessed-tile", 32, "--decode-cache", 16,
                 "--quiet"]
    assert _run(*arguments) == 0
    description = read_model(model)
    assert description["preprocessed_storage"] == {"storage": "lossless", "codec": "htj2k",
                                                   "tile": 32}
    assert description["training"]["preprocessed_folder"].endswith(
        "_medlossy_htj2k_lossless_t32")
    # --epochs, --iterations and --folds honoured (they were once ignored for nnU-Net's
    # 1000-epoch trainer on its own 5-fold split), with nnU-Net's recipe as the paper used
    # it: SGD Nesterov 0.99, lr 1e-2, poly decay 0.9
    final = torch.load(checkpoint(model), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and final["trainer_name"] == "MedlossyTrainer"
    assert len(final["logging"]["train_losses"]) == 2
    group = final["optimizer_state"]["param_groups"][0]
    assert group["momentum"] == 0.99 and group["nesterov"] and group["weight_decay"] == 3e-5
    assert final["logging"]["lrs"] == pytest.approx([1e-2, 1e-2 * 0.5 ** 0.9])
    splits = json.loads((model / "nnunet" / "splits_final.json").read_text())
    assert splits == study_splits(open_raw_dataset(stores_sweep.r4), 3, 1.0)
    assert description["test_cases"] == splits[0]["val"]
    logs = "".join(p.read_text() for p in (model / "nnunet").rglob("training_log_*.txt"))
    assert "MedlossyStoreDataset" in logs
    name = stores_sweep.r4.name
    prepared = Path(description["preprocessed"]) / "preprocessed" / name
    plans = json.loads((prepared / "nnUNetPlans.json").read_text())
    assert plans["image_reader_writer"] == NNUNET_READER
    assert plans["configurations"]["3d_fullres"]["spacing"] == pytest.approx([2.5, 0.9, 0.8])
    stored = json.loads((prepared / (description["training"]["preprocessed_folder"]
                                     .rsplit("/", 1)[-1] + ".json")).read_text())
    assert stored["cases"] == len(description["train_cases"]) + len(description["test_cases"])
    assert {channel["stored_as"] for case in stored["stored"].values() for channel in case} \
        == {"lossless"}

    assert _run("predict", model, stores_sweep.r4, "--out", tmp_path / "preds", "--device",
                "cpu", "--quiet") == 0
    held_out = description["test_cases"]
    assert sorted(p.name for p in (tmp_path / "preds").glob("case*")) == \
        [f"{case}.nii.gz" for case in held_out]
    table = evaluate_nnunet(model, stores_sweep.r4, tmp_path / "preds")
    assert set(table["case"]) == set(held_out)
    # A rerun finds the fold finished and does nothing; another storage is another model.
    mtime = checkpoint(model).stat().st_mtime_ns
    assert _run(*arguments) == 0 and checkpoint(model).stat().st_mtime_ns == mtime
    assert _run(*arguments[:-7], "--preprocessed", "x10", "--quiet") == 2

    # nnU-Net's own chain, as the docs type it: nnUNetv2_predict through the launcher finds
    # MedlossyTrainer (before: the lookup imported a variant that needs timm, and could not
    # find the trainer anyway), names its predictions with the dataset's ending, and its
    # evaluation scores them against its copies of the labels (gt_segmentations)
    inputs, out = tmp_path / "inputs", tmp_path / "nnunet-preds"
    inputs.mkdir()
    for case in held_out:
        for channel in range(2):
            name = f"{case}_{channel:04d}{LINK_ENDING}"
            (inputs / name).symlink_to(stores_sweep.r4 / "imagesTr" / name)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
                   "nnUNet_raw": str(prepared.parent.parent / "raw"),
                   "nnUNet_preprocessed": str(prepared.parent),
                   "nnUNet_results": str(model / "nnunet" / "results")}
    launched = subprocess.run(
        [sys.executable, "-m", "medlossy.nnunet.launch", "nnUNetv2_predict", "-i", inputs,
         "-o", out, "-d", "711", "-c", "3d_fullres", "-f", "0", "-tr", "MedlossyTrainer",
         "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"],
        env=environment, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert sorted(p.name for p in out.glob("case*")) == \
        [f"{case}{LINK_ENDING}" for case in held_out]
    register()
    nnunet_evaluate.compute_metrics_on_folder2(
        str(prepared / "gt_segmentations"), str(out), str(prepared / "dataset.json"),
        str(prepared / "nnUNetPlans.json"), num_processes=1, chill=True)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(Path(row["reference_file"]).name for row in summary["metric_per_case"]) \
        == [f"{case}{LINK_ENDING}" for case in held_out]


def test_a_model_of_decoded_images_refuses_a_stores_dataset(stores_sweep,
                                                             tmp_path: Path) -> None:
    """nnU-Net lists a prediction's inputs by the training dataset's file ending: a mismatch
    would find no image, so it is refused, naming the dataset."""
    from medlossy.errors import MedlossyError
    from medlossy.nnunet.run import _check_file_ending

    trained = tmp_path / "dataset.json"
    trained.write_text(json.dumps({"file_ending": ".nii.gz"}))
    with pytest.raises(MedlossyError, match=r"images end in \.mlstore, the model's training"):
        _check_file_ending(trained, open_raw_dataset(stores_sweep.r4))
    trained.write_text(json.dumps({"file_ending": LINK_ENDING}))
    _check_file_ending(trained, open_raw_dataset(stores_sweep.r4))
