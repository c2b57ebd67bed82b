"""Store metadata is sealed: an edit that changes the decoded values is refused, not decoded.

Found by a new user: changing ``intensity.offset`` by 1, ``intensity.scale``,
``original_dtype`` or ``geometry.axial_axis`` in a store's ``.zattrs``, or dropping its last
slice consistently (shape, CRC list and chunk file), passed ``verify`` ("all slices match")
and ``decompress`` returned other values (transposed for the axis). Each edit here is one a
careless tool or hand could make while keeping the metadata self-consistent.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlossy.compression import Target, compress_volume
from medlossy.decompression import read_store
from medlossy.errors import MedlossyError
from medlossy.loading import StoreVolume
from medlossy.volume import Volume

EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 1, 2


@pytest.fixture(scope="module")
def t1_store(tmp_path_factory) -> Path:
    """A uint8 T1-like volume (0..254, oblique affine) cut along its last axis: 6 slices of
    40 x 36, stored losslessly."""
    rng = np.random.default_rng(7)
    x, y, _ = np.mgrid[0:40, 0:36, 0:6]
    brain = 80 + 120 * np.exp(-((x - 20) ** 2 + (y - 18) ** 2) / 150)
    array = np.clip(brain + rng.normal(0, 6, brain.shape), 0, 254).astype(np.uint8)
    affine = np.array([[0.98, 0.17, 0.0, -90.0], [-0.17, 0.98, 0.05, 110.0],
                       [0.0, -0.05, 1.0, -70.0], [0.0, 0.0, 0.0, 1.0]])
    store = tmp_path_factory.mktemp("sealed") / "t1.zarr"
    attributes = compress_volume(Volume(array, affine, modality="MR"), store,
                                 Target("lossless"), workers=1)
    assert attributes["geometry"]["axial_axis"] == 2
    return store


def _edit(store: Path, change: Callable[[dict, dict], None]) -> None:
    """Apply ``change(medlossy attributes, .zarray)`` and write both back."""
    zattrs = json.loads((store / ".zattrs").read_bytes())
    zarray = json.loads((store / "0" / ".zarray").read_bytes())
    change(zattrs["medlossy"], zarray)
    (store / ".zattrs").write_text(json.dumps(zattrs))
    (store / "0" / ".zarray").write_text(json.dumps(zarray))


def _offset(attributes: dict, zarray: dict) -> None:
    attributes["intensity"]["offset"] += 1


def _scale(attributes: dict, zarray: dict) -> None:
    attributes["intensity"]["scale"] *= 2


def _original_dtype(attributes: dict, zarray: dict) -> None:
    attributes["intensity"]["original_dtype"] = "<i2"


def _axial_axis(attributes: dict, zarray: dict) -> None:
    # consistent with the array (6, 40, 36): read as cut along axis 0, the volume transposes
    attributes["geometry"]["axial_axis"] = 0
    attributes["geometry"]["shape"] = zarray["shape"]


def _drop_last_slice(attributes: dict, zarray: dict) -> None:
    attributes["geometry"]["shape"][2] -= 1
    attributes["chunk_crc32"].pop()
    zarray["shape"][0] -= 1


def _axial_axis_alone(attributes: dict, zarray: dict) -> None:
    # inconsistent with the array: was reported as "corrupt store metadata", exit 2 from
    # verify, without naming the edit (found by a tester)
    attributes["geometry"]["axial_axis"] = 0


def _array_shape_alone(attributes: dict, zarray: dict) -> None:
    zarray["shape"][0] -= 1


TAMPERING = {"offset": (_offset, "intensity"), "scale": (_scale, "intensity"),
             "original_dtype": (_original_dtype, "intensity"),
             "axial_axis": (_axial_axis, "geometry"),
             "axial_axis_alone": (_axial_axis_alone, "geometry"),
             "array_shape_alone": (_array_shape_alone, ".zarray"),
             "last_slice": (_drop_last_slice, ".zarray")}


@pytest.fixture(params=sorted(TAMPERING))
def tampered(request, t1_store, tmp_path) -> tuple[Path, str]:
    """A copy of the store with one edit; and a section its one-line error must name."""
    change, section = TAMPERING[request.param]
    store = tmp_path / "t1.zarr"
    shutil.copytree(t1_store, store)
    _edit(store, change)
    if request.param == "last_slice":
        (store / "0" / "5.0.0").unlink()
    return store, section


def _one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medlossy: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_verify_fails_on_edited_metadata(cli, tampered):
    store, section = tampered
    code, out, err = cli("verify", store)
    assert code == EXIT_CHECK_FAILED, (out, err)
    _one_line(err, str(store), "metadata no longer matches its checksum", section)
    assert out == ""


def test_decompress_refuses_edited_metadata(cli, tampered, tmp_path):
    store, section = tampered
    output = tmp_path / "out.nii.gz"
    code, _, err = cli("decompress", store, output, "--workers", "1")
    assert code == EXIT_BAD_INPUT
    _one_line(err, str(store), section)
    assert not output.exists()


def test_the_loader_refuses_edited_metadata(tampered):
    store, section = tampered
    with pytest.raises(MedlossyError, match=f"no longer matches its checksum.*{section}"):
        StoreVolume(store)


def test_a_pristine_store_is_protected(cli, t1_store):
    code, out, err = cli("verify", t1_store)
    assert code == 0, err
    assert out.strip() == f"{t1_store}: all 6 slices and the metadata match their checksums"
    code, out, _ = cli("info", t1_store, "--json")
    assert json.loads(out)["metadata"] == "checksum matches"


def test_a_store_written_before_the_checksum_still_decodes_as_unprotected(
        cli, t1_store, tmp_path):
    store = tmp_path / "legacy.zarr"
    shutil.copytree(t1_store, store)

    def _as_version_2(attributes: dict, zarray: dict) -> None:
        del attributes["metadata_sha256"]
        attributes["format_version"] = 2

    _edit(store, _as_version_2)
    output = tmp_path / "legacy.nii.gz"
    code, _, err = cli("decompress", store, output, "--workers", "1")
    assert code == 0, err
    assert f"note: {store}: metadata unprotected" in err
    np.testing.assert_array_equal(np.asarray(nib.load(output).dataobj),
                                  read_store(t1_store, workers=1).array)
    code, out, _ = cli("verify", store)
    assert code == 0 and "metadata unprotected" in out
    code, out, _ = cli("info", store, "--json")
    assert json.loads(out)["metadata"].startswith("unprotected")
    assert StoreVolume(store).store.protected is False


def test_a_current_store_whose_checksum_was_removed_is_refused(cli, t1_store, tmp_path):
    """Removing the seal does not pass an edited store off as one written before seals."""
    store = tmp_path / "unsealed.zarr"
    shutil.copytree(t1_store, store)

    def _unseal_and_edit(attributes: dict, zarray: dict) -> None:
        del attributes["metadata_sha256"]
        attributes["intensity"]["offset"] += 1

    _edit(store, _unseal_and_edit)
    code, _, err = cli("verify", store)
    assert code == EXIT_CHECK_FAILED and "metadata_sha256 is missing" in err, err
    code, _, err = cli("decompress", store, tmp_path / "out.nii.gz", "--workers", "1")
    assert code == EXIT_BAD_INPUT and "metadata_sha256 is missing" in err, err
    assert not (tmp_path / "out.nii.gz").exists()
    with pytest.raises(MedlossyError, match="metadata_sha256 is missing"):
        StoreVolume(store)


def test_an_edited_ngff_scale_fails_verify(cli, t1_store, tmp_path):
    """OME-Zarr viewers read the spacing from ``multiscales``: doubling it passed verify
    (found by a tester)."""
    store = tmp_path / "ngff.zarr"
    shutil.copytree(t1_store, store)
    zattrs = json.loads((store / ".zattrs").read_bytes())
    zattrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][0] *= 2
    (store / ".zattrs").write_text(json.dumps(zattrs))
    code, _, err = cli("verify", store)
    assert code == EXIT_CHECK_FAILED
    _one_line(err, str(store), "multiscales changed since compress")


def test_a_version_1_store_is_unprotected_and_readable(cli):
    store = Path(__file__).parent / "data" / "store_v1.zarr"
    code, out, err = cli("verify", store)
    assert code == 0, err
    assert "metadata unprotected" in out


def test_the_layered_writer_of_sweeps_seals_every_store(tmp_path, cli):
    # dataset compress writes its stores through compress_volume_ratios (layered encode)
    from medlossy.compression import compress_volume_ratios

    rng = np.random.default_rng(5)
    array = (rng.normal(300, 40, (48, 40, 6)) + np.arange(48)[:, None, None] * 4).astype(
        np.int16)
    outputs = {ratio: tmp_path / f"r{ratio:g}.zarr" for ratio in (1.0, 3.0)}
    compress_volume_ratios(Volume(array, np.eye(4), modality="MR"), outputs, workers=1)
    for store in outputs.values():
        code, out, err = cli("verify", store)
        assert code == 0 and "and the metadata match" in out, (out, err)
        _edit(store, _offset)
        assert cli("verify", store)[0] == EXIT_CHECK_FAILED
