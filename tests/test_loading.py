"""StorePatchDataset: patches decoded on the fly equal the decoded volume's boxes."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medlossy.compression import Target, compress_volume
from medlossy.decompression import read_store
from medlossy.loading import StorePatchDataset, StoreVolume
from medlossy.loading.decoders import block_mean, glymur_available
from medlossy.loading.workers import START_METHOD
from medlossy.volume import Volume

PATCH = (8, 48, 40)


@pytest.fixture(scope="module")
def crop_case(ct_b_crop_image, ct_b_crop_array, tmp_path_factory):
    """The 96 x 80 x 24 real CT crop at x10 as store ``ct_0000.zarr`` + bone labels."""
    root = tmp_path_factory.mktemp("loading")
    stores, labels = root / "stores", root / "labels"
    stores.mkdir(), labels.mkdir()
    volume = Volume(ct_b_crop_array, ct_b_crop_image.affine, modality="CT")
    compress_volume(volume, stores / "ct_0000.zarr", Target("ratio", 10.0), workers=1)
    bone = (ct_b_crop_array > 600).astype(np.uint8)  # bone (and dense contrast)
    assert 0 < bone.mean() < 0.3
    nib.save(nib.Nifti1Image(bone, ct_b_crop_image.affine), labels / "ct.nii.gz")
    decoded = np.moveaxis(read_store(stores / "ct_0000.zarr", workers=1).array, 2, 0)
    return stores, labels, decoded, np.moveaxis(bone, 2, 0)


def test_patches_are_the_decoded_volumes_boxes_with_their_labels(crop_case):
    stores, labels, decoded, bone = crop_case
    dataset = StorePatchDataset(stores, PATCH, labels, samples=12, seed=3)
    starts = set()
    for index in range(len(dataset)):
        sample = dataset[index]
        z, y, x = sample["start"]
        box = np.s_[z:z + PATCH[0], y:y + PATCH[1], x:x + PATCH[2]]
        assert sample["image"].shape == (1, *PATCH) and sample["image"].dtype == torch.float32
        np.testing.assert_array_equal(sample["image"][0].numpy(), decoded[box])
        np.testing.assert_array_equal(sample["label"][0].numpy(), bone[box])
        starts.add(sample["start"])
    assert len(starts) > 6  # random boxes, not one


def test_patches_are_a_function_of_seed_and_index(crop_case):
    stores, labels, _, _ = crop_case
    first = StorePatchDataset(stores, PATCH, labels, samples=5, seed=1)
    again = StorePatchDataset(stores, PATCH, labels, samples=5, seed=1)
    other = StorePatchDataset(stores, PATCH, labels, samples=5, seed=2)
    assert [first.box(i) for i in range(5)] == [again.box(i) for i in range(5)]
    assert [first.box(i) for i in range(5)] != [other.box(i) for i in range(5)]
    torch.testing.assert_close(first[4]["image"], again[4]["image"])


def test_foreground_fraction_one_centres_every_patch_on_labels(crop_case):
    stores, labels, _, _ = crop_case
    dataset = StorePatchDataset(stores, (4, 16, 16), labels, samples=20, seed=0,
                                foreground_fraction=1.0)
    assert all(dataset[i]["label"].sum() > 0 for i in range(20))


def test_worker_processes_and_threads_give_the_same_patches(crop_case):
    stores, labels, _, _ = crop_case
    serial = StorePatchDataset(stores, PATCH, labels, samples=6, seed=5)
    threaded = StorePatchDataset(stores, PATCH, labels, samples=6, seed=5, threads=2)
    loaded = list(DataLoader(threaded, batch_size=None, num_workers=2,
                             multiprocessing_context=START_METHOD))
    for index, sample in enumerate(loaded):
        torch.testing.assert_close(sample["image"], serial[index]["image"])
        torch.testing.assert_close(sample["label"], serial[index]["label"])


def test_a_patch_larger_than_the_volume_is_padded(crop_case):
    stores, labels, decoded, _ = crop_case
    sample = StorePatchDataset(stores, (32, 48, 40), labels, samples=1)[0]
    assert sample["image"].shape == (1, 32, 48, 40)
    z, y, x = sample["start"]
    assert z == 0
    np.testing.assert_array_equal(sample["image"][0, :24].numpy(),
                                  decoded[:, y:y + 48, x:x + 40])
    np.testing.assert_array_equal(sample["image"][0, 23], sample["image"][0, 31])  # edge pad
    assert sample["label"][0, 24:].sum() == 0


@pytest.mark.skipif(not glymur_available(), reason="glymur / libopenjp2 not installed")
def test_a_reduced_level_is_decoded_from_the_codestream_at_half_size(crop_case):
    stores, labels, decoded, bone = crop_case
    volume = StoreVolume(stores / "ct_0000.zarr", level=1)
    assert volume.shape == (24, 48, 40)
    half = volume.read((0, 0, 0), volume.shape)
    expected = np.stack([block_mean(plane, 1) for plane in decoded])
    # the wavelet's low-pass band, not a box filter: close (measured r = 0.986), not equal
    assert np.corrcoef(half.ravel(), expected.ravel())[0, 1] > 0.97
    assert np.abs(half - expected).mean() < 0.15 * np.abs(expected - expected.mean()).mean()
    assert half.mean() == pytest.approx(expected.mean(), abs=10.0)
    sample = StorePatchDataset(stores, (4, 16, 16), labels, samples=1, level=1)[0]
    z, y, x = sample["start"]
    np.testing.assert_array_equal(sample["label"][0].numpy(),
                                  bone[z:z + 4, ::2, ::2][:, y:y + 16, x:x + 16])


def test_bench_loader_prints_patch_supply(crop_case, cli):
    stores, _, _, _ = crop_case
    code, out, err = cli("bench", "loader", str(stores), "--patch", "8,48,40", "--workers",
                         "0", "--seconds", "0.5", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["patches"] > 0 and result["mvox_per_s"] > 0
    assert result["codec"] == "jpeg2k" and result["patch"] == [8, 48, 40]


def test_bench_loader_refuses_a_bad_patch_in_one_line(crop_case, cli):
    stores, _, _, _ = crop_case
    code, _, err = cli("bench", "loader", str(stores), "--patch", "8,48")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--patch" in err


def test_bench_loader_names_a_corrupt_tile_in_one_line_from_a_worker(crop_case, cli,
                                                                     tmp_path):
    # A worker process's MedlossyError reached the user as PyTorch's RuntimeError traceback.
    stores, _, _, _ = crop_case
    store = tmp_path / "ct_0000.zarr"
    shutil.copytree(stores / "ct_0000.zarr", store)
    for chunk in (store / "0").glob("*.0.0"):
        chunk.write_bytes(chunk.read_bytes()[:-40] + bytes(40))
    code, _, err = cli("bench", "loader", str(store), "--patch", "8,48,40", "--workers", "1",
                       "--seconds", "0.5")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "ct_0000.zarr" in err and "corrupt (CRC-32 mismatch)" in err


@pytest.fixture(scope="module")
def block_store(ct_b_crop_image, ct_b_crop_array, tmp_path_factory):
    """The real CT crop in blocks of 16 slices (SZ3, maximum error 3)."""
    path = tmp_path_factory.mktemp("loading_blocks") / "ct_0000.zarr"
    volume = Volume(ct_b_crop_array, ct_b_crop_image.affine, modality="CT")
    compress_volume(volume, path, Target("max_error", 3.0), codec_name="sz3", workers=1)
    return path, np.moveaxis(read_store(path, workers=1).array, 2, 0)


@pytest.mark.parametrize("start", [(0, 0, 0), (10, 20, 7), (16, 1, 2), (14, 40, 30)])
def test_boxes_across_blocks_are_the_decoded_volumes(block_store, start):
    path, decoded = block_store
    volume = StoreVolume(path)
    assert volume.store.depth == 16 and volume.shape == (24, 96, 80)
    size = (8, 48, 40)
    box = tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))
    np.testing.assert_array_equal(volume.read(start, size), decoded[box])


def test_block_store_patches_and_reduced_level(block_store):
    path, decoded = block_store
    dataset = StorePatchDataset([path], PATCH, samples=3, seed=0, threads=2)
    sample = dataset[1]
    z, y, x = sample["start"]
    np.testing.assert_array_equal(sample["image"][0].numpy(),
                                  decoded[z:z + 8, y:y + 48, x:x + 40])
    half = StoreVolume(path, level=1)
    assert half.shape == (24, 48, 40)
    np.testing.assert_allclose(half.read((15, 0, 0), (3, 48, 40)),
                               np.stack([block_mean(p, 1) for p in decoded[15:18]]), atol=1e-3)


def test_htj2k_stores_decode_reduced_levels_from_the_codestream(ct_b_crop_image,
                                                                ct_b_crop_array, tmp_path):
    """HTJ2K stores (now written by medlossy) take OpenJPH's skipres path at level 1."""
    from medlossy.loading.decoders import has_reduced_decoder

    volume = Volume(ct_b_crop_array, ct_b_crop_image.affine, modality="CT")
    compress_volume(volume, tmp_path / "ht.zarr", Target("ratio", 10.0), codec_name="htj2k",
                    workers=1)
    decoded = np.moveaxis(read_store(tmp_path / "ht.zarr", workers=1).array, 2, 0)
    assert has_reduced_decoder("htj2k")
    half = StoreVolume(tmp_path / "ht.zarr", level=1)
    assert half.shape == (24, 48, 40)
    values = half.read((0, 0, 0), half.shape)
    expected = np.stack([block_mean(plane, 1) for plane in decoded])
    assert np.corrcoef(values.ravel(), expected.ravel())[0, 1] > 0.97
    full = StoreVolume(tmp_path / "ht.zarr").read((3, 10, 20), (5, 40, 30))
    np.testing.assert_array_equal(full, decoded[3:8, 10:50, 20:50])


def test_bench_loader_counts_decoded_voxels_not_padding(crop_case, cli):
    # Found by a new user: with a patch larger than the volume, Mvox/s counted the padding
    # (48x128x128 = 786432 voxels a patch, of which the 24x96x80 store fills 184320).
    stores, _, _, _ = crop_case
    code, out, err = cli("bench", "loader", str(stores), "--patch", "48,128,128",
                         "--workers", "0", "--seconds", "0.5", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["patches"] > 0
    filled = 24 * 96 * 80
    assert result["mvox_per_s"] == pytest.approx(
        result["patches"] * filled / result["seconds"] / 1e6, rel=0.01)
