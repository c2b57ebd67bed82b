"""Property tests: damaged stores end in a one-line error (exit 2) or a correct result.

Two small stores (JPEG 2000 at x8 of a CT crop; lossless Blosc of a float MR crop) are damaged
by Hypothesis: chunk files truncated, bit-flipped, replaced or deleted (with the CRC-32 left
as it was, or re-stamped to match so the decoder itself meets the damage), metadata files
truncated or bit-flipped, and medlossy / zarr metadata values deleted or rewritten. Then
`decompress`, `verify` and `info --json` run through the CLI: each exits 0 with a correct
result or exits 2 with one line on stderr and no output left behind (`verify`: 1 when a
checksum no longer matches); never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import leftovers, reseal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlossy.cli.main import main as cli_main
from medlossy.compression import Target, compress_volume
from medlossy.decompression import read_store
from medlossy.io import read_volume
from medlossy.volume import Volume

#: MEDLOSSY_FUZZ_EXAMPLES=2000 for a longer hunt; CI runs the default.
_FUZZ = settings(max_examples=int(os.environ.get("MEDLOSSY_FUZZ_EXAMPLES", "40")),
                 deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])
SLICES = 6
_JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
    st.text(max_size=8), st.lists(st.integers(-3, 1000), max_size=5),
    st.lists(st.lists(st.floats(allow_nan=True), max_size=4), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
#: Metadata values that medlossy reads (file, key path).
_KEYS = [(".zattrs", ("medlossy", *path)) for path in (
    ("format_version",), ("intensity",), ("intensity", "original_dtype"),
    ("intensity", "code_dtype"), ("intensity", "offset"), ("intensity", "scale"),
    ("intensity", "slope"), ("geometry",), ("geometry", "shape"), ("geometry", "axial_axis"),
    ("geometry", "affine"), ("codec",), ("codec", "name"), ("codec", "setting"),
    ("chunk_crc32",), ("achieved",), ("achieved", "ratio"), ("achieved", "psnr_db"),
    ("target",), ("source",), ("source", "header_b64"), ("source", "format"),
    ("source", "scl_slope"), ("source", "scl_inter"), ("modality",))] + [
    (".zattrs", ("medlossy",)), (".zattrs", ("multiscales",)),
    ("0/.zarray", ("shape",)), ("0/.zarray", ("chunks",)), ("0/.zarray", ("dtype",)),
    ("0/.zarray", ("compressor",)), ("0/.zarray", ("filters",))]


def _source(array: np.ndarray, affine: np.ndarray, modality: str) -> Volume:
    return Volume(np.ascontiguousarray(array[:, :, :SLICES]), affine, modality=modality)


@pytest.fixture(scope="module")
def stores(ct_b_crop_array, ct_b_crop_image, mr_array, mr_path, tmp_path_factory):
    """Pristine stores and what they decode to."""
    folder = tmp_path_factory.mktemp("fuzz_stores")
    rng = np.random.default_rng(2)
    float_mr = (np.asarray(mr_array, dtype=np.float32)
                + rng.random(mr_array.shape, dtype=np.float32)).astype(np.float32)
    # JPEG 2000 from a NIfTI file whose integers are scaled (header and scaling kept)
    image = nib.Nifti1Image(np.asarray(ct_b_crop_array, dtype=np.int16)[:, :, :SLICES],
                            ct_b_crop_image.affine)
    image.header["scl_slope"], image.header["scl_inter"] = 0.5, 10.0
    nib.save(image, folder / "scaled.nii.gz")
    made = {}
    for name, volume, target in (
            ("jpeg2k", read_volume(folder / "scaled.nii.gz", "CT"), Target("ratio", 8.0)),
            ("blosc", _source(float_mr, nib.load(mr_path).affine, "MR"), Target("lossless"))):
        path = folder / f"{name}.zarr"
        attributes = compress_volume(volume, path, target, workers=1)
        assert attributes["codec"]["name"] == name
        made[name] = (path, read_store(path, workers=1).array)
    return made


def _run(*arguments: str | os.PathLike[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in arguments])
    return code, out.getvalue(), err.getvalue()


def _assert_clean_failure(code: int, err: str, codes: tuple[int, ...] = (2,)) -> None:
    """One error line; exit 2 (bad input) unless ``codes`` also allows verify's 1 (a check
    that failed)."""
    assert code in codes, err
    assert err.startswith("medlossy: error: ") and err.count("\n") == 1, err


def _check_commands(store: Path, expected: np.ndarray | None, scratch: Path) -> None:
    """Run decompress / verify / info on ``store``; ``expected`` is what a correct decode
    gives, or None when the damage may legitimately change the values (metadata rewritten,
    chunk re-stamped): then only shape and dtype are checked."""
    output = scratch / "out" / "back.nii.gz"
    output.parent.mkdir()
    code, _, err = _run("decompress", store, output, "--workers", "1", "--quiet")
    if code == 0:
        back = np.asarray(nib.load(output).dataobj)
        if expected is not None:
            np.testing.assert_array_equal(back, expected)
        else:
            assert back.ndim == 3
    else:
        _assert_clean_failure(code, err)
        assert not output.exists() and leftovers(output.parent) == []
    code, _, err = _run("verify", store)
    if code != 0:  # 1: a checksum no longer matches; 2: metadata unreadable
        _assert_clean_failure(code, err, (1, 2))
    code, out, err = _run("info", store, "--json")
    if code == 0:
        json.loads(out)
    else:
        _assert_clean_failure(code, err)
    code, out, err = _run("info", store)
    if code != 0:
        _assert_clean_failure(code, err)
        assert out == ""


def _copy(stores, which: str, scratch: Path) -> tuple[Path, np.ndarray]:
    path, decoded = stores[which]
    copy = scratch / "damaged.zarr"
    shutil.copytree(path, copy)
    return copy, decoded


def _restamp(store: Path, index: int) -> None:
    """Make the recorded CRC-32 (and the metadata checksum) match a damaged chunk, as a
    careless tool would, so that the decoder itself meets the damage."""
    document = json.loads((store / ".zattrs").read_bytes())
    chunk = store / "0" / f"{index}.0.0"
    document["medlossy"]["chunk_crc32"][index] = (zlib.crc32(chunk.read_bytes())
                                                  if chunk.exists() else 0)
    reseal(document, store)
    (store / ".zattrs").write_text(json.dumps(document))


@_FUZZ
@given(which=st.sampled_from(["jpeg2k", "blosc"]), index=st.integers(0, SLICES - 1),
       damage=st.sampled_from(["truncate", "flip", "replace", "delete"]),
       where=st.floats(0.0, 1.0), bit=st.integers(0, 7), noise=st.binary(max_size=300),
       restamp=st.booleans())
def test_damaged_chunk(stores, which, index, damage, where, bit, noise, restamp):
    with tempfile.TemporaryDirectory() as scratch:
        store, decoded = _copy(stores, which, Path(scratch))
        chunk = store / "0" / f"{index}.0.0"
        data = bytearray(chunk.read_bytes())
        if damage == "truncate":
            chunk.write_bytes(bytes(data[: int(where * (len(data) - 1))]))
        elif damage == "flip":
            data[int(where * (len(data) - 1))] ^= 1 << bit
            chunk.write_bytes(bytes(data))
        elif damage == "replace":
            chunk.write_bytes(noise)
        else:
            chunk.unlink()
        if restamp:
            _restamp(store, index)
        # Without a matching CRC, the damage is always caught: a decode is never wrong.
        _check_commands(store, None if restamp else decoded, Path(scratch))
        if not restamp:
            code, _, err = _run("verify", store)
            _assert_clean_failure(code, err, (1,))
            assert f"{index}" in err


@_FUZZ
@given(which=st.sampled_from(["jpeg2k", "blosc"]),
       name=st.sampled_from([".zattrs", ".zgroup", "0/.zarray"]),
       damage=st.sampled_from(["truncate", "flip", "delete"]), where=st.floats(0.0, 1.0),
       bit=st.integers(0, 7))
def test_damaged_metadata_file(stores, which, name, damage, where, bit):
    with tempfile.TemporaryDirectory() as scratch:
        store, _ = _copy(stores, which, Path(scratch))
        file = store / name
        data = bytearray(file.read_bytes())
        if damage == "truncate":
            file.write_bytes(bytes(data[: int(where * (len(data) - 1))]))
        elif damage == "flip":
            data[int(where * (len(data) - 1))] ^= 1 << bit
            file.write_bytes(bytes(data))
        else:
            file.unlink()
        _check_commands(store, None, Path(scratch))


@_FUZZ
@given(which=st.sampled_from(["jpeg2k", "blosc"]), key=st.sampled_from(_KEYS),
       value=_JSON_VALUES, delete=st.booleans())
def test_rewritten_metadata_value(stores, which, key, value, delete):
    with tempfile.TemporaryDirectory() as scratch:
        store, _ = _copy(stores, which, Path(scratch))
        name, path = key
        document = json.loads((store / name).read_bytes())
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        if delete:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value
        (store / name).write_text(json.dumps(document))
        _check_commands(store, None, Path(scratch))
