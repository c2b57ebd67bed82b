"""nnU-Net's preprocessed training cases kept as 16-bit stores (medlossy.nnunet.preprocessed).

The reference is nnU-Net's own pipeline (CTNormalization, its resampling, its blosc2 writer)
run on a tiny CT-like case; the stores must give nnU-Net's loader the same normalised
patches within half a quantisation step, and nothing more than the crops it asks for.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
    CTNormalization,
)
from nnunetv2.preprocessing.preprocessors.default_preprocessor import (
    DefaultPreprocessor,
)
from nnunetv2.preprocessing.resampling.default_resampling import (
    compute_new_shape,
    resample_data_or_seg_to_shape,
)
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import (
    comp_blosc2_params,
    nnUNetDatasetBlosc2,
)
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from medlossy.nnunet.preprocessed import (
    MedlossyStoreDataset,
    NormalisedStores,
    convert_folder,
    marker_file,
)
from medlossy.nnunet.storage import parse_storage
from medlossy.store import SliceStore

INTENSITIES = {"mean": 40.0, "std": 180.0, "percentile_00_5": -960.5, "percentile_99_5": 1180.25}
PATCH = (16, 32, 32)


def ct_case(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer Hounsfield units (air, soft tissue, a bright sphere, bone-like specks beyond
    the clip range) and the sphere's label."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    distance = np.sqrt(sum(((grid[a] - centre[a]) / shape[a]) ** 2 for a in range(3)))
    label = (distance < 0.22).astype(np.int16)
    image = np.where(distance < 0.45, 40.0, -900.0) + 160 * label
    image += rng.normal(0, 20, shape)
    image[rng.random(shape) < 0.01] = 1500  # above the upper clip bound
    return np.rint(image).astype(np.int16), label


def nnunet_preprocess(folder: Path, name: str, image: np.ndarray, label: np.ndarray,
                      spacing: tuple[float, ...], target: tuple[float, ...]) -> None:
    """What nnU-Net's DefaultPreprocessor writes for one CT case (no cropping: the case
    has no zero border): normalise, resample, sample class locations, blosc2."""
    data = CTNormalization(False, INTENSITIES).run(image[None].astype(np.float32))
    seg = label[None].astype(np.int8)
    shape = compute_new_shape(image.shape, spacing, target)
    data = resample_data_or_seg_to_shape(data, shape, spacing, target, is_seg=False,
                                         order=3, order_z=0, force_separate_z=None)
    seg = resample_data_or_seg_to_shape(seg, shape, spacing, target, is_seg=True, order=1,
                                        order_z=0, force_separate_z=None)
    properties = {"spacing": list(spacing), "class_locations":
                  DefaultPreprocessor._sample_foreground_locations(seg, [1], seed=1)}
    blocks, chunks = comp_blosc2_params(data.shape, PATCH, 4)
    nnUNetDatasetBlosc2.save_case(data.astype(np.float32), seg.astype(np.int16), properties,
                                  str(folder / name), chunks=chunks, blocks=blocks)


def plans() -> dict:
    return {"configurations": {"3d_fullres": {"normalization_schemes": ["CTNormalization"],
                                              "data_identifier": "nnUNetPlans_3d_fullres"}},
            "foreground_intensity_properties_per_channel": {"0": INTENSITIES}}


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> Path:
    """Two cases: one nnU-Net keeps on its grid, one it resamples (2.5 mm -> 2 mm slices)."""
    folder = tmp_path_factory.mktemp("preprocessed") / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    nnunet_preprocess(folder, "case_000", *ct_case((20, 40, 40), 0), (2.0, 1.0, 1.0),
                      (2.0, 1.0, 1.0))
    nnunet_preprocess(folder, "case_001", *ct_case((16, 40, 40), 1), (2.5, 1.0, 1.0),
                      (2.0, 1.0, 1.0))
    return folder


def converted(preprocessed: Path, storage: str, codec: str = "htj2k", tile: int = 32) -> Path:
    kind = parse_storage(storage, codec, tile)
    target = preprocessed.parent / kind.folder(preprocessed.name)
    if not marker_file(target).exists():
        convert_folder(preprocessed, target, plans(), "3d_fullres", kind)
    return target


def reference(preprocessed: Path, case: str) -> np.ndarray:
    return nnUNetDatasetBlosc2(str(preprocessed)).load_case(case)[0][:]


STEP = 0.5 / INTENSITIES["std"]  # half a Hounsfield unit, normalised


@pytest.mark.parametrize("codec", ["htj2k", "jpeg2k"])
def test_lossless_stores_give_nnunets_normalised_values_within_half_a_unit(
        preprocessed: Path, codec: str) -> None:
    """Lossless: |store - blosc2| <= 0.5 HU / std (+ float32 rounding) everywhere; on the
    case nnU-Net did not resample, float32-equal inside the clip range."""
    dataset = MedlossyStoreDataset(str(converted(preprocessed, "lossless", codec)))
    assert dataset.identifiers == ["case_000", "case_001"]
    for case in dataset.identifiers:
        data, seg, _, properties = dataset.load_case(case)
        expected = reference(preprocessed, case)
        assert data.shape == expected.shape and "medlossy_stores" not in properties
        assert np.abs(np.asarray(data) - expected).max() <= STEP * (1 + 1e-5) + 1e-6
        assert np.array_equal(seg[:], nnUNetDatasetBlosc2(str(preprocessed)).load_case(case)[1][:])
    unresampled = np.asarray(dataset.load_case("case_000")[0])
    expected = reference(preprocessed, "case_000")
    low, high = (np.float32((b - INTENSITIES["mean"]) / INTENSITIES["std"])
                 for b in (INTENSITIES["percentile_00_5"], INTENSITIES["percentile_99_5"]))
    inside = (expected > low + 1e-4) & (expected < high - 1e-4)
    assert inside.mean() > 0.5
    np.testing.assert_array_equal(unresampled[inside], expected[inside])


def test_crops_decode_only_the_tiles_they_touch(preprocessed: Path, monkeypatch) -> None:
    """A crop equals the same crop of the whole image and decodes only the tiles (32 x 32
    of a 40 x 40 slice) and slices it covers."""
    from medlossy.loading.volume import StoreVolume

    folder = converted(preprocessed, "lossless")
    stores = pickle.loads((folder / "case_000.pkl").read_bytes())["medlossy_stores"]
    image = NormalisedStores(str(folder), stores)
    whole = np.asarray(image)
    decoded: list[int] = []
    original = StoreVolume._tile
    monkeypatch.setattr(StoreVolume, "_tile", lambda self, index, data:
                        decoded.append(index) or original(self, index, data))
    crop = image[:, 3:7, 2:20, 5:30]
    np.testing.assert_array_equal(crop, whole[:, 3:7, 2:20, 5:30])
    assert len(decoded) == 4  # 4 slices x the one tile rows 0-31, columns 0-31 covers
    assert image[:, 5:5, :, :].shape == (1, 0, 40, 40)
    # one shard file holds the 80 tile codestreams, not a file each
    assert len([p for p in (folder / "case_000_0000.zarr").rglob("*") if p.is_file()]) <= 3


def test_nnunets_loader_draws_the_same_patches_from_stores_as_from_blosc2(
        preprocessed: Path) -> None:
    """nnU-Net's nnUNetDataLoader, same seed, same cases: the batches' segmentations are
    equal, the images within half a Hounsfield unit (lossless) or within the codec's own
    maximum error as the x4 stores record it, plus that half unit."""
    labels = LabelManager({"background": 0, "sphere": 1}, None)

    def batch(dataset) -> dict:
        np.random.seed(7)
        loader = nnUNetDataLoader(dataset, 2, PATCH, PATCH, labels,
                                  oversample_foreground_percent=0.5)
        return next(loader)

    expected = batch(nnUNetDatasetBlosc2(str(preprocessed)))
    for storage in ("lossless", "x4"):
        folder = converted(preprocessed, storage, tile=0)
        codec_error = max(SliceStore(store).attributes["achieved"]["max_abs_error"]
                          for store in folder.glob("*.zarr"))
        got = batch(MedlossyStoreDataset(str(folder)))
        assert got["keys"].tolist() == expected["keys"].tolist()
        assert np.array_equal(got["target"].numpy(), expected["target"].numpy())
        error = (got["data"] - expected["data"]).abs().max().item()
        assert error <= codec_error / INTENSITIES["std"] + STEP * (1 + 1e-5) + 1e-6
    assert error > STEP  # x4 is lossy indeed


def test_lossy_stores_reach_the_ratio_and_the_marker_counts_the_bytes(
        preprocessed: Path) -> None:
    folder = converted(preprocessed, "x4", tile=0)
    marker = json.loads(marker_file(folder).read_text())
    assert marker["storage"] == "x4" and marker["cases"] == 2
    raw16 = sum(2 * np.prod(reference(preprocessed, c).shape) for c in ("case_000", "case_001"))
    assert raw16 / marker["image_bytes"] == pytest.approx(4, rel=0.05)
    assert marker["image_bytes"] < marker["blosc2_image_bytes"] / 3


@pytest.mark.parametrize("storage", ["lossless", "x4"])
def test_a_case_cropped_to_narrow_slices_is_converted(tmp_path: Path, storage: str) -> None:
    """nnU-Net crops a case to its foreground: slices of 20 x 40 made the whole conversion
    fail ("axial slices are 20x40; htj2k here needs at least 32x32"); the stores' slices
    are padded, the loader gives the case's own shape and values."""
    folder = tmp_path / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    nnunet_preprocess(folder, "case_000", *ct_case((12, 20, 40), 0), (2.0, 1.0, 1.0),
                      (2.0, 1.0, 1.0))
    target = converted(folder, storage)
    data, seg, _, _ = MedlossyStoreDataset(str(target)).load_case("case_000")
    expected = reference(folder, "case_000")
    assert data.shape == expected.shape == (1, 12, 20, 40) == (1, *seg.shape[1:])
    values = np.asarray(data)
    assert values.shape == expected.shape
    # lossy: within the codec's error that the store records, in Hounsfield units
    recorded = SliceStore(target / "case_000_0000.zarr").attributes["achieved"]
    bound = 0.0 if storage == "lossless" else recorded["max_abs_error"] / INTENSITIES["std"]
    assert np.abs(values - expected).max() <= bound + STEP * (1 + 1e-5) + 1e-6
    np.testing.assert_array_equal(data[:, 2:9, 15:20, 30:40], values[:, 2:9, 15:20, 30:40])


