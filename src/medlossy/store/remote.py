"""Where a store's files are: a local folder, or a URL read (and written) through fsspec.

Data flow: a store given as ``http(s)://host/CASE.zarr`` (or any fsspec URL: ``file://``,
``memory://``, ``s3://`` with its package) -> ``StoreFiles`` -> each metadata file one GET,
each chunk one GET (Zarr 2: a file per chunk) or one range request (Zarr 3: the shard's index
once, by a suffix range, then the chunk's bytes), so a patch read fetches only the chunks it
touches. A local path keeps plain file reads. Errors name the URL in one line.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from medlossy.errors import MedlossyError

#: URL schemes fsspec serves over HTTP: read only (an HTTP server takes no writes).
READ_ONLY = ("http", "https")
#: Range requests in flight at once per store read at a URL. fsspec's default (up to 1,280,
#: through aiohttp's 100 connections) overwhelmed servers that take fewer: nginx with
#: ``worker_connections 64`` dropped them mid-patch ("Server disconnected").
CONCURRENT_REQUESTS = 16


class Unreachable(MedlossyError):
    """A URL that could not be read (connection refused, a server error): not a damaged
    store, so ``verify`` stops at it rather than listing every chunk as bad."""


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a store by URL (``scheme://...``) rather than a path."""
    return isinstance(location, str) and "://" in location


def folder_only(location: str | os.PathLike[str], what: str, why: str) -> Path:
    """``location`` as a local path; a URL refused in one line naming it: ``what`` (a
    sweep's source, a sweep...) must be a local folder, because ``why``."""
    if is_url(location):
        raise MedlossyError(str(location).rstrip("/"), f"{what} must be a local folder, not a "
                            f"URL ({why}); URLs are read for stores: info, verify, "
                            "decompress, psnr, bench loader, training source \"store\"")
    return Path(location)


def join(location: str | os.PathLike[str], name: str) -> str | Path:
    """``location``/``name`` for a URL or a path."""
    if is_url(location):
        return f"{str(location).rstrip('/')}/{name}"
    return Path(location) / name


def basename(location: str | os.PathLike[str]) -> str:
    """The last part of a store's path or URL (``CASE_0000.zarr``)."""
    return PurePosixPath(str(location).rstrip("/")).name


def filesystem(url: str):
    """The fsspec filesystem of ``url``; a missing protocol package is named in one line."""
    protocol = protocol_of(url)
    try:
        import fsspec

        return fsspec.filesystem(protocol)
    except ImportError as error:
        raise MedlossyError(url, f"cannot open {protocol}:// URLs here ({error}): pip install "
                                 "'medlossy[remote]' (and the fsspec package of this "
                                 "protocol, e.g. s3fs for s3://)") from None
    except ValueError as error:
        raise MedlossyError(url, f"unknown URL scheme ({error})") from None


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


@contextmanager
def local_folder(location: str | os.PathLike[str], what: str = "a sweep") -> Iterator[Path]:
    """A local folder to write the output folder ``location`` in: a path as it is, a
    ``file://`` URL's path; for another writable URL (``memory://``, ``s3://``) a temporary
    folder, uploaded with fsspec's ``put`` once the body succeeds. HTTP is refused: a web
    server takes no writes. ``what`` names the output in the message for a taken URL."""
    if not is_url(location):
        yield Path(location)
        return
    url = str(location).rstrip("/")
    protocol = protocol_of(url)
    if protocol in READ_ONLY:
        raise MedlossyError(url, f"{protocol}:// URLs are read-only: write to a folder or a "
                                 "writable fsspec URL (file://, s3://...), then serve it")
    fs = filesystem(url)
    if protocol in ("file", "local"):
        from fsspec.core import url_to_fs

        yield Path(url_to_fs(url)[1])
        return
    try:
        taken = fs.exists(url) and bool(fs.ls(url, detail=False))
    except Exception as error:  # aiohttp, botocore and fsspec raise their own types
        raise MedlossyError(url, _problem(error)) from None
    if taken:
        raise MedlossyError(url, f"is not empty: {what} is written to a new URL (it is made "
                                 "in a local temporary folder, then uploaded)")
    with tempfile.TemporaryDirectory(prefix="medlossy-upload-") as stage:
        folder = Path(stage) / basename(url)
        yield folder
        try:
            fs.put(f"{folder}/", url, recursive=True)
        except Exception as error:  # aiohttp, botocore and fsspec raise their own types
            raise MedlossyError(url, f"cannot be written ({' '.join(str(error).split())})"
                                ) from None


