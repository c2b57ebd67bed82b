"""Lossy stores say where their error came from: the 16-bit intensity mapping or the codec.

Regression tests for issue 12: in ratio and PSNR mode only the total error was reported, so a
float MR's rounding onto 16-bit codes could not be told apart from JPEG 2000's loss.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medlossy.codecs.intensity import plan_mapping
from medlossy.compression import Target, compress_volume
from medlossy.metrics import ErrorTally
from medlossy.volume import Volume


@pytest.fixture(scope="module")
def float_mr(mr_array) -> np.ndarray:
    rng = np.random.default_rng(5)
    return (np.asarray(mr_array, dtype=np.float32) * np.float32(0.613)
            + rng.random(mr_array.shape, dtype=np.float32)).astype(np.float32)


@pytest.fixture(scope="module")
def float_mr_file(float_mr, mr_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("sources") / "mr_float.nii.gz"
    nib.save(nib.Nifti1Image(float_mr, nib.load(mr_path).affine), path)
    return path


def test_ratio_mode_reports_mapping_and_codec_error_separately(float_mr, mr_path, tmp_path):
    volume = Volume(float_mr, nib.load(mr_path).affine, modality="MR")
    attributes = compress_volume(volume, tmp_path / "s.zarr", Target("ratio", 6.0), workers=1)
    sources = attributes["achieved"]["error_sources"]
    # the mapping's own error, computed here independently of medlossy's bookkeeping
    mapping = plan_mapping(float(float_mr.min()), float(float_mr.max()), float_mr.dtype, False)
    alone = ErrorTally()
    alone.add(float_mr, mapping.to_values(mapping.to_codes(float_mr)))
    assert alone.max_abs_error > 0
    assert sources["intensity_mapping"]["max_abs_error"] == pytest.approx(alone.max_abs_error,
                                                                          rel=1e-5)
    assert sources["intensity_mapping"]["mse"] == pytest.approx(alone.mse, rel=1e-5)
    # half a code step, plus the float32 rounding of the value itself
    float32_ulp = float(np.spacing(np.abs(float_mr).max()))
    assert sources["intensity_mapping"]["max_abs_error"] <= (mapping.max_rounding_error
                                                             + float32_ulp)
    codec, total = sources["codec"], attributes["achieved"]
    assert codec["mse"] > sources["intensity_mapping"]["mse"]  # at x6 the codec loses more
    assert total["max_abs_error"] <= (codec["max_abs_error"]
                                      + sources["intensity_mapping"]["max_abs_error"]) * 1.0001


def test_a_scaled_integer_nifti_has_no_mapping_error(ct_b_crop_array, ct_b_crop_image,
                                                     tmp_path, cli):
    raw = np.asarray(ct_b_crop_array, dtype=np.int16)
    image = nib.Nifti1Image(raw, ct_b_crop_image.affine)
    image.header["scl_slope"], image.header["scl_inter"] = 0.5, 10.0
    nib.save(image, tmp_path / "scaled.nii.gz")
    code, _, err = cli("compress", tmp_path / "scaled.nii.gz", tmp_path / "s.zarr", "--ratio",
                       "8", "--workers", "1", "--quiet")
    assert code == 0, err
    code, out, _ = cli("info", tmp_path / "s.zarr", "--json")
    import json

    achieved = json.loads(out)["achieved"]
    assert achieved["error_sources"]["intensity_mapping"]["max_abs_error"] == 0
    assert achieved["error_sources"]["codec"]["max_abs_error"] == achieved["max_abs_error"] > 0
    code, _, _ = cli("decompress", tmp_path / "s.zarr", tmp_path / "back.nii.gz", "--quiet")
    back = nib.load(tmp_path / "back.nii.gz")
    assert (back.dataobj.slope, back.dataobj.inter) == (0.5, 10.0)  # the header is kept
    assert back.get_data_dtype() == np.int16


def test_cli_summary_and_info_name_both_sources(float_mr_file, tmp_path, cli):
    store = tmp_path / "s.zarr"
    code, out, err = cli("compress", float_mr_file, store, "--psnr", "40", "--workers", "1")
    assert code == 0, err
    assert "16-bit intensity mapping alone: max" in out and "codec alone: max" in out
    code, out, _ = cli("info", store)
    assert "from intensity mapping" in out and "from codec" in out


def test_psnr_target_is_met_in_original_units_for_rescaled_data(float_mr, mr_path, tmp_path):
    """The PSNR search ran on 16-bit codes with the peak in original units, so a float MR
    aimed dozens of dB off; the peak is now converted to code units."""
    span = float(float_mr.max() - float_mr.min())
    volume = Volume(float_mr, nib.load(mr_path).affine, modality="MR")
    attributes = compress_volume(volume, tmp_path / "p.zarr", Target("psnr", 45.0),
                                 data_range=span, workers=1)
    assert attributes["achieved"]["psnr_db"] == pytest.approx(45.0, abs=0.6)