def test_other_normalisations_are_kept_in_fixed_point(tmp_path: Path) -> None:
    """ZScore and the others have no scale in the plans: 1/1024 steps, coarser only where
    16 bits would overflow."""
    from medlossy.nnunet.preprocessed import channel_scales, dequantise, quantise

    data = np.random.default_rng(0).normal(0, 3, (2, 4, 8, 8)).astype(np.float32)
    data[1, 0, 0, 0] = 100.0  # 100 * 1024 overflows int16
    scales = channel_scales(data, ["ZScoreNormalization"] * 2, {})
    assert scales[0] == (0.0, 1024.0) and scales[1][1] == pytest.approx(32767 / 100)
    for channel, (offset, scale) in enumerate(scales):
        back = dequantise(quantise(data[channel], offset, scale), offset, scale)
        assert np.abs(back - data[channel]).max() <= 0.5 / scale + 1e-6


def test_storage_option_is_checked_and_enters_the_unit_key_only_when_used() -> None:
    from medlossy.backends import TrainRequest, get_backend

    backend = get_backend("nnunet")
    plain = backend.recipe(TrainRequest())
    assert not any(key.startswith("preprocessed") for key in plain)  # keys of earlier units
    stored = backend.recipe(TrainRequest(options={"preprocessed": "x20"}))
    assert (stored["preprocessed"], stored["preprocessed_codec"],
            stored["preprocessed_tile"]) == ("x20", "htj2k", 128)
    for options, message in (({"preprocessed": "x1"}, "preprocessed must be"),
                             ({"preprocessed": "npz"}, "preprocessed must be"),
                             ({"preprocessed": "lossless", "preprocessed_codec": "jpegxl"},
                              "preprocessed_codec"),
                             ({"preprocessed": "lossless", "preprocessed_tile": 16},
                              "preprocessed_tile")):
        with pytest.raises(ValueError, match=message):
            backend.recipe(TrainRequest(options=options))
    assert parse_storage("x20", "jpeg2k", 0).folder("nnUNetPlans_3d_fullres") == \
        "nnUNetPlans_3d_fullres_medlossy_jpeg2k_x20_t0"


