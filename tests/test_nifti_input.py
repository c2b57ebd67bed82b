"""NIfTI inputs as tools write them: a 3D image saved with a singleton 4th axis (x, y, z, 1).

Regression test for issue 12: such a file was refused ("expected a 3D volume").
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlossy.errors import MedlossyError
from medlossy.io import read_volume

SOURCE = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def four_d_file(ct_b_crop_array, ct_b_crop_image, tmp_path_factory):
    path = tmp_path_factory.mktemp("nifti4d") / "ct_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ct_b_crop_array)[..., np.newaxis],
                             ct_b_crop_image.affine), path)
    assert nib.load(path).shape == (96, 80, 24, 1)
    return path


@pytest.mark.parametrize("lazy", [True, False])
def test_singleton_fourth_axis_reads_as_3d(four_d_file, ct_b_crop_array, lazy):
    volume = read_volume(four_d_file, "CT", lazy=lazy)
    assert volume.shape == (96, 80, 24)
    np.testing.assert_array_equal(np.asarray(volume.array), ct_b_crop_array)
    slabs = np.concatenate([slab for _, slab in volume.slabs(7)])
    np.testing.assert_array_equal(slabs, np.moveaxis(ct_b_crop_array, 2, 0))


def test_singleton_fourth_axis_compresses_and_decompresses(cli, four_d_file, ct_b_crop_array,
                                                           tmp_path):
    code, _, err = cli("compress", four_d_file, tmp_path / "s.zarr", "--lossless", "--workers",
                       "1", "--quiet")
    assert code == 0, err
    code, _, err = cli("decompress", tmp_path / "s.zarr", tmp_path / "back.nii.gz", "--quiet")
    assert code == 0, err
    back = nib.load(tmp_path / "back.nii.gz")
    assert back.shape == (96, 80, 24)
    np.testing.assert_array_equal(np.asarray(back.dataobj), ct_b_crop_array)
    np.testing.assert_allclose(back.affine, nib.load(four_d_file).affine, atol=1e-6)


def test_a_real_time_series_is_still_refused_in_one_line(cli, ct_b_crop_array,
                                                         ct_b_crop_image, tmp_path):
    series = np.stack([ct_b_crop_array, ct_b_crop_array], axis=-1)
    nib.save(nib.Nifti1Image(series, ct_b_crop_image.affine), tmp_path / "t.nii.gz")
    code, _, err = cli("compress", tmp_path / "t.nii.gz", tmp_path / "s.zarr", "--ratio", "10")
    assert code == 2
    assert err.count("\n") == 1 and "t.nii.gz" in err and "3D" in err
    assert not (tmp_path / "s.zarr").exists()


# Damaged headers end in one line (exit 2), nothing before it; a subprocess, so that what
# nibabel's logger prints to the real stderr is seen.
def _compress_in_a_subprocess(path, tmp_path):
    return subprocess.run([sys.executable, "-m", "medlossy.cli.main", "compress", str(path),
                           str(tmp_path / "s.zarr"), "--lossless", "--quiet"],
                          env={**os.environ, "PYTHONPATH": str(SOURCE)},
                          capture_output=True, text=True, timeout=120)


def _damaged(tmp_path, name, dims=None, pixdim=None, cut=0):
    data = np.arange(40 * 40 * 8, dtype=np.int16).reshape(40, 40, 8)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "good.nii")
    header = bytearray((tmp_path / "good.nii").read_bytes())
    if dims is not None:
        header[40:56] = np.array([3, *dims, 1, 1, 1, 1], dtype="<i2").tobytes()
    if pixdim is not None:
        header[76:108] = np.array(pixdim, dtype="<f4").tobytes()
    content = bytes(header[: len(header) - cut])
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    return path


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_a_header_claiming_32767_cubed_voxels_is_refused_in_one_line(tmp_path, name):
    done = _compress_in_a_subprocess(_damaged(tmp_path, name, dims=(32767,) * 3), tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert name in done.stderr and "32767x32767x32767 int16 voxels (70.4 TB)" in done.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_nibabel_repairs_print_nothing_before_the_error_line(tmp_path):
    path = _damaged(tmp_path, "cut.nii", pixdim=[0] * 8, cut=100)
    done = _compress_in_a_subprocess(path, tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("medlossy: error: ") and done.stderr.count("\n") == 1, \
        done.stderr
    assert "truncated" in done.stderr


def test_more_voxels_than_this_machines_memory_is_refused(tmp_path, monkeypatch):
    path = _damaged(tmp_path, "fine.nii.gz")
    monkeypatch.setattr(os, "sysconf", lambda name: 4 if name == "SC_PHYS_PAGES" else 4096)
    with pytest.raises(MedlossyError, match=r"int16 voxels \(25.6 kB\), more than this "
                                            r"machine's memory \(16.4 kB\)"):
        read_volume(path, lazy=True)
