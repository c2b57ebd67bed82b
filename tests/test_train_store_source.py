"""The built-in backend trains from compressed stores exactly as from their decoded copies."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medlossy.cli.main import main as cli_main
from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.errors import MedlossyError
from medlossy.evaluate.evaluate import evaluate_predictions
from medlossy.train.config import TrainConfig
from medlossy.train.inference import predict_dataset
from medlossy.train.loop import MODEL_FILE, train_model

CONFIG = TrainConfig.from_preset(
    "lowres", target_spacing=(6.0, 6.0, 6.0), patch_size=(16, 16, 16), filters=(4, 8, 16),
    epochs=2, iterations_per_epoch=2, batch_size=1, folds=2, fold=0, seed=0, device="cpu")


@pytest.fixture(scope="module")
def sweep_r5(tmp_path_factory) -> Path:
    """A phantom dataset compressed at x5: stores and the decoded nnU-Net dataset."""
    root = tmp_path_factory.mktemp("store_source")
    source = write_phantom_dataset(root / "data", 4,
                                   PhantomConfig(shape=(40, 40, 24), spacing=(6.0, 6.0, 6.0)))
    out = root / "sweep"
    assert cli_main(["dataset", "compress", str(source), "--ratios", "5", "--out", str(out),
                     "--quiet", "--workers", "1"]) == 0
    (decoded,) = sorted((out / "nnunet").iterdir())
    return decoded


@pytest.mark.slow
def test_store_and_decoded_copies_train_the_same_model_and_dice(sweep_r5, tmp_path):
    stores = json.loads((sweep_r5 / "dataset.json").read_text())["medlossy"]["stores"]
    assert (sweep_r5 / stores).resolve().is_dir()
    from_nifti = train_model(sweep_r5, tmp_path / "nifti", CONFIG)
    from_store = train_model(sweep_r5, tmp_path / "store", replace(CONFIG, source="store"))
    nifti_weights = torch.load(from_nifti / MODEL_FILE, weights_only=True)["network"]
    store_weights = torch.load(from_store / MODEL_FILE, weights_only=True)["network"]
    assert nifti_weights.keys() == store_weights.keys()
    for key in nifti_weights:
        torch.testing.assert_close(store_weights[key], nifti_weights[key], rtol=1e-6, atol=1e-7)
    dice = {}
    for name, model in (("nifti", from_nifti), ("store", from_store)):
        predict_dataset(model, sweep_r5, tmp_path / f"pred_{name}", device="cpu")
        table = evaluate_predictions(tmp_path / f"pred_{name}", sweep_r5, only_predicted=True)
        dice[name] = table[table["metric"] == "dice"]["value"].to_numpy()
    assert dice["nifti"].size > 0
    np.testing.assert_allclose(dice["store"], dice["nifti"], atol=1e-6)


@pytest.mark.slow
def test_store_source_reads_the_stores_not_the_decoded_images(sweep_r5, tmp_path):
    """Proof that the stores are read: decoded images deleted, store training still runs."""
    copy = tmp_path / sweep_r5.name
    shutil.copytree(sweep_r5, copy)
    document = json.loads((copy / "dataset.json").read_text())
    document["medlossy"]["stores"] = str((sweep_r5 / document["medlossy"]["stores"]).resolve())
    (copy / "dataset.json").write_text(json.dumps(document))
    for image in (copy / "imagesTr").iterdir():
        image.write_bytes(b"not an image")
    model = train_model(copy, tmp_path / "model", replace(CONFIG, source="store", epochs=1))
    assert (model / MODEL_FILE).exists()
    with pytest.raises(MedlossyError):
        train_model(copy, tmp_path / "nifti", replace(CONFIG, epochs=1))


def test_store_source_needs_a_sweep_dataset(tmp_path):
    plain = write_phantom_dataset(tmp_path / "plain", 4,
                                  PhantomConfig(shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0)))
    with pytest.raises(MedlossyError, match="medlossy dataset compress"):
        train_model(plain, tmp_path / "m", replace(CONFIG, source="store"))


def test_an_unknown_source_is_refused():
    with pytest.raises(ValueError, match="source must be nifti or store"):
        replace(CONFIG, source="tape")


def test_a_stores_only_dataset_is_read_through_its_links(tmp_path):
    # `dataset compress --layout stores` writes links (CASE_0000.mlstore), no decoded copy:
    # the built-in backend refused them ("unknown image format"), in training, and prediction
    # named its output CASE.mlstore (nibabel: "Cannot work out file type")
    from medlossy.datasets.nnunet_raw import open_raw_dataset
    from medlossy.train.preprocessing import load_case, store_folder

    source = write_phantom_dataset(tmp_path / "data", 4,
                                   PhantomConfig(shape=(32, 32, 16), spacing=(6.0, 6.0, 6.0)))
    out = tmp_path / "sweep"
    assert cli_main(["dataset", "compress", str(source), "--ratios", "5", "--out", str(out),
                     "--layout", "stores", "--quiet", "--workers", "1"]) == 0
    (folder,) = sorted((out / "nnunet").iterdir())
    dataset = open_raw_dataset(folder)
    cases = list(dataset.cases())
    assert cases and all(case.images[0].suffix == ".mlstore" for case in cases)
    for case in cases:
        linked = load_case(dataset, case)
        stored = load_case(dataset, case, store_folder(dataset))
        np.testing.assert_array_equal(linked.channels, stored.channels)
        np.testing.assert_array_equal(linked.affine, stored.affine)
        assert linked.spacing == stored.spacing
    model = train_model(folder, tmp_path / "model", replace(CONFIG, epochs=1,
                                                            iterations_per_epoch=1))
    predicted = predict_dataset(model, folder, tmp_path / "pred", device="cpu")
    assert predicted and all(path.name.endswith(".nii.gz") for path in predicted)
    table = evaluate_predictions(tmp_path / "pred", folder, only_predicted=True)
    assert (table["metric"] == "dice").any()
