"""MONAI's LoadImage and TorchIO's ScalarImage read stores as their decoded NIfTI.

Small real-looking stores (8 slices of 64 x 64: a CT in int16 on flipped, permuted axes, an
MR in uint8 on an oblique grid with saturated voxels), whole-slice and tiled, lossy: each
read through the frameworks is compared voxel for voxel, affine for affine and meta key for
meta key with nibabel / MONAI's NibabelReader reading ``medlossy decompress``'s output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torchio as tio
from monai.data import NibabelReader, load_decathlon_datalist
from monai.transforms import LoadImage, LoadImaged

from medlossy.cli.main import main as cli_main
from medlossy.errors import MedlossyError
from medlossy.loading.monai_reader import MedlossyStoreReader
from medlossy.loading.torchio_reader import store_reader
from medlossy.train.datalist import ratio_datalist


def _rotation(x_degrees: float, y_degrees: float) -> np.ndarray:
    a, b = np.radians(x_degrees), np.radians(y_degrees)
    about_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return about_y @ about_x


def _ct() -> nib.Nifti1Image:
    """A CT (int16 HU) stored slices first: array axis 0 runs feet-head, axes 1 and 2 flipped
    (LPS-like), so the axial axis is not the last one."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:8, 0:64, 0:64]
    body = ((y - 32) / 26) ** 2 + ((x - 30) / 22) ** 2 < 1
    organ = ((y - 36) / 9) ** 2 + ((x - 24) / 7) ** 2 + ((z - 4) / 5) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0) + np.where(organ, 60.0, 0.0)
    hu[(np.abs(y - 46) < 3) & (np.abs(x - 30) < 3)] = 900.0  # spine
    hu += rng.normal(0, 12, hu.shape)
    affine = np.array([[0.0, -0.78, 0.0, 120.0], [0.0, 0.0, -0.78, 95.0],
                       [2.5, 0.0, 0.0, -310.0], [0.0, 0.0, 0.0, 1.0]])
    image = nib.Nifti1Image(np.rint(hu).astype(np.int16), affine)
    image.header.set_xyzt_units("mm", "sec")
    return image


