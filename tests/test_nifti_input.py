"""NIfTI inputs as tools write them: a 3D image saved with a singleton 4th axis (x, y, z, 1).

Regression test for issue 12: such a file was refused ("expected a 3D volume").
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medlossy.io import read_volume


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