@pytest.fixture(scope="module")
def hard_cases(tmp_path_factory) -> Path:
    """Two cases nnU-Net could hand the conversion: a heavily clipped CT (air, soft tissue
    and bone at the clip bounds: piecewise constant) and a small noisy crop."""
    folder = tmp_path_factory.mktemp("hard") / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    _, y, x = np.indices((16, 256, 256))
    body = ((y - 128) / 100) ** 2 + ((x - 128) / 85) ** 2 < 1
    bone = ((y - 180) / 14) ** 2 + ((x - 128) / 14) ** 2 < 1
    clipped = np.where(body, 40, -1000) + 2000 * bone
    nnunet_preprocess(folder, "clipped", clipped.astype(np.int16), body.astype(np.uint8),
                      (2.0, 1.0, 1.0), (2.0, 1.0, 1.0))
    noisy = np.random.default_rng(3).normal(0, 300, (4, 32, 40))
    nnunet_preprocess(folder, "noisy", np.rint(noisy).astype(np.int16),
                      (noisy > 0).astype(np.uint8), (2.0, 1.0, 1.0), (2.0, 1.0, 1.0))
    return folder


def test_a_case_smaller_lossless_than_at_the_ratio_is_stored_lossless(hard_cases: Path,
                                                                      tmp_path: Path) -> None:
    """A heavily clipped CT at a ratio was stored lossy and larger than lossless (tester, x20:
    176,921 B vs 150,417 B; here x12: 174,537 B vs 114,297 B): where lossless fits the
    ratio's budget, the case is stored lossless, as a compress at a ratio does."""
    folder = tmp_path / hard_cases.name
    folder.mkdir()
    for name in ("clipped.b2nd", "clipped_seg.b2nd", "clipped.pkl"):  # that case alone
        shutil.copyfile(hard_cases / name, folder / name)
    lossless = json.loads(marker_file(converted(folder, "lossless", tile=0)).read_text())
    x12 = converted(folder, "x12", tile=0)
    marker = json.loads(marker_file(x12).read_text())
    assert marker["image_bytes"] == lossless["image_bytes"]  # before: 174,537 vs 114,297
    clipped = marker["stored"]["clipped"][0]
    assert clipped["stored_as"] == "lossless" and clipped["ratio"] > 12
    assert clipped["bytes"] == lossless["stored"]["clipped"][0]["bytes"]
    assert SliceStore(x12 / "clipped_0000.zarr").attributes["codec"]["setting"]["mode"] == \
        "lossless"
    data, _, _, _ = MedlossyStoreDataset(str(x12)).load_case("clipped")
    expected = reference(folder, "clipped")
    assert np.abs(np.asarray(data) - expected).max() <= STEP * (1 + 1e-5) + 1e-6


