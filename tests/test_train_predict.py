"""predict_dataset / load_model and the train -> predict command line, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
from medlossy.errors import MedlossyError
from medlossy.train.config import TrainConfig
from medlossy.train.inference import load_model, predict_dataset
from medlossy.train.loop import train_model

CONFIG = TrainConfig.from_preset(
    "lowres", target_spacing=(6.0, 6.0, 6.0), patch_size=(16, 16, 16), filters=(4, 8, 16),
    epochs=2, iterations_per_epoch=2, batch_size=1, folds=2, fold=0, seed=0, device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("data"), 6,
                                 PhantomConfig(shape=(24, 24, 16), spacing=(6.0, 6.0, 6.0)))


@pytest.fixture(scope="module")
def model(dataset: Path, tmp_path_factory) -> Path:
    return train_model(dataset, tmp_path_factory.mktemp("runs") / "model", CONFIG)


@pytest.fixture(scope="module")
def predictions(model: Path, dataset: Path, tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("predictions")
    return out, predict_dataset(model, dataset, out, device="cpu")


def _test_cases(model: Path) -> list[str]:
    return json.loads((model / "model.json").read_text())["trained_on"]["test_cases"]


def _copy_dataset(source: Path, target: Path, cases: list[str]) -> Path:
    """The named cases of ``source`` as a dataset of their own."""
    for folder in ("imagesTr", "labelsTr"):
        (target / folder).mkdir(parents=True)
        for path in (source / folder).iterdir():
            if path.name.split(".")[0].removesuffix("_0000") in cases:
                shutil.copy(path, target / folder / path.name)
    shutil.copy(source / "dataset.json", target / "dataset.json")
    return target


def test_predicts_exactly_the_models_held_out_cases(model: Path, predictions) -> None:
    out, written = predictions

    assert sorted(p.name for p in written) == [f"{c}.nii.gz" for c in _test_cases(model)]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)


def test_label_maps_have_the_images_shape_and_affine(dataset: Path, predictions) -> None:
    _, written = predictions

    for path in written:
        image = nib.load(dataset / "imagesTr" / path.name.replace(".nii.gz", "_0000.nii.gz"))
        prediction = nib.load(path)
        assert prediction.shape == image.shape
        np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-5)


def test_label_maps_are_uint8_within_the_datasets_labels(dataset: Path, predictions) -> None:
    labels = set(json.loads((dataset / "dataset.json").read_text())["labels"].values())

    for path in predictions[1]:
        prediction = nib.load(path)
        assert prediction.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(prediction.dataobj)).tolist()) <= labels


def test_rerun_keeps_existing_predictions(model: Path, dataset: Path, tmp_path: Path,
                                          predictions) -> None:
    out = tmp_path / "resume"
    shutil.copytree(predictions[0], out)
    first = sorted(out.iterdir())[0]
    marker = nib.Nifti1Image(np.full(nib.load(first).shape, 1, np.uint8), nib.load(first).affine)
    nib.save(marker, first)
    times = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    written = predict_dataset(model, dataset, out, device="cpu")

    assert sorted(written) == sorted(out.iterdir())
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == times
    assert np.all(np.asarray(nib.load(first).dataobj) == 1)


def test_dataset_with_another_channel_set_is_refused(model: Path, dataset: Path,
                                                     tmp_path: Path) -> None:
    other = _copy_dataset(dataset, tmp_path / "Dataset951_TwoChannel", _test_cases(model))
    for image in list((other / "imagesTr").iterdir()):
        shutil.copy(image, image.with_name(image.name.replace("_0000", "_0001")))
    metadata = json.loads((other / "dataset.json").read_text())
    metadata["channel_names"] = {"0": "CT", "1": "CT"}
    (other / "dataset.json").write_text(json.dumps(metadata))

    with pytest.raises(MedlossyError, match=r"has channels \[0, 1\]; the model was trained "
                                            r"on \['0'\]"):
        predict_dataset(model, other, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_dataset_without_the_held_out_cases_is_refused(model: Path, dataset: Path,
                                                       tmp_path: Path) -> None:
    train_cases = json.loads((model / "model.json").read_text())["trained_on"]["train_cases"]
    other = _copy_dataset(dataset, tmp_path / "Dataset952_TrainOnly", train_cases)

    with pytest.raises(MedlossyError, match="none of the model's test cases"):
        predict_dataset(model, other, tmp_path / "out", device="cpu")


def test_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MedlossyError, match="not a trained model"):
        load_model(tmp_path, device="cpu")


def test_cli_train_then_predict(dataset: Path, tmp_path: Path, cli) -> None:
    model, out = tmp_path / "M", tmp_path / "P"

    trained = cli("train", dataset, "--out", model, "--folds", "2", "--fold", "1",
                  "--epochs", "1", "--iterations", "2", "--batch-size", "1",
                  "--patch-size", "32,32,32", "--device", "cpu", "--quiet")
    predicted = cli("predict", model, dataset, "--out", out, "--device", "cpu", "--quiet")

    assert trained[0] == 0 and predicted[0] == 0, (trained, predicted)
    description = json.loads((model / "model.json").read_text())
    assert description["trained_on"]["fold"] == 1
    assert description["preprocessing"]["patch_size"] == [32, 32, 32]
    assert sorted(p.name for p in out.iterdir()) == \
        [f"{c}.nii.gz" for c in description["trained_on"]["test_cases"]]
    image = nib.load(next((dataset / "imagesTr").iterdir()))
    assert nib.load(next(out.iterdir())).shape == image.shape


def test_a_ct_model_refuses_the_same_cases_labelled_mr(model: Path, dataset: Path,
                                                       tmp_path: Path) -> None:
    copy = _copy_dataset(dataset, tmp_path / "Dataset951_AsMR", _test_cases(model))
    description = json.loads((copy / "dataset.json").read_text())
    description["channel_names"] = {"0": "T1"}
    (copy / "dataset.json").write_text(json.dumps(description))

    with pytest.raises(MedlossyError, match="trained on CT"):
        predict_dataset(model, copy, tmp_path / "predictions", device="cpu")
    assert not (tmp_path / "predictions").exists()