def _failed(data: bytes | Exception) -> bool:
    """Whether a read failed other than by a missing file (a server error, a connection)."""
    return isinstance(data, Exception) and not isinstance(data, FileNotFoundError)


def _problem(error: BaseException) -> str:
    """One line for a failed remote read (connection refused, a server error)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return f"cannot be read ({text})"


#: Local files kept open for range reads (per process, least recently used closed first): a
#: sharded store's patch reads hundreds of small chunks from a few shard files.
OPEN_FILES = 64


class _Opened:
    """A local file open for ``os.pread``, closed when its last reference goes: a thread may
    still read one the cache has dropped."""

    fd = -1

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        status = os.fstat(self.fd)
        self.identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)

    def __del__(self, close=os.close) -> None:
        if self.fd >= 0:
            close(self.fd)


_opened: OrderedDict[str, _Opened] = OrderedDict()
_opened_lock = threading.Lock()


def _forget_opened() -> None:
    """A forked child opens its own files (and must not wait on a lock held by a parent's
    thread at the fork)."""
    global _opened, _opened_lock
    _opened, _opened_lock = OrderedDict(), threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere processes are spawned, not forked
    os.register_at_fork(after_in_child=_forget_opened)


def _opened_file(path: str) -> _Opened:
    """``path`` open for reading, from the cache unless the file was replaced since (a store
    rewritten in place: one stat a read)."""
    status = os.stat(path)
    identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    with _opened_lock:
        opened = _opened.get(path)
        if opened is not None and opened.identity == identity:
            _opened.move_to_end(path)
            return opened
    opened = _Opened(path)
    with _opened_lock:
        _opened[path] = opened
        _opened.move_to_end(path)
        while len(_opened) > OPEN_FILES:
            _opened.popitem(last=False)
    return opened


def _read_range(path: str, offset: int, length: int) -> bytes:
    """``length`` bytes (-1: to the end) of local file ``path`` from ``offset`` (negative:
    from the end): exactly those bytes, no buffer's read-ahead, no open per read."""
    if not hasattr(os, "pread"):  # Windows: a buffered read of its own
        with Path(path).open("rb") as handle:
            handle.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
            return handle.read(length)
    opened = _opened_file(path)
    size = opened.identity[2]
    start = max(size + offset, 0) if offset < 0 else offset
    wanted = size - start if length < 0 else length
    return os.pread(opened.fd, max(wanted, 0), start)


def _ranged(file: str | Path, offset: int, length: int, data: bytes) -> bytes:
    """``data`` read for a range of ``file``, checked: a server that ignores HTTP Range
    requests answers with the whole file (Python's ``http.server`` does), which would be
    taken for the range and then fail its checksum as if the store were damaged."""
    wanted = -offset if offset < 0 else length
    if wanted >= 0 and len(data) > wanted:
        raise Unreachable(file, f"the server sent {len(data)} bytes for a range of {wanted}: "
                                "it ignores HTTP Range requests, which reading chunks and "
                                "shards needs (serve the stores with one that honours them, "
                                "e.g. nginx)")
    return data


