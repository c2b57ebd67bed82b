"""A ratio that lossless already beats is stored losslessly, even where the codec's finest
lossy settings are larger than lossless (a heavily clipped CT): never a lossy store that is
both larger and inexact. On ordinary data the check costs a sample, not a lossless pass."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlossy.codecs import get_codec
from medlossy.codecs.pool import slice_encoder
from medlossy.compression import compress_volume_ratios
from medlossy.ratecontrol import Encodes, Target, search_ratio
from medlossy.volume import Volume

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def clipped_ct() -> np.ndarray:
    """16 x 256 x 256 slices of a body in a narrow window (-150..-50 HU): air and soft tissue
    clip, 94% of the voxels, and only a noisy fat rim is in the window; (x, y, z) order."""
    rng = np.random.default_rng(0)
    _, y, x = np.mgrid[0:16, 0:256, 0:256].astype(np.float32)
    rim = ((y - 128) / 110) ** 2 + ((x - 128) / 120) ** 2
    hu = np.where(rim < 1, 40.0, -1000.0)
    hu = np.where((rim < 1) & (rim > 0.9), -100.0, hu) + rng.normal(0, 20, hu.shape) * (rim < 1)
    return np.clip(np.round(hu), -150, -50).astype(np.int16).transpose(2, 1, 0)


@pytest.fixture(scope="module")
def clipped_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clipped") / "clipped_ct.nii.gz"
    nib.save(nib.Nifti1Image(clipped_ct(), AFFINE), path)
    return path


def achieved(cli, path: Path, output: Path, *mode: str) -> dict:
    code, out, _ = cli("compress", path, output, *mode, "--workers", "1", "--json")
    assert code == 0
    return json.loads(out)


# Before: jpeg2k stored x15 lossy in 139,482 B, htj2k x12 in 174,757 B, while lossless
# takes 127,561 B (x16.4) and 136,929 B (x15.3).
@pytest.mark.parametrize("codec, ratio", [("jpeg2k", "15"), ("htj2k", "12")])
def test_a_ratio_lossless_beats_is_stored_losslessly_not_larger_and_lossy(
        cli, clipped_file, tmp_path, codec, ratio):
    exact = achieved(cli, clipped_file, tmp_path / "lossless.zarr", "--lossless",
                     "--codec", codec)
    document = achieved(cli, clipped_file, tmp_path / "ratio.zarr", "--ratio", ratio,
                        "--codec", codec)
    assert document["max_abs_error"] == 0.0
    assert document["stored_bytes"] <= exact["stored_bytes"] + 64  # the target's own record
    assert document["target_reached"] is False and document["ratio"] > float(ratio) * 1.01


def test_a_sweep_stores_lossless_for_the_ratios_it_beats_from_one_lossless_encode(tmp_path):
    outputs = {r: tmp_path / f"r{r:g}.zarr" for r in (1, 12, 15, 100)}
    written = compress_volume_ratios(Volume(clipped_ct(), AFFINE, modality="CT"), outputs,
                                     workers=1)
    assert [written[r]["codec"]["setting"]["mode"] for r in (1, 12, 15)] == ["lossless"] * 3
    assert written[1]["achieved"]["stored_bytes"] >= written[12]["achieved"]["stored_bytes"] - 64
    assert written[100]["achieved"]["target_reached"] is True
    assert written[100]["achieved"]["max_abs_error"] > 0
    # the ratio-1 encode serves x12 and x15: one lossless pass, the rest x100's layered ones
    layered_only = compress_volume_ratios(Volume(clipped_ct(), AFFINE, modality="CT"),
                                          {100: tmp_path / "alone.zarr"}, workers=1)
    assert written[1]["achieved"]["encode_passes"] == \
        layered_only[100]["achieved"]["encode_passes"] + 1


def test_ordinary_data_far_above_lossless_costs_no_lossless_pass(ct_b_crop_array):
    codes = np.ascontiguousarray((ct_b_crop_array.transpose(2, 1, 0) + 1024).clip(0)
                                 .astype(np.uint16))
    with slice_encoder(get_codec("jpeg2k"), codes.shape, "uint16", 1) as encoder:
        encoder.slices[...] = codes
        encodes = Encodes(encoder, "ct")
        found = search_ratio(encodes, lambda streams: sum(map(len, streams)),
                             Target("ratio", 20.0), codes.size * 2)
    assert found.setting.mode == "quality" and found.reached
    assert not encodes.has_lossless and encodes.lossless_sample is not None
