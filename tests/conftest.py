"""Shared fixtures: the real CT/MR reference files, small crops of them, and a CLI runner.

Real data comes from ``medlossy.data.demo.demo_reference_files()`` (the TotalSegmentator 2.18.0
source archive, fetched once with pip into ~/.cache/medlossy or $MEDLOSSY_CACHE).
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

# One OpenMP thread for torch here and in the CLI subprocesses the tests start (before torch
# is imported): the tests' networks are tiny, and two threads spin-waiting on a 2-core machine
# that anything else uses made a test study 14 times slower (454 s against 33 s; idle: 26 s
# against 24 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib
import numpy as np
import pytest

from medlossy.cli.main import main as cli_main
from medlossy.data.demo import demo_reference_files
from medlossy.volume import Volume

#: Forks made while the test named first ran: (test id, the other threads alive, stack).
_FORKS: list[tuple[str, list[str], str]] = []
_RUNNING = ["(no test)"]


def _record_a_threaded_fork() -> None:
    """os.fork's before-hook: note a fork while other Python threads run (zarr's event loop,
    tqdm's monitor, Dask, thread pools): a lock one of them holds stays locked in the child
    forever, which hung `make test` for 19 minutes in nnU-Net's fork pool. The hook cannot
    stop the fork (os.fork ignores its exceptions); the test fails at its teardown."""
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:
        _FORKS.append((_RUNNING[0], others, "".join(traceback.format_stack(limit=12)[:-1])))


os.register_at_fork(before=_record_a_threaded_fork)


def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _RUNNING[0] = item.nodeid


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked slow (training, whole studies) get 20 minutes rather than the default
    timeout of pyproject.toml, unless they set their own."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(1200))


@pytest.fixture(autouse=True)
def _no_decode_cache_after_the_test() -> Iterator[None]:
    """Unset the loader's decode cache after each test: a CLI run in-process
    (``--decode-cache``) sets it for its process, as a user's command does for its own."""
    yield
    os.environ.pop("MEDLOSSY_DECODE_CACHE_MB", None)


@pytest.fixture(autouse=True)
def _no_fork_from_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that forked while other threads were alive (use a subprocess, or
    multiprocessing's "spawn" or "forkserver" context)."""
    yield
    if request.node.get_closest_marker("threaded_fork_allowed"):
        _FORKS.clear()
        return
    mine = [fork for fork in _FORKS if fork[0] == request.node.nodeid]
    _FORKS[:] = [fork for fork in _FORKS if fork[0] != request.node.nodeid]
    if mine:
        _, threads, stack = mine[0]
        pytest.fail(f"forked {len(mine)} time(s) while threads {threads} were alive; first "
                    f"fork from:\n{stack}", pytrace=False)


#: A 96 x 80 x 24 block of CT B (abdomen, about 60 % body voxels); rows != columns on purpose,
#: so a transposed slice cannot pass for the right one.
CT_B_CROP = (slice(60, 156), slice(40, 120), slice(80, 104))


@pytest.fixture(scope="session")
def reference_files() -> Path:
    """tests/reference_files of the TotalSegmentator archive (honours MEDLOSSY_CACHE)."""
    return demo_reference_files()


@pytest.fixture(scope="session")
def ct_a_path(reference_files: Path) -> Path:
    return reference_files / "example_ct.nii.gz"


@pytest.fixture(scope="session")
def ct_b_path(reference_files: Path) -> Path:
    return reference_files / "aorta_report" / "example_ct.nii.gz"


@pytest.fixture(scope="session")
def ct_c_dicom(reference_files: Path) -> Path:
    return reference_files / "example_ct_dicom"


@pytest.fixture(scope="session")
def mr_path(reference_files: Path) -> Path:
    return reference_files / "example_mr_sm.nii.gz"


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    array.flags.writeable = False
    return array


@pytest.fixture(scope="session")
def ct_b_image(ct_b_path: Path) -> nib.Nifti1Image:
    return nib.load(ct_b_path)


@pytest.fixture(scope="session")
def ct_b_array(ct_b_image: nib.Nifti1Image) -> np.ndarray:
    return _read_only(np.asarray(ct_b_image.dataobj))


@pytest.fixture(scope="session")
def ct_b_crop_image(ct_b_image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The crop as a NIfTI image with its own affine (nibabel shifts the origin)."""
    cropped = ct_b_image.slicer[CT_B_CROP]
    return nib.Nifti1Image(np.asarray(cropped.dataobj), cropped.affine, cropped.header)


@pytest.fixture(scope="session")
def ct_b_crop_array(ct_b_crop_image: nib.Nifti1Image) -> np.ndarray:
    return _read_only(np.asarray(ct_b_crop_image.dataobj))


@pytest.fixture
def ct_b_crop(ct_b_crop_image: nib.Nifti1Image, ct_b_crop_array: np.ndarray) -> Volume:
    """A fresh Volume per test (compress_volume may set its modality)."""
    return Volume(ct_b_crop_array, ct_b_crop_image.affine.copy(), modality="CT")


@pytest.fixture(scope="session")
def ct_b_crop_file(ct_b_crop_image: nib.Nifti1Image, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "ct_b_crop.nii.gz"
    nib.save(ct_b_crop_image, path)
    return path


@pytest.fixture(scope="session")
def mr_array(mr_path: Path) -> np.ndarray:
    return _read_only(np.asarray(nib.load(mr_path).dataobj))


def walk_bytes(directory: Path) -> int:
    """Every byte of every file under ``directory``, counted independently of medlossy."""
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(directory) for name in names)


def leftovers(directory: Path) -> list[str]:
    """Entries that an interrupted or failed write would leave behind."""
    return [name for name in os.listdir(directory) if ".partial-" in name or ".old-" in name]


def open_with_stock_zarr(path: Path):
    """Open a store the way any other tool would: zarr plus imagecodecs' numcodecs codecs."""
    import imagecodecs.numcodecs
    import zarr

    imagecodecs.numcodecs.register_codecs()
    return zarr.open_group(str(path), mode="r")["0"]


CliResult = tuple[int, str, str]


@pytest.fixture
def cli(capsys) -> Callable[..., CliResult]:
    """Run ``medlossy ARGS...`` in-process; returns (exit code, stdout, stderr)."""

    def run(*arguments: str | os.PathLike[str]) -> CliResult:
        capsys.readouterr()
        code = cli_main([str(a) for a in arguments])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def reseal(attributes: dict, store: Path) -> None:
    """Recompute the metadata checksum of edited ``.zattrs`` contents (``attributes``, the
    whole document), as a tool that means its edit would: for tests that damage a store
    below its metadata (a chunk whose CRC is re-stamped to match)."""
    import json

    from medlossy.store.slice_store import ATTRIBUTE_KEY, METADATA_KEY, metadata_digests

    array_path = store if (store / ".zarray").exists() else store / "0"
    zarray = json.loads((array_path / ".zarray").read_bytes())
    medlossy = attributes[ATTRIBUTE_KEY]
    medlossy[METADATA_KEY] = metadata_digests(medlossy, zarray)
