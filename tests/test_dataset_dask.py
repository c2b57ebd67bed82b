"""`medlossy dataset compress --scheduler`: the same sweep on a Dask cluster."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_dataset_validation import EXIT_BAD_INPUT, write_synthetic_dataset

distributed = pytest.importorskip("distributed")

KEYS = ["case", "channel", "ratio_target"]


@pytest.mark.slow
def test_dask_cluster_gives_the_same_manifest_as_the_process_pool(tmp_path: Path, cli) -> None:
    source = write_synthetic_dataset(tmp_path / "Dataset700_Dask", {"d_a": 1, "d_b": 2},
                                     test_cases={"d_c": 3}, shape=(64, 48, 10))
    code, _, stderr = cli("dataset", "compress", source, "--ratios", "1,5,10", "--out",
                          tmp_path / "pool", "--quiet", "--workers", "2")
    assert code == 0, stderr
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        code, _, stderr = cli("dataset", "compress", source, "--ratios", "1,5,10", "--out",
                              tmp_path / "dask", "--quiet", "--scheduler",
                              cluster.scheduler_address)
    assert code == 0, stderr
    pool = pd.read_csv(tmp_path / "pool" / "manifest.csv").sort_values(KEYS).reset_index()
    dask = pd.read_csv(tmp_path / "dask" / "manifest.csv").sort_values(KEYS).reset_index()
    assert len(pool) == len(dask) == 3 * 3
    same = [*KEYS, "split", "target_reached", "raw_bytes", "psnr_db", "max_abs_error",
            "store_crc32", "decoded_sha256"]
    pd.testing.assert_frame_equal(dask[same], pool[same])
    # Identical codestreams; the store metadata records encode seconds, whose printed width
    # may differ by a few characters, so stored bytes (and the ratio) may differ by that.
    assert (dask["stored_bytes"] - pool["stored_bytes"]).abs().max() <= 8
    pd.testing.assert_series_equal(dask["ratio_achieved"], pool["ratio_achieved"], rtol=1e-3)
    assert all((tmp_path / "dask" / path).is_dir() for path in dask["store"])  # the sweep's own
    code, _, stderr = cli("dataset", "verify", tmp_path / "dask")
    assert code == 0, stderr


def test_unreachable_scheduler_is_one_line_and_exit_2(tmp_path: Path, cli, monkeypatch) -> None:
    # medlossy waits 20 s for a scheduler; the failure path is the same after 1 s.
    client = distributed.Client

    def impatient_client(address, **options):
        options["timeout"] = "1s"
        return client(address, **options)

    monkeypatch.setattr(distributed, "Client", impatient_client)
    source = write_synthetic_dataset(tmp_path / "Dataset701_Dask", {"d_a": 1})
    code, stdout, stderr = cli("dataset", "compress", source, "--ratios", "1,5", "--out",
                               tmp_path / "sweep", "--quiet", "--scheduler",
                               "tcp://127.0.0.1:1")
    assert code == EXIT_BAD_INPUT
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("medlossy: error: tcp://127.0.0.1:1: cannot reach the Dask "
                               "scheduler")
    assert stdout == ""
    assert not (tmp_path / "sweep" / "manifest.csv").exists()
    assert not (tmp_path / "sweep" / "stores").exists()