def _mr() -> nib.Nifti1Image:
    """A T1-like MR in uint8, 64 x 64 x 8 on an oblique grid (sform and qform), fat
    saturating at 255 and air at 0, so the lossy decode is clipped at both ends."""
    rng = np.random.default_rng(1)
    x, y, _ = np.mgrid[0:64, 0:64, 0:8]
    head = ((x - 32) / 27) ** 2 + ((y - 32) / 30) ** 2 < 1
    brain = ((x - 32) / 21) ** 2 + ((y - 33) / 24) ** 2 < 1
    t1 = np.where(head, 250.0, 0.0) - np.where(brain, 150.0, 0.0)
    t1 += 25 * np.sin(x / 3.0) * brain + rng.normal(0, 6, t1.shape) * head
    affine = np.eye(4)
    affine[:3, :3] = _rotation(18, -9) @ np.diag([0.9, 0.9, 3.0])
    affine[:3, 3] = (-28.0, -31.0, 12.0)
    image = nib.Nifti1Image(np.clip(np.rint(t1), 0, 255).astype(np.uint8), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    return image


def _scaled_mr() -> nib.Nifti1Image:
    """The MR as int16 codes under scl_slope / scl_inter, as scanners export some series."""
    mr = _mr()
    codes = np.asarray(mr.dataobj).astype(np.int16) * 8 - 300
    image = nib.Nifti1Image(codes, mr.affine, mr.header)
    image.header.set_data_dtype(np.int16)
    image.header.set_slope_inter(0.25, 75.0)
    return image


SOURCES = {"ct": (_ct, "CT"), "mr": (_mr, "MR"), "mr_scaled": (_scaled_mr, "MR")}
CASES = [(name, tile) for name in ("ct", "mr") for tile in (None, 32)] + [("mr_scaled", None)]


def _run(*arguments: object) -> None:
    code = cli_main([str(a) for a in arguments])
    assert code == 0, arguments


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[tuple[str, int | None], tuple[Path, Path]]:
    """(store, decoded .nii.gz) per source and tiling, written by the CLI at x8."""
    root = tmp_path_factory.mktemp("framework-readers")
    made = {}
    for name, tile in CASES:
        make, modality = SOURCES[name]
        source = root / f"{name}.nii.gz"
        if not source.exists():
            nib.save(make(), source)
        stem = f"{name}_{'tiled' if tile else 'whole'}"
        store, decoded = root / f"{stem}.zarr", root / f"{stem}.nii.gz"
        _run("compress", source, store, "--ratio", 8, "--modality", modality, "--quiet",
             *(("--tile", tile) if tile else ()))
        _run("decompress", store, decoded, "--quiet")
        made[name, tile] = store, decoded
    return made


def _assert_same_meta(ours: dict, theirs: dict) -> None:
    """Every meta key and value alike, but the file name (a store's, a NIfTI file's)."""
    assert ours.keys() == theirs.keys()
    for key in ours.keys() - {"filename_or_obj"}:
        np.testing.assert_equal(np.asarray(ours[key]), np.asarray(theirs[key]), err_msg=key)


@pytest.mark.parametrize(("name", "tile"), CASES)
def test_monai_load_image_gives_the_decoded_nifti(stores, name, tile):
    store, decoded = stores[name, tile]
    image, meta = LoadImage(reader=MedlossyStoreReader(), image_only=False)(store)
    expected, expected_meta = LoadImage(reader=NibabelReader(), image_only=False)(decoded)
    assert image.dtype == expected.dtype == torch.float32  # LoadImage's default dtype
    torch.testing.assert_close(image.as_tensor(), expected.as_tensor(), rtol=0, atol=0)
    _assert_same_meta(meta, expected_meta)
    assert meta["filename_or_obj"] == str(store)
    np.testing.assert_array_equal(image.affine.numpy(), nib.load(decoded).affine)


@pytest.mark.parametrize(("name", "tile"), CASES)
def test_monai_keeps_the_decoded_integer_type_when_asked(stores, name, tile):
    store, decoded = stores[name, tile]
    image = LoadImage(reader=MedlossyStoreReader(), dtype=None)(store)
    stored = np.asanyarray(nib.load(decoded).dataobj)
    assert stored.dtype == {"ct": np.int16, "mr": np.uint8, "mr_scaled": np.float64}[name]
    assert image.numpy().dtype == stored.dtype
    np.testing.assert_array_equal(image.numpy(), stored)
    if name == "mr":  # lossy values beyond uint8 were clipped, as decompress writes them
        assert stored.min() == 0 and stored.max() == 255
    if name == "mr_scaled":  # int16 codes under the source's scaling, as nibabel reads them
        proxy = nib.load(decoded).dataobj
        assert (proxy.dtype, proxy.slope, proxy.inter) == (np.int16, 0.25, 75.0)


def test_monai_load_imaged_reads_a_store_beside_a_nifti_label(stores, tmp_path):
    store, decoded = stores["ct", 32]
    label = tmp_path / "label.nii.gz"
    reference = nib.load(decoded)
    nib.save(nib.Nifti1Image((np.asarray(reference.dataobj) > 300).astype(np.uint8),
                             reference.affine), label)
    load = LoadImaged(["image", "label"], reader=MedlossyStoreReader(workers=1),
                      ensure_channel_first=True)
    case = load({"image": str(store), "label": str(label)})
    assert case["image"].shape == case["label"].shape == (1, *reference.shape)
    np.testing.assert_array_equal(case["image"].affine.numpy(), case["label"].affine.numpy())
    assert case["label"].meta["filename_or_obj"] == str(label)  # MONAI's NIfTI reader


def test_monai_stacks_a_cases_channel_stores(stores):
    whole, tiled = stores["mr", None][0], stores["mr", 32][0]
    image = LoadImage(reader=MedlossyStoreReader())([whole, tiled])
    expected = LoadImage(reader=NibabelReader())([stores["mr", None][1], stores["mr", 32][1]])
    assert image.shape == (2, 64, 64, 8)
    torch.testing.assert_close(image.as_tensor(), expected.as_tensor(), rtol=0, atol=0)


def test_monai_reader_recognises_stores_by_layout_not_only_by_name(stores, tmp_path):
    renamed = tmp_path / "case_store"
    shutil.copytree(stores["ct", None][0], renamed)
    reader = MedlossyStoreReader()
    assert reader.verify_suffix(renamed) and reader.verify_suffix(stores["ct", 32][0])
    assert not reader.verify_suffix(stores["ct", 32][1])  # a .nii.gz
    assert not reader.verify_suffix(tmp_path / "ct.zarr.nii.gz")
    assert LoadImage(reader=reader)(renamed).shape == (8, 64, 64)


def test_a_damaged_store_is_one_error_naming_the_slice(stores, tmp_path):
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(stores["ct", None][0], damaged)
    chunk = damaged / "0" / "3.0.0"
    chunk.write_bytes(chunk.read_bytes()[:-9] + b"corrupted")
    with pytest.raises(MedlossyError, match=r"3\.0\.0: slice 3 is corrupt"):
        MedlossyStoreReader().read(damaged)
    # LoadImage tries its other readers after ours and lists every failure, ours first
    with pytest.raises(RuntimeError, match=r"(?s)MedlossyError: .*3\.0\.0: slice 3 is corrupt"):
        LoadImage(reader=MedlossyStoreReader())(damaged)


@pytest.mark.parametrize(("name", "tile"), CASES)
def test_torchio_scalar_image_gives_the_decoded_nifti(stores, name, tile):
    store, decoded = stores[name, tile]
    image = tio.ScalarImage(store, reader=store_reader)
    reference = nib.load(decoded)
    np.testing.assert_array_equal(image.affine, reference.affine)
    stored = np.asanyarray(reference.dataobj)
    assert image.data.shape == (1, *stored.shape)
    assert image.data.dtype == torch.from_numpy(stored).dtype  # int16 / uint8 kept
    np.testing.assert_array_equal(image.data[0].numpy(), stored)
    # TorchIO's own reader (SimpleITK) on the decoded file: the same voxels and geometry
    own = tio.ScalarImage(decoded)
    np.testing.assert_array_equal(own.data.numpy(), image.data.numpy())
    np.testing.assert_allclose(own.affine, image.affine, atol=1e-5)


def test_torchio_samples_patches_from_a_store(stores):
    store, _ = stores["ct", 32]
    subject = tio.Subject(ct=tio.ScalarImage(store, reader=store_reader))
    patch = next(iter(tio.UniformSampler((4, 16, 16))(subject, num_patches=1)))
    assert patch["ct"].data.shape == (1, 4, 16, 16)


def _sweep(tmp_path: Path) -> Path:
    """A sweep of four labelled CT cases and one test case at x1 and x10."""
    source = tmp_path / "Dataset501_Tiny"
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (source / folder).mkdir(parents=True)
    ct = _ct()
    for index in range(5):
        array = np.asarray(ct.dataobj) + np.int16(index)
        split = "Ts" if index == 4 else "Tr"
        nib.save(nib.Nifti1Image(array, ct.affine), source / f"images{split}" /
                 f"{index:03d}_0000.nii.gz")
        if split == "Tr":
            nib.save(nib.Nifti1Image((array > 300).astype(np.uint8), ct.affine),
                     source / "labelsTr" / f"{index:03d}.nii.gz")
    (source / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "bone": 1},
        "numTraining": 4, "file_ending": ".nii.gz"}))
    out = tmp_path / "sweep"
    _run("dataset", "compress", source, "--ratios", "1,10", "--out", out, "--quiet",
         "--workers", 1)
    return out