def test_a_case_that_cannot_reach_the_ratio_is_stored_at_the_closest(hard_cases: Path,
                                                                     tmp_path: Path,
                                                                     capfd) -> None:
    """One small noisy crop that HTJ2K cannot take to x10 failed the whole conversion
    ("cannot reach x10"); it is stored at the closest ratio it reaches, said on stderr and
    in the folder's record, and the other cases are converted as asked."""
    x10 = tmp_path / "x10"
    marker = convert_folder(hard_cases, x10, plans(), "3d_fullres",
                            parse_storage("x10", "htj2k", 0))
    assert json.loads(marker_file(x10).read_text()) == marker
    noisy = marker["stored"]["noisy"][0]
    assert 1 < noisy["ratio"] < 10 and noisy["stored_as"] == f"x{noisy['ratio']:.2f}"
    assert SliceStore(x10 / "noisy_0000.zarr").attributes["achieved"]["ratio"] == \
        noisy["ratio"]
    note = capfd.readouterr().err
    assert "noisy_0000.zarr: htj2k cannot reach x10" in note and noisy["stored_as"] in note
    assert marker["cases"] == 2 and marker["stored"]["clipped"][0]["stored_as"] == "lossless"
    data, _, _, _ = MedlossyStoreDataset(str(x10)).load_case("noisy")
    assert np.asarray(data).shape == reference(hard_cases, "noisy").shape
