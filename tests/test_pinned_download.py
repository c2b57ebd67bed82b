"""Pinned downloads (the demo archive, the brain MR package): kept only when verified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medlossy.data.demo import pinned_download
from medlossy.errors import MedlossyError


def _writer(content: bytes, calls: list[Path]):
    def fetch(scratch: Path) -> Path:
        calls.append(scratch)
        (scratch / "file.bin").write_bytes(content)
        return scratch / "file.bin"
    return fetch


def test_a_verified_download_is_kept_and_reused(tmp_path: Path) -> None:
    calls: list[Path] = []
    digest = hashlib.sha256(b"payload").hexdigest()

    first = pinned_download(tmp_path / "cache", "a.tar.gz", digest, "archive",
                            _writer(b"payload", calls))
    again = pinned_download(tmp_path / "cache", "a.tar.gz", digest, "archive",
                            _writer(b"payload", calls))

    assert first == again == tmp_path / "cache" / "a.tar.gz"
    assert first.read_bytes() == b"payload" and len(calls) == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a.tar.gz"]


def test_a_download_with_another_digest_leaves_nothing(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"payload").hexdigest()

    with pytest.raises(MedlossyError, match=r"a\.deb: sha256 mismatch: .* pinned package"):
        pinned_download(tmp_path / "cache", "a.deb", digest, "package",
                        _writer(b"tampered", []))
    assert list((tmp_path / "cache").iterdir()) == []