def test_datalist_per_ratio_loads_in_monai(tmp_path, cli):
    out = _sweep(tmp_path)
    code, printed, _ = cli("dataset", "datalist", out, "--json")
    assert code == 0
    written = [Path(p) for p in json.loads(printed)["datalists"]]
    assert [p.name for p in written] == ["r1.json", "r10.json"]
    for path in written:
        document = json.loads(path.read_text())
        names = {entry["label"].rsplit("/", 1)[1] for entry in
                 document["training"] + document["validation"]}
        assert names == {f"{i:03d}.nii.gz" for i in range(4)}  # "001", not 1
        assert len(document["validation"]) in (1, 2)  # fold 0 of 3 over 4 cases
        training = load_decathlon_datalist(path, data_list_key="training")
        test = load_decathlon_datalist(path, data_list_key="test")
        assert [Path(e["image"]).name for e in test] == ["004_0000.zarr"]
        entry = training[0]
        assert Path(entry["image"]).parent == out / "stores" / path.stem
        case = LoadImaged(["image", "label"], reader=MedlossyStoreReader())(entry)
        assert case["image"].shape == case["label"].shape == (8, 64, 64)
    # the same cases are held out at every ratio
    lists = [json.loads(p.read_text())["validation"] for p in written]
    assert [e["label"].rsplit("/", 1)[1] for e in lists[0]] == \
        [e["label"].rsplit("/", 1)[1] for e in lists[1]]


def test_datalist_of_a_folder_that_is_no_sweep_is_one_line(tmp_path, cli):
    code, printed, error = cli("dataset", "datalist", tmp_path)
    assert code == 2 and printed == ""
    assert error.startswith("medlossy: error: ") and error.count("\n") == 1
    assert "sweep.json" in error


def test_datalist_lists_a_cases_channels_in_order_and_names_a_missing_label(tmp_path):
    sweep, out = tmp_path / "sweep", tmp_path / "lists"
    labels = sweep / "nnunet" / "Dataset600_Two_r10" / "labelsTr"
    labels.mkdir(parents=True)
    (labels.parent / "dataset.json").write_text('{"file_ending": ".nii.gz"}')
    rows = pd.DataFrame([
        {"case": case, "split": "Tr", "channel": channel, "ratio_target": 10.0,
         "store": f"stores/r10/{case}_{channel:04d}.zarr", "decoded": "unused"}
        for case in ("b", "a", "c") for channel in (1, 0)])
    for case in ("a", "b", "c"):
        (labels / f"{case}.nii.gz").touch()
    document = ratio_datalist(sweep, labels.parent, rows, out, folds=3, fold=1)
    entries = document["training"] + document["validation"]
    assert len(document["validation"]) == 1 and document["test"] == []
    for entry in entries:
        case = entry["label"].rsplit("/", 1)[1].split(".")[0]
        assert entry["image"] == [f"../sweep/stores/r10/{case}_0000.zarr",
                                  f"../sweep/stores/r10/{case}_0001.zarr"]
    (labels / "b.nii.gz").unlink()
    with pytest.raises(MedlossyError, match=r"b\.nii\.gz: missing: case b of ratio 10"):
        ratio_datalist(sweep, labels.parent, rows, out, folds=3, fold=1)