class StoreFiles:
    """Byte access to the files of one store, relative to its root."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        self.remote = is_url(location)
        #: The store as users name it: a Path, or the URL without a trailing slash.
        self.root: str | Path = str(location).rstrip("/") if self.remote else Path(location)
        # built now so that a missing protocol package is reported at once
        self._filesystem = filesystem(self.root) if self.remote else None
        self._pid = os.getpid()

    @property
    def _fs(self):
        """The store's fsspec filesystem, rebuilt in a forked process (a DataLoader worker):
        fsspec's HTTP filesystem holds an event loop and a session that cannot cross a fork
        ("This class is not fork-safe")."""
        if self._pid != os.getpid():
            self._filesystem, self._pid = filesystem(str(self.root)), os.getpid()
        return self._filesystem

    def __getstate__(self) -> dict:
        # fsspec filesystems pickle as their arguments; rebuilt in the receiving process
        return {"root": self.root, "remote": self.remote}

    def __setstate__(self, state: dict) -> None:
        self.root, self.remote = state["root"], state["remote"]
        self._filesystem, self._pid = None, -1

    def where(self, name: str) -> str | Path:
        """How messages name file ``name`` of the store (its path or URL)."""
        return join(self.root, name) if name else self.root

    @staticmethod
    def _bounds(offset: int, length: int) -> tuple[int | None, int | None]:
        """fsspec's (start, end) of a read: the whole file, a suffix (the last -offset bytes:
        one request), or a range."""
        if offset == 0 and length < 0:
            return None, None
        if offset < 0:
            return offset, None
        return offset, offset + length

    def read(self, name: str, offset: int = 0, length: int = -1) -> bytes:
        """``length`` bytes (-1: all) of file ``name`` from ``offset`` (negative: from the
        end); FileNotFoundError when the file is not there."""
        return self.read_at(self.where(name), offset, length)

    def read_at(self, file: str | Path, offset: int = 0, length: int = -1) -> bytes:
        """``read`` of a file named by ``where``."""
        if not self.remote:
            if offset == 0 and length < 0:  # a whole file: a chunk of Zarr 2, metadata
                return Path(file).read_bytes()
            return _read_range(str(file), offset, length)
        start, end = self._bounds(offset, length)
        for retry in (False, True):  # a dropped connection is tried once more
            try:
                return _ranged(file, offset, length,
                               self._fs.cat_file(str(file), start=start, end=end))
            except FileNotFoundError:
                raise
            except Unreachable:
                raise
            except Exception as error:  # aiohttp and fsspec raise their own types
                if retry:
                    raise Unreachable(file, _problem(error)) from None
        raise AssertionError("unreachable")

    def read_many(self, reads: Sequence[tuple[str | Path, int, int]],
                  ) -> list[bytes | FileNotFoundError]:
        """``read_at`` of each (file, offset, length), at a URL as concurrent requests (one
        per read); a missing file's entry is its FileNotFoundError."""
        if not self.remote:
            return [self._or_missing(file, offset, length) for file, offset, length in reads]
        fetched = self._cat_ranges(reads)
        failed = [i for i, data in enumerate(fetched) if _failed(data)]
        for i, data in zip(failed, self._cat_ranges([reads[i] for i in failed]), strict=True):
            if _failed(data):  # a dropped connection is tried once more
                raise Unreachable(reads[i][0], _problem(data))
            fetched[i] = data
        return [data if isinstance(data, FileNotFoundError) else _ranged(file, offset, length, data)
                for (file, offset, length), data in zip(reads, fetched, strict=True)]

    def _cat_ranges(self, reads: Sequence[tuple[str | Path, int, int]],
                    ) -> list[bytes | Exception]:
        """fsspec's concurrent range requests (``CONCURRENT_REQUESTS`` at a time); an entry
        is the bytes, or the read's exception."""
        if not reads:
            return []
        bounds = [self._bounds(offset, length) for _, offset, length in reads]
        return list(self._fs.cat_ranges([str(file) for file, _, _ in reads],
                                        [start for start, _ in bounds],
                                        [end for _, end in bounds], on_error="return",
                                        batch_size=CONCURRENT_REQUESTS))

    def _or_missing(self, file: str | Path, offset: int, length: int,
                    ) -> bytes | FileNotFoundError:
        try:
            return self.read_at(file, offset, length)
        except FileNotFoundError as error:
            return error

    def exists(self, name: str) -> bool:
        """Whether file ``name`` is there (remote: one HEAD-like request)."""
        if not self.remote:
            return (self.root / name).is_file()
        try:
            return bool(self._fs.exists(str(self.where(name))))
        except Exception as error:  # aiohttp and fsspec raise their own types
            raise Unreachable(self.root, _problem(error)) from None

    def listed(self, ending: str) -> list[str]:
        """URLs of the entries of a store folder URL whose names end in ``ending``."""
        try:
            entries = self._fs.ls(str(self.root), detail=False)
        except FileNotFoundError:
            raise MedlossyError(self.root, "no such store or folder of stores") from None
        except Exception as error:  # aiohttp and fsspec raise their own types
            raise MedlossyError(self.root, _problem(error)) from None
        protocol = protocol_of(str(self.root))
        urls = (entry if "://" in entry else f"{protocol}://{entry}" for entry in entries)
        return sorted(url.rstrip("/") for url in urls if url.rstrip("/").endswith(ending))

    def total_bytes(self) -> int | None:
        """Bytes of every file of a store at a URL; None over HTTP, where a listing (if the
        server gives one) costs a request per file."""
        if protocol_of(str(self.root)) in READ_ONLY:
            return None
        try:
            return int(self._fs.du(str(self.root)))
        except Exception:  # a protocol that cannot list: the size is not known
            return None
