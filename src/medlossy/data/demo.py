"""The demo data: real CT and MR from the TotalSegmentator 2.18.0 source archive on PyPI.

Only package registries are reachable where medlossy is developed and tested, so the demo is
fetched with pip (pinned version, checked sha256), cached, and laid out as nnU-Net v2 raw
datasets. Labels are TotalSegmentator model predictions, not manual annotations.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from medlossy.atomic import atomic_output
from medlossy.checksums import sha256_file
from medlossy.errors import MedlossyError
from medlossy.io import read_volume
from medlossy.io.nifti import write_nifti
from medlossy.volume import Volume

PACKAGE = "totalsegmentator"
VERSION = "2.18.0"
ARCHIVE = f"{PACKAGE}-{VERSION}.tar.gz"
SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
_REFERENCE = f"{PACKAGE}-{VERSION}/tests/reference_files"
_CLASS_MAP = f"{PACKAGE}-{VERSION}/totalsegmentator/map_to_binary.py"

CT_DATASET = "Dataset900_TSDemoCT"
MR_DATASET = "Dataset901_TSDemoMR"
#: Classes labelled in both labelled demo CTs, named as TotalSegmentator names them.
CT_CLASSES = ("spleen", "liver", "stomach", "pancreas", "aorta", "inferior_vena_cava",
              "spinal_cord", "autochthon_left", "autochthon_right")
_DESCRIPTION = (f"Real CT/MR from the TotalSegmentator {VERSION} source archive on PyPI "
                "(tests/reference_files, Apache-2.0). Labels are TotalSegmentator model "
                "predictions, not manual annotations.")


def cache_directory(cache: str | os.PathLike[str] | None = None) -> Path:
    if cache is not None:
        return Path(cache)
    if "MEDLOSSY_CACHE" in os.environ:
        return Path(os.environ["MEDLOSSY_CACHE"])
    return Path.home() / ".cache" / "medlossy"


def pinned_download(directory: Path, name: str, sha256: str, what: str,
                    fetch: Callable[[Path], Path]) -> Path:
    """``directory/name`` once its sha256 is ``sha256``: on first use ``fetch(scratch)``
    downloads it into a scratch folder beside it (returning the file, or raising
    MedlossyError), and it is moved in whole only once verified."""
    archive = directory / name
    if archive.exists() and sha256_file(archive) == sha256:
        return archive
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=directory) as scratch:
        downloaded = fetch(Path(scratch))
        if sha256_file(downloaded) != sha256:
            raise MedlossyError(name, f"sha256 mismatch: the download is not the pinned {what}")
        os.replace(downloaded, archive)
    return archive


def fetch_archive(cache: str | os.PathLike[str] | None = None) -> Path:
    """The verified source archive, downloaded with pip on first use."""
    def pip_download(scratch: Path) -> Path:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-binary", ":all:", f"{PACKAGE}=={VERSION}", "-d", str(scratch)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        downloaded = scratch / ARCHIVE
        if result.returncode != 0 or not downloaded.exists():
            raise MedlossyError(ARCHIVE, "pip could not download the demo archive: "
                                + (result.stderr.strip().splitlines() or ["no output"])[-1])
        return downloaded

    return pinned_download(cache_directory(cache), ARCHIVE, SHA256, "archive", pip_download)


def extract(archive: Path, cache: Path) -> Path:
    """Unpack the reference files and class map once; returns the extraction root."""
    root = cache / f"{PACKAGE}-{VERSION}"
    if (root / ".complete").exists():
        return root
    with atomic_output(root) as scratch, tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(_REFERENCE) or m.name == _CLASS_MAP]
        tar.extractall(scratch.parent / f"{scratch.name}-x", members=members, filter="data")
        (scratch.parent / f"{scratch.name}-x" / f"{PACKAGE}-{VERSION}").rename(scratch)
        (scratch.parent / f"{scratch.name}-x").rmdir()
        (scratch / ".complete").touch()
    return root


def _class_maps(root: Path) -> dict[str, dict[int, str]]:
    # The class map is a module of literals; read it without importing TotalSegmentator.
    tree = ast.parse((root / "totalsegmentator" / "map_to_binary.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "class_map":
            return ast.literal_eval(node.value)
    raise MedlossyError(_CLASS_MAP, "no class_map found")


def _relabel(labels: np.ndarray, source_names: dict[int, str], names: list[str]) -> np.ndarray:
    """TotalSegmentator ids -> 1..len(names) in ``names`` order; every other class -> 0."""
    lookup = np.zeros(int(max(source_names)) + 1, dtype=np.uint8)
    for source_id, name in source_names.items():
        if name in names:
            lookup[source_id] = names.index(name) + 1
    return lookup[np.clip(labels, 0, len(lookup) - 1)]


def _write_case(folder: Path, name: str, image: Volume, labels: np.ndarray | None) -> None:
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    write_nifti(image, folder / "imagesTr" / f"{name}_0000.nii.gz")
    if labels is not None:
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        write_nifti(Volume(labels.astype(np.uint8), image.affine),
                    folder / "labelsTr" / f"{name}.nii.gz")


def _dataset_json(folder: Path, dataset: str, channel: str, names: list[str],
                  cases: int) -> None:
    document = {
        "channel_names": {"0": channel},
        "labels": {"background": 0, **{name: i + 1 for i, name in enumerate(names)}},
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": dataset.split("_", 1)[1],
        "description": _DESCRIPTION,
        "licence": "Apache-2.0",
        "reference": f"https://pypi.org/project/{PACKAGE}/{VERSION}/",
        "synthetic": False,
    }
    (folder / "dataset.json").write_text(json.dumps(document, indent=2) + "\n")


def _ct_dataset(root: Path, out: Path, total: dict[int, str]) -> Path:
    reference = root / "tests" / "reference_files"
    names = list(CT_CLASSES)
    with atomic_output(out / CT_DATASET) as folder:
        ct_a = read_volume(reference / "example_ct.nii.gz", "CT")
        seg_a = np.asarray(nib.load(reference / "example_seg_fast_force_split.nii.gz").dataobj)
        _write_case(folder, "tsct_001", ct_a, _relabel(seg_a, total, names))
        ct_c = read_volume(reference / "example_ct_dicom", "CT")
        ct_c.array = ct_c.array.astype(np.int16)
        seg_c = nib.load(reference / "example_seg_dicom.nii.gz")
        # The label file's y axis runs opposite to the DICOM rows: flip it onto the image grid.
        flipped = np.flip(np.asarray(seg_c.dataobj), axis=1)
        _write_case(folder, "tsct_002", ct_c, _relabel(flipped, total, names))
        # CT B has labels only for vessels, on a cropped grid: an unlabelled test case.
        (folder / "imagesTs").mkdir()
        ct_b = read_volume(reference / "aorta_report" / "example_ct.nii.gz", "CT")
        write_nifti(ct_b, folder / "imagesTs" / "tsct_003_0000.nii.gz")
        _dataset_json(folder, CT_DATASET, "CT", names, 2)
    return out / CT_DATASET


def _mr_dataset(root: Path, out: Path, total_mr: dict[int, str]) -> Path:
    reference = root / "tests" / "reference_files"
    with atomic_output(out / MR_DATASET) as folder:
        mr = read_volume(reference / "example_mr_sm.nii.gz", "MR")
        seg = np.asarray(nib.load(reference / "example_seg_mr.nii.gz").dataobj)
        names = [total_mr[i] for i in sorted(np.unique(seg).tolist()) if i in total_mr]
        _write_case(folder, "tsmr_001", mr, _relabel(seg, total_mr, names))
        _dataset_json(folder, MR_DATASET, "MR", names, 1)
    return out / MR_DATASET


def prepare_demo(out: Path, cache: str | os.PathLike[str] | None = None,
                 show_progress: bool = False) -> list[Path]:
    """Fetch (once) and lay out the demo datasets under ``out``; returns their folders."""
    if show_progress:
        print(f"fetching {PACKAGE} {VERSION} source archive with pip (cached)", file=sys.stderr)
    archive = fetch_archive(cache)
    root = extract(archive, cache_directory(cache))
    maps = _class_maps(root)
    datasets = []
    for name, build, class_map in ((CT_DATASET, _ct_dataset, maps["total"]),
                                   (MR_DATASET, _mr_dataset, maps["total_mr"])):
        if (out / name / "dataset.json").exists():
            datasets.append(out / name)
            continue
        datasets.append(build(root, out, class_map))
    return datasets


def demo_reference_files(cache: str | os.PathLike[str] | None = None) -> Path:
    """The unpacked ``tests/reference_files`` folder of the archive (fetched if needed)."""
    archive = fetch_archive(cache)
    return extract(archive, cache_directory(cache)) / "tests" / "reference_files"
