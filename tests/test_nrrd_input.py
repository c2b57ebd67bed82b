"""Detached NRRD headers: the data file they name is read only from the header's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlossy.errors import MedlossyError
from medlossy.io.registry import read_volume

EXIT_BAD_INPUT = 2
SHAPE = (32, 32, 4)


def _detached_header(header: Path, data_file: str, byte_skip: int = 0) -> None:
    header.write_text("NRRD0004\n"
                      "type: uint8\n"
                      "dimension: 3\n"
                      f"sizes: {' '.join(map(str, SHAPE))}\n"
                      "space: left-posterior-superior\n"
                      "space directions: (1,0,0) (0,1,0) (0,0,2)\n"
                      "space origin: (0,0,0)\n"
                      "encoding: raw\n"
                      f"byte skip: {byte_skip}\n"
                      f"data file: {data_file}\n")


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the input's folder, large enough to fill the volume."""
    path = tmp_path / "private" / "secret.txt"
    path.parent.mkdir()
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 200)
    return path


@pytest.mark.parametrize("name", ["../../private/secret.txt", "ABSOLUTE"])
def test_data_file_outside_the_headers_folder_is_refused(tmp_path: Path, secret: Path, cli,
                                                         name: str) -> None:
    header = tmp_path / "input" / "deep" / "scan.nhdr"
    header.parent.mkdir(parents=True)
    name = str(secret) if name == "ABSOLUTE" else name
    _detached_header(header, name, byte_skip=-1)
    code, _, stderr = cli("compress", header, tmp_path / "s.zarr", "--ratio", "5")
    assert code == EXIT_BAD_INPUT
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert str(header) in stderr and "secret.txt" in stderr and "outside" in stderr
    assert not (tmp_path / "s.zarr").exists()


def test_symlink_beside_the_header_to_a_file_outside_is_refused(tmp_path: Path,
                                                                secret: Path) -> None:
    header = tmp_path / "input" / "scan.nhdr"
    header.parent.mkdir()
    (header.parent / "scan.raw").symlink_to(secret)
    _detached_header(header, "scan.raw", byte_skip=-1)
    with pytest.raises(MedlossyError, match="outside the header's folder"):
        read_volume(header)


def test_list_of_data_files_is_refused(tmp_path: Path) -> None:
    header = tmp_path / "scan.nhdr"
    _detached_header(header, "LIST")
    with pytest.raises(MedlossyError, match="lists and patterns"):
        read_volume(header)


def test_data_file_beside_the_header_is_read(tmp_path: Path, cli) -> None:
    voxels = np.random.default_rng(3).integers(0, 200, SHAPE, dtype=np.uint8)
    (tmp_path / "scan.raw").write_bytes(voxels.tobytes(order="F"))
    header = tmp_path / "scan.nhdr"
    _detached_header(header, "scan.raw")
    np.testing.assert_array_equal(np.asarray(read_volume(header).array), voxels)
    code, _, stderr = cli("compress", header, tmp_path / "s.zarr", "--lossless")
    assert code == 0, stderr
    code, _, stderr = cli("decompress", tmp_path / "s.zarr", tmp_path / "back.nrrd")
    assert code == 0, stderr
    np.testing.assert_array_equal(np.asarray(read_volume(tmp_path / "back.nrrd").array), voxels)


def test_writing_the_same_volume_twice_gives_the_same_bytes(tmp_path: Path, monkeypatch) -> None:
    """pynrrd stamps the wall-clock second into every header; a decode repeated a second
    later differed at byte 73 (found as a flaky `decompress --force` test)."""
    import datetime

    import nrrd.writer

    from medlossy.io.registry import write_volume
    from medlossy.volume import Volume

    clock = iter([datetime.datetime(2026, 1, 1, 0, 0, 0), datetime.datetime(2026, 1, 1, 0, 0, 1)])

    class Clock(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return next(clock)

    monkeypatch.setattr(nrrd.writer, "datetime", Clock)
    volume = Volume(np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE),
                    np.diag([0.8, 0.8, 2.5, 1.0]), "CT")
    write_volume(volume, tmp_path / "a.nrrd", note="test")
    write_volume(volume, tmp_path / "b.nrrd", note="test")
    assert (tmp_path / "a.nrrd").read_bytes() == (tmp_path / "b.nrrd").read_bytes()
    assert np.array_equal(read_volume(tmp_path / "b.nrrd").array, volume.array)
