"""Stores read over HTTP from a real server (nginx, started once for the module): info,
verify, decompress, patch reads and training read a URL as they read a folder, fetching only
the chunks they need (counted in the server's access log), checksums checked."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from medlossy.compression import Target, compress_volume
from medlossy.decompression import read_store
from medlossy.errors import MedlossyError
from medlossy.loading.volume import StoreVolume
from medlossy.store import SliceStore
from medlossy.volume import Volume

#: CT B's axial slices 70-93 (24 slices of 233 x 167): tiles of 64 end in partial tiles.
SLICES = slice(70, 94)
LAYOUTS = {"v2": {}, "v2_tiled": {"tile": 64},
           "v3_tiled": {"zarr_format": 3, "tile": 64, "shard_slices": 8}}
NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """nginx serving ``root`` on a local port; each request a line of its access log."""

    def __init__(self, folder: Path) -> None:
        self.root = folder / "www"
        self.root.mkdir()
        self.log = folder / "access.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        user = "user root;" if os.geteuid() == 0 else ""  # workers must read the tmp folder
        (folder / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format counted '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log {self.log} counted;
    client_body_temp_path {folder};
    proxy_temp_path {folder};
    fastcgi_temp_path {folder};
    uwsgi_temp_path {folder};
    scgi_temp_path {folder};
    server {{
        listen 127.0.0.1:{self.port}; root {self.root}; autoindex on;
        location ~ ^/failing/.*/0/[0-9c] {{ return 503; }}  # metadata served, chunks not
        location /norange/ {{ max_ranges 0; }}  # the whole file for any Range request
    }}
}}
""")
        self.process = subprocess.Popen([NGINX, "-p", str(folder), "-c",
                                         str(folder / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def lines(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def requests(self, since: int) -> list[tuple[str, str, int, int, str]]:
        """(method, path, status, body bytes, Range header) of each request after line
        ``since``."""
        # nginx logs a request once its response is sent: wait for the log to settle
        lines, previous = self.log.read_text().splitlines(), None
        while lines != previous:
            time.sleep(0.1)
            previous, lines = lines, self.log.read_text().splitlines()
        rows = []
        for line in lines[since:]:
            method, path, status, sent, ranged = line.split(" ", 4)
            rows.append((method, path, int(status), int(sent), ranged.strip('"')))
        return rows


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if NGINX is None:
        pytest.skip("needs nginx (apt-get install nginx-light)")
    served = Server(tmp_path_factory.mktemp("nginx"))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def stores(ct_b_image, server) -> dict[str, Path]:
    """x10 stores of a CT slab, served: v2 per slice, v2 tiled, v3 tiled in shards of 8."""
    slab = np.asarray(ct_b_image.dataobj[:, :, SLICES])
    for name, options in LAYOUTS.items():
        volume = Volume(slab, ct_b_image.affine.copy(), modality="CT")
        compress_volume(volume, server.root / f"{name}.zarr", Target("ratio", 10.0),
                        workers=1, **options)
    return {name: server.root / f"{name}.zarr" for name in LAYOUTS}


def _url(server: Server, name: str) -> str:
    return f"{server.url}/{name}.zarr"


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_patch_over_http_fetches_only_the_chunks_it_touches(server, stores, name):
    start, size = (5, 40, 30), (8, 100, 90)  # two shards of v3, 3 x 2 tiles when tiled
    local = SliceStore(stores[name])
    volume = StoreVolume(_url(server, name))
    before = server.lines()
    patch = volume.read(start, size)
    requests = server.requests(before)
    grid = local.grid
    tiles = grid.touched(slice(40, 140), slice(30, 120))
    chunks = {z * grid.per_slice + t for z in range(5, 13) for t in tiles}
    touched = sum(len(local.codestream(i)) for i in chunks)
    chunk_requests = [r for r in requests if r[4] != "-" or local.zarr_format == 2]
    assert all(r[0] == "GET" and r[2] in (200, 206) for r in requests), requests
    if local.zarr_format == 2:  # a file per chunk: one whole-file GET each
        assert len(requests) == len(chunks) and all(r[4] == "-" for r in requests)
    else:  # each shard's index by a suffix range once, then one range per inner chunk
        indexes = [r for r in requests if r[4].startswith("bytes=-")]
        assert len(indexes) == 2 and len(chunk_requests) == len(chunks) + 2
        assert all(r[2] == 206 for r in requests)
    fetched = sum(r[3] for r in requests)
    assert touched <= fetched <= 1.5 * touched
    expected = StoreVolume(stores[name]).read(start, size)
    np.testing.assert_array_equal(patch, expected)
    before = server.lines()
    volume.read(start, size)  # the shard indexes are kept: the chunks again, nothing else
    assert len(server.requests(before)) == len(chunks)


def test_info_verify_and_decompress_read_a_url(server, stores, cli, tmp_path):
    url = _url(server, "v3_tiled")
    code, out, err = cli("info", url, "--json")
    assert code == 0, err
    assert '"zarr_format": 3' in out and f'"store": "{url}"' in out
    assert '"bytes_on_disk": null' in out  # not listed over HTTP
    code, out, err = cli("verify", url)
    assert code == 0 and "match their checksums" in out, err
    code, out, err = cli("decompress", url, tmp_path / "ct.nii.gz")
    assert code == 0, err
    import nibabel as nib

    decoded = np.asarray(nib.load(tmp_path / "ct.nii.gz").dataobj)
    np.testing.assert_array_equal(decoded, read_store(stores["v3_tiled"]).array)


@pytest.mark.parametrize("name", ["v2", "v3_tiled"])
def test_a_corrupt_chunk_at_a_url_fails_its_checksum_naming_the_url(server, stores, name,
                                                                   cli):
    damaged = server.root / "damaged" / f"{name}.zarr"  # beside the good stores' folder
    shutil.copytree(stores[name], damaged)
    chunk = SliceStore(damaged).chunk_path(3)
    data = bytearray(Path(chunk).read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a codestream, not a shard's index
    Path(chunk).write_bytes(bytes(data))
    url = f"{server.url}/damaged/{name}.zarr"
    code, _out, err = cli("verify", url)
    assert code == 1 and url in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(MedlossyError, match=f"{url}/0/.*corrupt"):
        read_store(url, workers=1)


def test_a_truncated_shard_at_a_url_is_refused_in_one_line(server, stores):
    cut = server.root / "damaged" / "cut.zarr"
    shutil.copytree(stores["v3_tiled"], cut)
    shard = cut / "0" / "c" / "1" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(MedlossyError) as caught:
        read_store(f"{server.url}/damaged/cut.zarr", workers=1)
    assert f"{server.url}/damaged/cut.zarr/0/c/1/0/0: shard 1 is corrupt" in str(caught.value)


def test_a_missing_shard_at_a_url_is_called_missing(server, stores):
    # a 404 was reported as "corrupt (its index fails its CRC-32C)"
    gone = server.root / "damaged" / "gone.zarr"
    shutil.copytree(stores["v3_tiled"], gone)
    (gone / "0" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(MedlossyError) as caught:
        read_store(f"{server.url}/damaged/gone.zarr", workers=1)
    assert str(caught.value) == (f"{server.url}/damaged/gone.zarr/0/c/1/0/0: shard 1 is "
                                 "missing from the store")


def test_a_missing_store_or_server_is_one_line_naming_the_url(server, cli):
    url = f"{server.url}/nothing.zarr"
    code, _out, err = cli("info", url)
    assert code == 2 and err.strip() == (f"medlossy: error: {url}: no such store (neither "
                                         "zarr.json nor .zattrs at this URL)"), err
    closed = f"http://127.0.0.1:{_free_port()}/ct.zarr"
    code, _out, err = cli("verify", closed)
    assert code == 2 and closed in err and len(err.strip().splitlines()) == 1, err
    assert "cannot be read" in err


def _read_in_worker(url: str) -> tuple[str, float]:
    """What a Dask worker returns: its process id and the decoded volume's sum."""
    return str(os.getpid()), float(read_store(url, workers=1).array.sum())


def test_dask_worker_processes_read_the_same_urls(server, stores):
    distributed = pytest.importorskip("distributed")
    urls = [_url(server, name) for name in LAYOUTS]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        results = client.gather(client.map(_read_in_worker, urls * 2, pure=False))
    assert str(os.getpid()) not in {pid for pid, _ in results}  # read in the workers
    expected = [float(read_store(stores[name]).array.sum()) for name in LAYOUTS] * 2
    assert [total for _, total in results] == expected


def test_bench_loader_reads_a_folder_url_in_worker_processes(server, stores, cli):
    # the folder's listing (nginx's autoindex) names the stores; spawned workers fetch them
    code, out, err = cli("bench", "loader", f"{server.url}/", "--patch", "8,48,40",
                         "--workers", "1", "--seconds", "0.5", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["patches"] > 0 and result["codec"] == "jpeg2k"


def test_patch_dataset_over_http_gives_the_local_patches(server, stores):
    from medlossy.loading import StorePatchDataset

    urls = [_url(server, name) for name in LAYOUTS]
    remote = StorePatchDataset(urls, (8, 48, 40), samples=3, seed=4)
    local = StorePatchDataset(list(stores.values()), (8, 48, 40), samples=3, seed=4)
    assert remote.names == local.names == list(LAYOUTS)
    for index in range(3):
        np.testing.assert_array_equal(remote[index]["image"], local[index]["image"])


def test_training_source_store_reads_the_stores_at_a_url(server, stores, tmp_path):
    from medlossy.datasets.nnunet_raw import Case, RawDataset
    from medlossy.train.preprocessing import load_case, store_folder

    served = server.root / "r10"
    served.mkdir(exist_ok=True)
    shutil.copytree(stores["v3_tiled"], served / "ct_0000.zarr", dirs_exist_ok=True)
    metadata = {"channel_names": {"0": "CT"}, "medlossy": {"stores": f"{server.url}/r10"}}
    dataset = RawDataset(tmp_path, metadata)
    folder = store_folder(dataset)
    assert folder == f"{server.url}/r10"
    case = load_case(dataset, Case("ct", "Tr"), folder)
    expected = read_store(stores["v3_tiled"]).array
    np.testing.assert_array_equal(case.channels[0], expected.astype(np.float32))
    with pytest.raises(MedlossyError, match=r"r10/gone_0000\.zarr: no such store"):
        load_case(dataset, Case("gone", "Tr"), folder)


@pytest.fixture
def small_dataset(tmp_path, monkeypatch) -> Path:
    from test_dataset_validation import run_sweeps_serially, write_synthetic_dataset

    run_sweeps_serially(monkeypatch)
    return write_synthetic_dataset(tmp_path / "Dataset720_Remote", {"r_a": 1})


def test_dataset_compress_writes_a_sweep_to_a_writable_url(small_dataset, cli):
    import fsspec
    import pandas as pd

    memory = fsspec.filesystem("memory")
    url = "memory://medlossy-test/sweep"
    if memory.exists(url):  # left by an earlier run in this process
        memory.rm(url, recursive=True)
    code, _out, err = cli("dataset", "compress", small_dataset, "--ratios", "1,5", "--out",
                          url, "--quiet", "--zarr-version", "3")
    assert code == 0, err
    with memory.open(f"{url}/manifest.csv") as file:
        manifest = pd.read_csv(file)
    assert len(manifest) == 2
    for store in manifest["store"]:
        code, out, err = cli("verify", f"{url}/{store}")
        assert code == 0 and "match their checksums" in out, err
    # a sweep is written to a new URL only
    code, _out, err = cli("dataset", "compress", small_dataset, "--ratios", "5", "--out",
                          url, "--quiet")
    assert code == 2 and err.strip() == (f"medlossy: error: {url}: is not empty: a sweep is "
                                         "written to a new URL (it is made in a local "
                                         "temporary folder, then uploaded)"), err
    memory.rm("memory://medlossy-test", recursive=True)


def test_a_sweep_written_to_a_file_url_decodes_over_http(server, small_dataset, cli,
                                                         tmp_path):
    import pandas as pd

    code, _out, err = cli("dataset", "compress", small_dataset, "--ratios", "5", "--out",
                          f"file://{server.root}/sweeps/s1", "--quiet")
    assert code == 0, err
    store = pd.read_csv(server.root / "sweeps" / "s1" / "manifest.csv")["store"].iloc[0]
    code, _out, err = cli("decompress", f"{server.url}/sweeps/s1/{store}",
                          tmp_path / "remote.nii.gz")
    assert code == 0, err
    code, _out, err = cli("decompress", server.root / "sweeps" / "s1" / store,
                          tmp_path / "local.nii.gz")
    assert code == 0, err
    import nibabel as nib

    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "remote.nii.gz").dataobj),
                                  np.asarray(nib.load(tmp_path / "local.nii.gz").dataobj))


def test_dataset_compress_refuses_an_http_url_in_one_line(server, small_dataset, cli):
    url = f"{server.url}/sweeps/new"
    code, out, err = cli("dataset", "compress", small_dataset, "--ratios", "5", "--out", url)
    assert code == 2 and out == "" and err.strip() == (
        f"medlossy: error: {url}: http:// URLs are read-only: write to a folder or a writable "
        "fsspec URL (file://, s3://...), then serve it"), err
    assert not (server.root / "sweeps" / "new").exists()


def test_verify_stops_at_a_failing_server_instead_of_calling_chunks_corrupt(server, stores,
                                                                            cli):
    shutil.copytree(stores["v2"], server.root / "failing" / "v2.zarr")
    url = f"{server.url}/failing/v2.zarr"
    code, out, err = cli("verify", url)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"medlossy: error: {url}/0/0.0.0: cannot be read (503"), err


@pytest.mark.slow
def test_training_from_a_sweep_served_over_http(server, tmp_path):
    # the sweep written to a file:// URL under the server; training reads its stores by
    # HTTP, the decoded images deleted so that nothing else could be read
    from dataclasses import replace

    from test_train_store_source import CONFIG

    from medlossy.cli.main import main as cli_main
    from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
    from medlossy.train.loop import MODEL_FILE, train_model

    source = write_phantom_dataset(tmp_path / "data", 4,
                                   PhantomConfig(shape=(40, 40, 24), spacing=(6.0, 6.0, 6.0)))
    assert cli_main(["dataset", "compress", str(source), "--ratios", "5", "--out",
                     f"file://{server.root}/trained", "--quiet", "--workers", "1"]) == 0
    (decoded,) = sorted((server.root / "trained" / "nnunet").iterdir())
    copy = shutil.copytree(decoded, tmp_path / decoded.name)
    document = json.loads((copy / "dataset.json").read_text())
    document["medlossy"]["stores"] = f"{server.url}/trained/stores/r5"
    (copy / "dataset.json").write_text(json.dumps(document))
    for image in (copy / "imagesTr").iterdir():
        image.write_bytes(b"not an image")
    before = server.lines()
    model = train_model(copy, tmp_path / "model", replace(CONFIG, source="store", epochs=1))
    assert (model / MODEL_FILE).exists()
    fetched = {path.split("/")[4] for _, path, status, _, _ in server.requests(before)
               if status == 200}
    assert len(fetched) >= 2 and all(name.endswith("_0000.zarr") for name in fetched)


@pytest.fixture(scope="module")
def slab_file(ct_b_image, tmp_path_factory) -> Path:
    """The original of the served stores, as a NIfTI file."""
    import nibabel as nib

    path = tmp_path_factory.mktemp("slab") / "slab.nii.gz"
    slab = np.asarray(ct_b_image.dataobj[:, :, SLICES])
    nib.save(nib.Nifti1Image(slab, ct_b_image.affine), path)
    return path


def _chunk_requests(server: Server, since: int, store: str) -> list[tuple]:
    """The requests after log line ``since`` for ``store``'s chunks (not its metadata)."""
    return [r for r in server.requests(since) if r[1].startswith(f"/{store}.zarr/0/")
            and not r[1].endswith(("zarr.json", ".zarray", ".zattrs"))]


@pytest.mark.parametrize("name", ["v2", "v3_tiled"])
def test_psnr_of_a_store_url_is_its_local_psnr_each_chunk_fetched_once(server, stores,
                                                                        slab_file, cli, name):
    code, local, err = cli("psnr", slab_file, stores[name], "--json")
    assert code == 0, err
    before = server.lines()
    code, remote, err = cli("psnr", slab_file, _url(server, name), "--json")
    assert code == 0, err
    assert json.loads(remote) == json.loads(local)
    assert json.loads(remote)["psnr_db"] > 30  # x10 of a CT: lossy, not identical
    store = SliceStore(stores[name])
    chunks = _chunk_requests(server, before, name)
    if store.zarr_format == 2:  # one GET per chunk file
        assert sorted(r[1] for r in chunks) == sorted(
            f"/{name}.zarr/{Path(store.chunk_path(i)).relative_to(stores[name]).as_posix()}"
            for i in range(store.chunks))
    else:  # per shard its index (a suffix range), then one range per inner chunk
        indexes = [r for r in chunks if r[4].startswith("bytes=-")]
        assert len(indexes) == len({store.chunk_path(i) for i in range(store.chunks)})
        assert len(chunks) - len(indexes) == store.chunks
        assert len({(r[1], r[4]) for r in chunks}) == len(chunks)  # none fetched twice


def test_psnr_of_an_unreachable_url_is_one_line_and_exit_2(slab_file, cli):
    closed = f"http://127.0.0.1:{_free_port()}/ct.zarr"
    code, out, err = cli("psnr", slab_file, closed, "--json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"medlossy: error: {closed}") and "cannot be read" in err, err


def _no_reads_here(*_arguments, **_options):
    raise AssertionError("a store was read in the client, not in a worker")


def test_quality_table_on_a_local_cluster_reads_the_urls_in_its_workers(server, stores,
                                                                         slab_file,
                                                                         monkeypatch):
    # an evaluation of stores served over HTTP, run by Dask worker processes (spawned),
    # each opening its URLs through fsspec: the local table, each chunk fetched once
    distributed = pytest.importorskip("distributed")
    from medlossy.evaluate.quality import quality_table

    names = list(LAYOUTS)
    local = quality_table([(slab_file, stores[name]) for name in names])
    before = server.lines()
    from medlossy.store.remote import StoreFiles

    for method in ("read_at", "read_many"):  # this process only: the workers are spawned
        monkeypatch.setattr(StoreFiles, method, _no_reads_here)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, client.get_executor() as executor:
        table = quality_table([(slab_file, _url(server, name)) for name in names], executor)
    monkeypatch.undo()
    assert table["test"].tolist() == [_url(server, name) for name in names]
    pd = pytest.importorskip("pandas")
    columns = ["psnr_db", "data_range", "modality", "mse", "max_abs_error"]
    pd.testing.assert_frame_equal(table[columns], local[columns])
    for name in names:
        store = SliceStore(stores[name])
        chunks = _chunk_requests(server, before, name)
        fetched = [r for r in chunks if not r[4].startswith("bytes=-")]
        assert len(fetched) == store.chunks == len({(r[1], r[4]) for r in fetched}), name


def test_quality_table_stops_at_an_unreachable_url_naming_it(server, stores, slab_file):
    distributed = pytest.importorskip("distributed")
    from medlossy.evaluate.quality import quality_table

    closed = f"http://127.0.0.1:{_free_port()}/ct.zarr"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, client.get_executor() as executor, \
            pytest.raises(MedlossyError) as caught:
        quality_table([(slab_file, _url(server, "v2")), (slab_file, closed)], executor)
    assert str(caught.value).startswith(closed) and ": cannot be read (" in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("command", [
    ("dataset", "compress", "{url}", "--ratios", "5", "--out", "{out}"),
    ("dataset", "verify", "{url}"), ("dataset", "report", "{url}"),
    ("dataset", "datalist", "{url}"), ("train", "{url}", "--out", "{out}"),
    ("evaluate", "{url}", "{url}", "--out", "{out}/dice.csv")])
def test_folders_given_as_urls_are_refused_in_one_line_naming_them(server, cli, command):
    # a sweep's source, a sweep folder, a dataset: read from folders only; nothing written
    import fsspec

    url, out = f"{server.url}/sweeps/s1", "memory://medlossy-refused/out"
    code, stdout, err = cli(*(part.format(url=url, out=out) for part in command))
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"medlossy: error: {url}: ") and "not a URL" in err, err
    assert not fsspec.filesystem("memory").exists("memory://medlossy-refused")


def test_compress_writes_a_store_to_a_writable_url_and_refuses_http(server, slab_file, cli,
                                                                     tmp_path):
    import fsspec

    memory, url = fsspec.filesystem("memory"), "memory://medlossy-compress/ct.zarr"
    if memory.exists("memory://medlossy-compress"):  # left by an earlier run in this process
        memory.rm("memory://medlossy-compress", recursive=True)
    code, _out, err = cli("compress", slab_file, url, "--ratio", "10", "--quiet")
    assert code == 0, err
    code, out, err = cli("verify", url)  # read back through fsspec
    assert code == 0 and "match their checksums" in out, err
    code, _out, err = cli("compress", slab_file, url, "--ratio", "10", "--quiet")
    assert code == 2 and err.strip() == (f"medlossy: error: {url}: is not empty: a store is "
                                         "written to a new URL (it is made in a local "
                                         "temporary folder, then uploaded)"), err
    memory.rm("memory://medlossy-compress", recursive=True)
    # http(s) takes no writes; before: a local folder named "http:" and success
    served = f"{server.url}/new.zarr"
    code, out, err = cli("compress", slab_file, served, "--ratio", "10")
    assert code == 2 and out == "" and err.strip() == (
        f"medlossy: error: {served}: http:// URLs are read-only: write to a folder or a "
        "writable fsspec URL (file://, s3://...), then serve it"), err
    assert not Path("http:").exists() and not (server.root / "new.zarr").exists()
    code, out, err = cli("decompress", _url(server, "v2"), "memory://medlossy-x/ct.nii.gz")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "memory://medlossy-x/ct.nii.gz: decoded volumes are written to a local path" in err
    assert not Path("memory:").exists()


def test_a_store_read_after_a_fork_rebuilds_its_http_filesystem(server, stores, monkeypatch):
    # a DataLoader worker forked (Linux's default) from a process that read the URL gets the
    # parent's fsspec filesystem, which refuses ("This class is not fork-safe"); the fork is
    # simulated by a new process id, as forking after fsspec's threads is not safe in a test
    volume = StoreVolume(_url(server, "v3_tiled"))
    local = StoreVolume(stores["v3_tiled"])
    box = (0, 0, 0), (8, 48, 40)
    np.testing.assert_array_equal(volume.read(*box), local.read(*box))
    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)
    box = (9, 50, 60), (8, 48, 40)  # other chunks: fetched in the "child"
    np.testing.assert_array_equal(volume.read(*box), local.read(*box))


def test_bench_loader_workers_report_a_failing_server_in_one_line(server, stores, cli):
    # the worker's Unreachable came back as "RuntimeError: Caught Unreachable in DataLoader
    # worker process 0" and its traceback, exit 1; as with --workers 0 now
    shutil.copytree(stores["v2"], server.root / "failing" / "bench.zarr")
    url = f"{server.url}/failing/bench.zarr"
    for workers in ("0", "1"):
        code, out, err = cli("bench", "loader", url, "--patch", "8,48,40", "--workers",
                             workers, "--seconds", "0.5")
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"medlossy: error: {url}/0/") and "cannot be read (503" in err


@pytest.mark.parametrize("name", ["v2_tiled", "v3_tiled"])
def test_a_patch_of_many_chunks_stays_within_the_servers_connections(server, stores, name):
    # nginx here takes 64 connections; a patch of 240 tiles sent them all at once (fsspec's
    # batch, aiohttp's 100 connections): "Server disconnected"
    start, size = (0, 0, 0), (20, 233, 167)
    local = StoreVolume(stores[name]).read(start, size)
    np.testing.assert_array_equal(StoreVolume(_url(server, name)).read(start, size), local)


def test_a_server_ignoring_range_requests_is_named_not_the_store(server, stores, cli):
    # Found by a tester: a Zarr 3 store served by `python -m http.server` (which ignores
    # Range) failed as "shard 0 is corrupt (its index fails its CRC-32C)", blaming the data
    ignoring = server.root / "norange"
    ignoring.mkdir(exist_ok=True)
    shutil.copytree(stores["v3_tiled"], ignoring / "v3.zarr", dirs_exist_ok=True)
    code, _, err = cli("verify", f"{server.url}/norange/v3.zarr")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "ignores HTTP Range requests" in err and "corrupt" not in err
