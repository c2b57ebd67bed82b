"""Rate control's entry points, one per mode, on real CT codes (8 slices of the CT B crop).

Each entry point meets its own target, ``search`` picks it by the target's mode, and the
package stays below ``compression`` (it plans, encodes through these, verifies, writes).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import medlossy.ratecontrol as ratecontrol
from medlossy.codecs import get_codec
from medlossy.codecs.pool import slice_encoder
from medlossy.metrics import ErrorTally
from medlossy.ratecontrol import (
    RATIO_TOLERANCE,
    Encodes,
    Found,
    Target,
    encode_lossless,
    encode_max_error,
    search,
    search_psnr,
    search_ratio,
)

PEAK = 4096.0  # the study's CT peak, in codes (the codes are CT values shifted)


@pytest.fixture(scope="module")
def codes(ct_b_crop_array) -> np.ndarray:
    """Eight axial slices as unsigned 16-bit codes (JPEG-LS takes no others)."""
    slices = np.moveaxis(np.asarray(ct_b_crop_array), 2, 0)[:8].astype(np.int32)
    return np.ascontiguousarray(slices - slices.min()).astype(np.uint16)


def _total(streams: list[bytes]) -> int:
    return sum(map(len, streams))


def _run(codec_name: str, codes: np.ndarray, call) -> tuple[Found, list[np.ndarray], int]:
    """``call(encodes)`` on a one-worker encoder filled with ``codes``; the answer, its
    decoded slices and the whole-volume encodes it took."""
    codec = get_codec(codec_name)
    with slice_encoder(codec, codes.shape, codes.dtype.name, 1) as encoder:
        encoder.slices[:] = codes
        encodes = Encodes(encoder, "test")
        found = call(encodes)
    decoded = [codec.decode(s, shape=codes.shape[1:], dtype=codes.dtype) for s in found.streams]
    return found, decoded, encodes.passes


def test_ratio_lands_on_the_budget_every_byte_counted(codes) -> None:
    target = Target("ratio", 10)
    raw = codes.size * 2
    found, _, passes = _run("jpeg2k", codes,
                            lambda e: search_ratio(e, _total, target, raw))
    assert abs(raw / _total(found.streams) / 10 - 1.0) <= RATIO_TOLERANCE
    assert found.reached and not found.out_of_reach and passes >= 1


@pytest.mark.parametrize("psnr_db", [45.0, 48.0])
def test_psnr_meets_its_target_on_the_codes(codes, psnr_db) -> None:
    found, decoded, _ = _run("jpeg2k", codes, lambda e: search_psnr(e, psnr_db, PEAK))
    tally = ErrorTally()
    tally.add(codes, np.stack(decoded))
    assert found.reached and psnr_db - 0.1 <= tally.psnr(PEAK) <= psnr_db + 0.5


def test_max_error_keeps_every_voxel_within_its_bound(codes) -> None:
    found, decoded, passes = _run("jpegls", codes, lambda e: encode_max_error(e, 3))
    worst = np.abs(np.stack(decoded).astype(np.int32) - codes).max()
    assert found.bound == 3 and 0 < worst <= 3 and passes == 1


def test_lossless_is_bit_exact(codes) -> None:
    found, decoded, passes = _run("jpeg2k", codes, encode_lossless)
    np.testing.assert_array_equal(np.stack(decoded), codes)
    assert found.bound == 0 and passes == 1


@pytest.mark.parametrize(("codec_name", "target", "direct"), [
    ("jpeg2k", Target("ratio", 12), lambda e, raw: search_ratio(e, _total, Target("ratio", 12),
                                                                raw)),
    ("jpeg2k", Target("psnr", 48), lambda e, raw: search_psnr(e, 48.0, PEAK)),
    ("jpegls", Target("max_error", 2), lambda e, raw: encode_max_error(e, 2)),
    ("jpeg2k", Target("lossless"), lambda e, raw: encode_lossless(e)),
])
def test_search_picks_the_entry_point_of_the_target_mode(codes, codec_name, target,
                                                         direct) -> None:
    raw = codes.size * 2
    picked, _, picked_passes = _run(codec_name, codes,
                                    lambda e: search(target, e, _total, raw, PEAK, 2))
    alone, _, alone_passes = _run(codec_name, codes, lambda e: direct(e, raw))
    assert picked.streams == alone.streams and picked.setting == alone.setting
    assert picked_passes == alone_passes


def test_rate_control_imports_nothing_above_the_codecs() -> None:
    """A module imports only from its left: codecs, metrics, errors, and itself."""
    allowed = ("medlossy.codecs", "medlossy.metrics", "medlossy.errors", "medlossy.ratecontrol")
    package = Path(ratecontrol.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert len(modules) > 1  # a package, one job per module
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medlossy"):
                assert node.module.startswith(allowed), f"{module.name} imports {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("medlossy") \
                        or alias.name.startswith(allowed), f"{module.name}: {alias.name}"
