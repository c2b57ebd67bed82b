"""The decode cache: boxes read through it are the boxes read without it, a box read twice
decodes nothing the second time, and the budget bounds what is held."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from medlossy.compression import Target, compress_volume
from medlossy.errors import MedlossyError
from medlossy.loading import StoreVolume, cache, volume
from medlossy.volume import Volume

BOXES = [((0, 0, 0), (6, 40, 36)), ((3, 20, 30), (8, 50, 40)), ((10, 60, 1), (14, 36, 79)),
         ((0, 0, 0), (24, 96, 80)), ((5, 17, 9), (1, 1, 1))]


@pytest.fixture(scope="module")
def stores(ct_b_crop_image, ct_b_crop_array, tmp_path_factory) -> dict:
    """The 96 x 80 x 24 real CT crop at x10: JPEG 2000 untiled (windows decoded through
    OpenJPEG's decode area without the cache), HTJ2K untiled, JPEG 2000 in 32 x 32 tiles."""
    root = tmp_path_factory.mktemp("decode-cache")
    image = Volume(ct_b_crop_array, ct_b_crop_image.affine, modality="CT")
    written = {}
    for name, codec, tile in (("jpeg2k", "jpeg2k", None), ("htj2k", "htj2k", None),
                              ("tiled", "jpeg2k", 32)):
        path = root / f"{name}.zarr"
        compress_volume(image, path, Target("ratio", 10.0), codec_name=codec, workers=1,
                        tile=tile)
        written[name] = path
    return written


@pytest.fixture
def budget():
    """Set this process's cache budget (MB) for one test (conftest unsets it after each)."""
    return cache.set_budget


def _counting_decoder(monkeypatch) -> list[bool]:
    """Patch the loader's slice decoder; returns, per call, whether it decoded a window."""
    calls: list[bool] = []
    decode = volume.decode_slice

    def counted(*arguments, **options):
        window = options.get("window", arguments[5] if len(arguments) > 5 else None)
        calls.append(window is not None)
        return decode(*arguments, **options)

    monkeypatch.setattr(volume, "decode_slice", counted)
    return calls


@pytest.mark.parametrize("name", ["htj2k", "tiled"])
def test_boxes_read_through_the_cache_are_the_boxes_read_without(stores, budget, name,
                                                                 monkeypatch) -> None:
    expected = [StoreVolume(stores[name]).read(*box) for box in BOXES]
    budget(64)
    cached = StoreVolume(stores[name])
    calls = _counting_decoder(monkeypatch)
    for box, values in zip(BOXES, expected, strict=True):
        np.testing.assert_array_equal(cached.read(*box), values)
    first = len(calls)
    assert first > 0 and not any(calls)  # whole slices and tiles
    for box, values in zip(BOXES, expected, strict=True):  # again: all from the cache
        np.testing.assert_array_equal(cached.read(*box), values)
    assert len(calls) == first
    held = cache.decode_cache()
    assert held.hits > 0 and 0 < held.used <= held.budget


def test_jpeg2k_keeps_whole_slices_only_once_reads_come_back_to_them(stores, budget,
                                                                      monkeypatch) -> None:
    """Untiled JPEG 2000 decodes a window for about half a slice's cost: windows until the
    cache sees reads return to slices it could hold, then whole slices kept."""
    expected = [StoreVolume(stores["jpeg2k"]).read(*box) for box in BOXES]
    budget(64)
    cached = StoreVolume(stores["jpeg2k"])
    calls = _counting_decoder(monkeypatch)
    for box, values in zip(BOXES[:3], expected, strict=False):
        np.testing.assert_array_equal(cached.read(*box), values)
    held = cache.decode_cache()
    assert held.used == 0 and all(calls)  # the first reads: windows, nothing kept
    assert BOXES[3][1] == (24, 96, 80)  # a box of whole slices: decoded whole, kept
    for _ in range(12):
        for box, values in zip(BOXES, expected, strict=True):
            np.testing.assert_array_equal(cached.read(*box), values)
    assert held.revisit_share > cache.WORTH_KEEPING and held.used > 0
    assert not all(calls)  # whole slices decoded since
    calls.clear()
    for box, values in zip(BOXES, expected, strict=True):
        np.testing.assert_array_equal(cached.read(*box), values)
    assert calls == []  # every slice from the cache


def test_jpeg2k_stays_with_windows_where_the_cache_cannot_hold_what_comes_back(
        stores, budget, monkeypatch) -> None:
    budget(3 * 96 * 80 * 2 / 2**20)  # three slices of the 24 every read spans
    cached = StoreVolume(stores["jpeg2k"])
    calls = _counting_decoder(monkeypatch)
    for _ in range(30):
        cached.read((0, 10, 10), (24, 40, 40))
    assert all(calls) and cache.decode_cache().used == 0


def test_the_budget_bounds_what_is_held(stores, budget) -> None:
    slice_bytes = 96 * 80 * 2  # one decoded 16-bit slice of the crop
    budget(5.5 * slice_bytes / 2**20)
    store = StoreVolume(stores["htj2k"])
    store.read((0, 0, 0), (24, 96, 80))
    held = cache.decode_cache()
    assert held.used == 5 * slice_bytes  # the 5 most recent slices
    assert held.lookup(store.cache_key(23)) is not None
    assert held.lookup(store.cache_key(0)) is None


def test_a_cached_array_cannot_be_changed_by_a_caller(budget) -> None:
    budget(1)
    held = cache.decode_cache()
    kept = held.keep("key", np.arange(10, dtype=np.int16)[2:8])
    assert kept.base is None and not kept.flags.writeable
    with pytest.raises(ValueError):
        kept[0] = 5
    assert held.keep("big", np.zeros(2**20, dtype=np.int16)) is not None
    assert held.lookup("big") is None  # larger than the budget: not kept


def test_processes_started_later_inherit_the_budget(budget) -> None:
    budget(12.5)
    probe = "from medlossy.loading.cache import decode_cache; print(decode_cache().budget)"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert int(run.stdout) == int(12.5 * 2**20)


@pytest.mark.parametrize("text", ["lots", "-1", "nan", "inf"])
def test_a_bad_budget_in_the_environment_is_named(monkeypatch, text: str) -> None:
    monkeypatch.setenv(cache.ENVIRONMENT, text)
    with pytest.raises(MedlossyError, match=f"{cache.ENVIRONMENT}.*megabytes >= 0"):
        cache.decode_cache()
    monkeypatch.delenv(cache.ENVIRONMENT)
    assert cache.decode_cache() is None


def test_bench_loader_runs_with_a_decode_cache(stores, cli) -> None:
    code, out, err = cli("bench", "loader", str(stores["tiled"]), "--patch", "8,48,40",
                         "--workers", "0", "--seconds", "0.5", "--decode-cache", "8", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["decode_cache_mb"] == 8 and result["patches"] > 0
    assert cache.decode_cache().hits > 0  # 24 slices x 9 tiles: patches overlap


@pytest.mark.parametrize("megabytes", ["-5", "inf", "lots"])
def test_a_bad_decode_cache_option_is_refused(stores, cli, capsys, megabytes: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli("bench", "loader", str(stores["tiled"]), "--decode-cache", megabytes)
    assert stopped.value.code == 2
    assert f"--decode-cache: must be a number >= 0, got '{megabytes}'" in capsys.readouterr().err


@pytest.mark.parametrize("arguments", [
    ("train", "DATASET", "--out", "MODEL", "--decode-cache", "100"),
    ("train", "DATASET", "--out", "MODEL", "--backend", "nnunet", "--decode-cache", "100")])
def test_a_decode_cache_is_refused_where_it_cannot_serve(cli, tmp_path, arguments) -> None:
    from test_nnunet import write_sphere_dataset

    dataset = write_sphere_dataset(tmp_path / "Dataset990_Sphere", cases=3, size=24)
    named = {"DATASET": str(dataset), "MODEL": str(tmp_path / "model")}
    code, _, err = cli(*(named.get(part, part) for part in arguments))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--decode-cache keeps decoded slices of preprocessed stores" in err
    assert not (tmp_path / "model").exists()


def test_a_store_rewritten_at_the_same_path_is_not_read_from_the_cache(
        ct_b_crop_image, ct_b_crop_array, budget, tmp_path) -> None:
    budget(64)
    image = Volume(ct_b_crop_array, ct_b_crop_image.affine, modality="CT")
    path = tmp_path / "rewritten.zarr"
    box = ((0, 0, 0), (4, 32, 32))
    for ratio in (10.0, 3.0):  # a notebook comparing ratios in one folder
        compress_volume(image, path, Target("ratio", ratio), codec_name="jpeg2k", workers=1,
                        tile=32)
        cached = StoreVolume(path).read(*box)
    budget(0)
    assert np.array_equal(cached, StoreVolume(path).read(*box))


def test_a_bad_budget_in_the_environment_is_named_before_training(cli, tmp_path,
                                                                  monkeypatch) -> None:
    from test_nnunet import write_sphere_dataset

    dataset = write_sphere_dataset(tmp_path / "Dataset991_Sphere", cases=3, size=24)
    monkeypatch.setenv(cache.ENVIRONMENT, "lots")
    code, _, err = cli("train", str(dataset), "--out", str(tmp_path / "model"), "--backend",
                       "nnunet", "--configuration", "3d_fullres", "--preprocessed", "x10",
                       "--epochs", "1", "--iterations", "1", "--validation-iterations", "1",
                       "--folds", "2", "--device", "cpu", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{cache.ENVIRONMENT}: must be a number of megabytes >= 0, got 'lots'" in err
    assert not (tmp_path / "model").exists()  # named before preprocessing, not by a worker


@pytest.mark.parametrize("megabytes", [None, "lots", -1, float("inf"), 10**400])
def test_set_decode_cache_refuses_what_is_no_budget(megabytes) -> None:
    with pytest.raises(ValueError, match="megabytes >= 0"):
        cache.set_budget(megabytes)


def test_set_decode_cache_takes_a_number_written_as_text() -> None:
    cache.set_budget("8")
    assert cache.decode_cache().budget == 8 * 2**20
