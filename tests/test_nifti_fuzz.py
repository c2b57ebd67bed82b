"""Property tests: damaged NIfTI files end in a one-line error (exit 2) or a correct store.

A small NIfTI-1 file (a 96 x 80 x 6 CT crop, int16 with scl_slope 0.5 / scl_inter 10, so
the stored-integer path is exercised) is damaged by Hypothesis: header fields rewritten
(dimensions, voxel type, offsets, scaling, qform/sform, magic), header bytes bit-flipped, or
the file truncated. `compress --lossless` then either exits 2 with one line and writes
nothing, or exits 0 with a store that decompresses to exactly what nibabel reads from the
damaged file; never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import leftovers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlossy.cli.main import main as cli_main

#: MEDLOSSY_FUZZ_EXAMPLES=2000 for a longer hunt; CI runs the default.
_FUZZ = settings(max_examples=int(os.environ.get("MEDLOSSY_FUZZ_EXAMPLES", "40")),
                 deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])
_HEADER = nib.nifti1.header_dtype
_FIELDS = ("dim", "pixdim", "datatype", "bitpix", "vox_offset", "scl_slope", "scl_inter",
           "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
           "srow_x", "srow_z", "magic", "sizeof_hdr", "xyzt_units", "intent_code", "dim_info")
_NUMBERS = st.one_of(st.integers(-(2**31), 2**31), st.floats(allow_nan=True,
                                                               allow_infinity=True),
                     st.sampled_from([0, 1, -1, 2, 3, 4, 5, 7, 8, 16, 64, 128, 256, 352,
                                      512, 768, 2304, 32767, 1e30, 1e-30]))


@pytest.fixture(scope="module")
def source_bytes(ct_b_crop_array, ct_b_crop_image, tmp_path_factory) -> bytes:
    image = nib.Nifti1Image(np.asarray(ct_b_crop_array, dtype=np.int16)[:, :, :6],
                            ct_b_crop_image.affine)
    image.header["scl_slope"], image.header["scl_inter"] = 0.5, 10.0
    path = tmp_path_factory.mktemp("nifti_fuzz") / "ct.nii"
    nib.save(image, path)
    return path.read_bytes()


def _run(*arguments: str | os.PathLike[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in arguments])
    return code, err.getvalue()


def _nibabel_reads(path: Path) -> np.ndarray | None:
    """What nibabel reads from the damaged file, squeezed to 3D; None if it cannot."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.asarray(nib.load(path).dataobj)
    except Exception:  # nibabel's own failures on damaged files come in many types
        return None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _compress_or_fail_cleanly(path: Path, scratch: Path) -> None:
    store = scratch / "out" / "s.zarr"
    store.parent.mkdir()
    code, err = _run("compress", path, store, "--lossless", "--workers", "1", "--quiet")
    if code != 0:
        assert code == 2, err
        assert err.startswith("medlossy: error: ") and err.count("\n") == 1, err
        assert not store.exists() and leftovers(store.parent) == []
        return
    expected = _nibabel_reads(path)
    assert expected is not None
    back = scratch / "back.nii.gz"
    code, err = _run("decompress", store, back, "--workers", "1", "--quiet")
    assert code == 0, err
    decoded = np.asarray(nib.load(back).dataobj)
    assert decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)


def _write(scratch: Path, data: bytes) -> Path:
    path = scratch / "damaged.nii"
    path.write_bytes(data)
    return path


@_FUZZ
@given(field=st.sampled_from(_FIELDS), value=_NUMBERS, position=st.integers(0, 7))
def test_rewritten_header_field(source_bytes, field, value, position):
    header = np.frombuffer(source_bytes[:348], dtype=_HEADER).copy()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if header[field].ndim > 1 or header.dtype[field].shape:  # dim, pixdim, srow_*
                header[field][0, position % header.dtype[field].shape[0]] = value
            elif field == "magic":
                header[field] = str(value).encode()[:4]
            else:
                header[field] = value
        except (OverflowError, ValueError, TypeError):
            return  # not representable in that field: nothing to write
    with tempfile.TemporaryDirectory() as scratch:
        path = _write(Path(scratch), header.tobytes() + source_bytes[348:])
        _compress_or_fail_cleanly(path, Path(scratch))


@_FUZZ
@given(where=st.integers(0, 351), bit=st.integers(0, 7))
def test_flipped_header_bit(source_bytes, where, bit):
    data = bytearray(source_bytes)
    data[where] ^= 1 << bit
    with tempfile.TemporaryDirectory() as scratch:
        _compress_or_fail_cleanly(_write(Path(scratch), bytes(data)), Path(scratch))


@_FUZZ
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_file(source_bytes, fraction):
    with tempfile.TemporaryDirectory() as scratch:
        path = _write(Path(scratch), source_bytes[: int(fraction * len(source_bytes))])
        _compress_or_fail_cleanly(path, Path(scratch))
