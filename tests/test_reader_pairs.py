"""Reader study pairs: made from the demo data, blinded, reproducible.

``demo_study`` builds one pair set per test session (ratios 1, 5, 20; 2 slices per ratio pair
and dataset) from the demo's CT dataset (its first case) and MR dataset, through the real CLI.
The other reader test modules use it too.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medlossy.cli.main import main as cli_main
from medlossy.data.demo import CT_DATASET, MR_DATASET, prepare_demo
from medlossy.errors import MedlossyError
from medlossy.reader_study.pairs import (
    PairSettings,
    balanced_sides,
    display_orientation,
    find_datasets,
    gap_width,
    load_key,
    load_pairs,
    spread_slices,
)
from medlossy.reader_study.windows import Window, parse_window
from medlossy.store import SliceStore

RATIOS = (1.0, 5.0, 20.0)
PER_PAIR = 2


def demo_study(tmp_path_factory) -> Path:
    """The shared pair set (built on first use, then reused by every reader test)."""
    base = tmp_path_factory.getbasetemp() / "reader-demo"
    study = base / "rs"
    if (study / "pairs.json").exists():
        return study
    data = base / "data"
    prepare_demo(data)
    # One case per dataset keeps the session short: every ratio means one full compression.
    inputs = base / "inputs"
    ct = inputs / CT_DATASET
    (ct / "imagesTr").mkdir(parents=True)
    shutil.copy(data / CT_DATASET / "dataset.json", ct)
    shutil.copy(data / CT_DATASET / "imagesTr" / "tsct_001_0000.nii.gz", ct / "imagesTr")
    shutil.copytree(data / MR_DATASET, inputs / MR_DATASET)
    code = cli_main(["reader", "make", str(inputs), "--out", str(study), "--ratios",
                     ",".join(f"{r:g}" for r in RATIOS), "--per-pair", str(PER_PAIR),
                     "--window", "abdomen", "--quiet"])
    assert code == 0
    return study


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return demo_study(tmp_path_factory)


def _png_chunks(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        chunks.append(kind.decode("ascii"))
        offset += 12 + length
    return chunks


def test_every_ratio_pair_gets_per_pair_slices_per_dataset(study):
    key = load_key(study)
    assert len(key) == 2 * 3 * PER_PAIR
    cells = {}
    for entry in key.values():
        ratios = tuple(sorted((entry["left"]["ratio"], entry["right"]["ratio"])))
        cells[entry["dataset"], ratios] = cells.get((entry["dataset"], ratios), 0) + 1
    assert cells == {(dataset, pair): PER_PAIR for dataset in (CT_DATASET, MR_DATASET)
                     for pair in ((1.0, 5.0), (1.0, 20.0), (5.0, 20.0))}


def test_fifteen_pairs_for_the_studys_six_ratios():
    settings = PairSettings(ratios=(50, 1, 2, 5, 10, 20, 5), per_pair=10,
                            window=parse_window("abdomen"))
    assert settings.ratios == (1, 2, 5, 10, 20, 50)
    assert len(settings.ratio_pairs) == 15
    assert all(low < high for low, high in settings.ratio_pairs)


def test_both_halves_come_from_the_same_slice_and_the_key_names_the_sides(study):
    key = load_key(study)
    for pair_id, entry in key.items():
        image = np.asarray(Image.open(study / "images" / f"{pair_id}.png"))
        width = next(w for w in range(image.shape[1] // 2, 0, -1)
                     if 2 * w + gap_width(w) == image.shape[1])
        left, right = image[:, :width].astype(float), image[:, -width:].astype(float)
        # Compression at x5/x20 leaves the same anatomy: the halves correlate strongly.
        assert np.corrcoef(left.ravel(), right.ravel())[0, 1] > 0.8
        # Decode the stores again: each half is its side's ratio, windowed.
        volume_dir = study / "stores" / entry["dataset"]
        for side, half in (("left", left), ("right", right)):
            ratio = entry[side]["ratio"]
            store = SliceStore(volume_dir / f"r{ratio:g}" /
                               f"{entry['case']}_{entry['channel']:04d}.zarr")
            assert store.attributes["target"]["mode"] == ("lossless" if ratio == 1 else "ratio")
            assert half.shape[0] in store.zarray["shape"][1:]
        less = entry["less_compressed"]
        other = "right" if less == "left" else "left"
        assert entry[less]["ratio"] < entry[other]["ratio"]


def test_less_compressed_side_is_balanced_within_every_ratio_pair(study):
    # Reproduced on the first version: sides drawn independently, 2 to 6 of 8 per cell.
    cells: dict[tuple, list[str]] = {}
    for entry in load_key(study).values():
        ratios = tuple(sorted((entry["left"]["ratio"], entry["right"]["ratio"])))
        cells.setdefault((entry["dataset"], ratios), []).append(entry["less_compressed"])
    assert all(sorted(sides) == ["left", "right"] for sides in cells.values())


def test_balanced_sides_split_evenly_and_alternate_the_odd_one():
    rng = np.random.default_rng(0)
    for count in range(1, 12):
        for extra in ("left", "right"):
            sides = balanced_sides(count, rng, extra=extra)
            assert sides.count(extra) == count - count // 2
            assert sides.count("left") + sides.count("right") == count
    orders = {tuple(balanced_sides(8, rng, extra="left")) for _ in range(20)}
    assert len(orders) > 1  # the order within a cell stays random


def test_no_slice_is_shown_twice_where_the_data_allow(study):
    # Reproduced on the first version: 120 pairs drawn from only 73 slices.
    seen: dict[str, list[tuple]] = {}
    for entry in load_key(study).values():
        seen.setdefault(entry["dataset"], []).append((entry["case"], entry["slice"]))
    assert all(len(set(slices)) == len(slices) for slices in seen.values())


@pytest.mark.parametrize("candidates", [200, 120, 73, 9])
def test_spread_slices_uses_every_slice_as_evenly_as_possible(candidates):
    cells, per_cell = 15, 8
    picks = spread_slices(candidates, cells, per_cell, np.random.default_rng(3))
    assert all(len(set(cell.tolist())) == per_cell for cell in picks)  # distinct in a cell
    uses = np.bincount(np.concatenate(picks), minlength=candidates)
    if candidates >= cells * per_cell:
        assert uses.max() == 1
    else:
        assert uses.min() >= 1 and uses.max() - uses.min() <= 1


def test_pairs_of_pixel_identical_images_are_flagged(tmp_path):
    """A CT so smooth that lossless JPEG 2000 beats x2: its x2 store is lossless, so a 1 vs 2
    pair shows the same image twice (the key says so), and 1 vs 5 or 2 vs 5 do not."""
    dataset = tmp_path / "Dataset900_Smooth"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": 1,
        "file_ending": ".nii.gz"}))
    z, y, x = np.mgrid[0:12, 0:96, 0:96]
    body = ((y - 48) ** 2 + (x - 48) ** 2) < 40 ** 2
    rng = np.random.default_rng(0)
    values = np.where(body, 40 + 30 * np.sin(x / 9.0) + 20 * np.cos(y / 11.0) + z, -1000)
    values = (values + body * rng.normal(0, 6, values.shape)).astype(np.int16)
    nib.save(nib.Nifti1Image(values.transpose(2, 1, 0), np.diag([0.8, 0.8, 2.5, 1.0])),
             dataset / "imagesTr" / "smooth_001_0000.nii.gz")
    out = tmp_path / "rs"
    code = cli_main(["reader", "make", str(dataset), "--out", str(out), "--ratios", "1,2,5",
                     "--per-pair", "2", "--quiet", "--workers", "1"])
    assert code == 0
    key = load_key(out)
    for pair_id, entry in key.items():
        ratios = tuple(sorted((entry["left"]["ratio"], entry["right"]["ratio"])))
        image = np.asarray(Image.open(out / "images" / f"{pair_id}.png"))
        width = (image.shape[1] - gap_width((image.shape[1]) // 2)) // 2
        same = np.array_equal(image[:, :width], image[:, -width:])
        assert entry["identical"] == (ratios == (1.0, 2.0)), (ratios, entry)
        assert same == entry["identical"]


def test_images_reveal_nothing_names_sizes_or_metadata(study):
    pairs = load_pairs(study)
    key = load_key(study)
    assert [set(pair) for pair in pairs] == [{"id", "image", "stack"}] * len(pairs)
    manifest = (study / "pairs.json").read_text()
    assert "ratio" not in manifest and "left" not in manifest
    sizes: dict[tuple, set[int]] = {}
    for pair in pairs:
        path = study / pair["image"]
        assert len(pair["id"]) == 32 and path.name == f"{pair['id']}.png"
        data = path.read_bytes()
        assert _png_chunks(data) == ["IHDR"] + ["IDAT"] * (len(_png_chunks(data)) - 2) + ["IEND"]
        assert Image.open(path).info == {}
        entry = key[pair["id"]]
        sizes.setdefault((entry["dataset"], entry["case"]), set()).add(len(data))
        stack = study / pair["stack"]
        assert stack.name == f"{pair['id']}.bin"
        sizes.setdefault(("stack", entry["dataset"], entry["case"]), set()).add(
            stack.stat().st_size)
    # Same case, same image size: the same byte count at every ratio pair.
    assert all(len(values) == 1 for values in sizes.values())
    assert oct((study / "key.json").stat().st_mode)[-3:] == "600"


def test_the_same_seed_draws_the_same_slices_and_sides(study, tmp_path):
    again = tmp_path / "again"
    code = cli_main(["reader", "make", str(study.parent / "inputs"), "--out", str(again),
                     "--ratios", "1,5,20", "--per-pair", str(PER_PAIR), "--stores",
                     str(study), "--quiet"])
    assert code == 0
    def draws(folder: Path) -> list:
        return sorted((e["dataset"], e["slice"], e["left"]["ratio"], e["right"]["ratio"])
                      for e in load_key(folder).values())
    assert draws(again) == draws(study)
    assert not (again / "stores").exists()  # every store came from --stores
    assert set(load_key(again)).isdisjoint(load_key(study))  # fresh random ids


def test_a_second_make_into_the_same_folder_is_refused(study, cli):
    code, _, err = cli("reader", "make", study.parent / "inputs", "--out", study, "--quiet")
    assert code == 2
    assert "pair set is already here" in err


@pytest.mark.parametrize("arguments, message", [
    (["--ratios", "5"], "at least two distinct ratios"),
    (["--ratios", "0.5,2"], "ratios must be >= 1"),
    (["--per-pair", "0"], "--per-pair must be at least 1"),
    (["--window", "bone-ish"], "unknown window"),
    (["--stores", "/nonexistent"], "/nonexistent: no such folder (--stores)"),
    (["--design", "2afc", "--flicker-ms", "300"], "--flicker-ms is for the flicker design"),
])
def test_bad_settings_are_one_line_errors(study, cli, tmp_path, arguments, message):
    code, _, err = cli("reader", "make", study.parent / "inputs", "--out", tmp_path / "x",
                       *arguments)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_an_mr_only_study_records_the_auto_window_it_uses(study, cli, tmp_path):
    out = tmp_path / "mr"
    code, _, err = cli("reader", "make", study.parent / "inputs" / MR_DATASET, "--out", out,
                       "--ratios", "1,5", "--per-pair", "1", "--window", "abdomen",
                       "--stores", study / "stores")
    assert code == 0
    recorded = json.loads((out / "study.json").read_text())["window"]
    assert recorded.startswith("auto") and "abdomen" not in err
    assert f"window {recorded}" in err


def test_input_without_datasets_is_an_error(tmp_path):
    with pytest.raises(MedlossyError, match="no nnU-Net raw dataset"):
        find_datasets(tmp_path)


def test_windows():
    assert parse_window("abdomen") == Window("abdomen", 400, 40)
    assert parse_window("Lung") == Window("lung", 1500, -600)
    assert parse_window("350/50") == Window("custom", 350, 50)
    assert parse_window("80,-20") == Window("custom", 80, -20)
    window = parse_window("abdomen")
    values = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    assert window.apply(values, window.bounds(values)).tolist() == [0, 0, 128, 255, 255]
    auto = parse_window("auto")
    reference = np.linspace(0, 1000, 1001)
    low, high = auto.bounds(reference)
    assert low == pytest.approx(5) and high == pytest.approx(995)


def test_display_orientation_is_radiological():
    # Source axes i, j, k = x (L->R in RAS: index up = patient's right), y (anterior), z.
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    orient = display_orientation(affine, axial_axis=2)
    store_slice = np.zeros((4, 3))  # (i = x, j = y)
    store_slice[3, 2] = 1  # most right (x high), most anterior (y high)
    view = orient(store_slice)
    assert view.shape == (3, 4)  # rows = y, columns = x
    assert view[0, 0] == 1  # anterior on top, patient's right on the viewer's left


def test_study_json_has_no_pair_level_information(study):
    document = json.loads((study / "study.json").read_text())
    assert document["pairs"] == len(load_pairs(study))
    assert not set(load_key(study)) & set(json.dumps(document).split('"'))
