"""Units spread over workers: the per-unit lock, one unit per GPU resource on a Dask
cluster (a LocalCluster of CPU workers declaring GPU=1), and a study run through it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pandas as pd
import pytest

from medlossy.errors import MedlossyError
from medlossy.experiments.scaleout import GPU_RESOURCE, dask_cluster, local_gpus, parse_gpus
from medlossy.locks import unit_lock

HOLD = """
import sys, time
from medlossy.locks import unit_lock
with unit_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_lock_held_by_a_killed_worker_is_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "unit.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        acquired = threading.Event()
        waited: list[str] = []

        def take() -> None:
            with unit_lock(lock, poll_seconds=0.05, on_wait=waited.append):
                acquired.set()

        thread = threading.Thread(target=take)
        thread.start()
        time.sleep(0.5)
        assert not acquired.is_set()  # the holder is alive: we wait
        assert waited and f"pid {holder.pid}" in waited[0]
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
        thread.join(timeout=10)
        assert acquired.is_set()
    finally:
        holder.kill()
        holder.wait()


def test_two_workers_never_train_the_same_unit_twice(tmp_path: Path, monkeypatch) -> None:
    """Two runs sharing a cache: the second waits, then finds the unit trained."""
    from medlossy.backends import TrainRequest
    from medlossy.experiments import segmentation as seg

    calls: list[int] = []

    class Backend:
        def is_trained(self, out: Path) -> bool:
            return (out / "done").exists()

        def train(self, folder, out, request, *, cache, show_progress, replace) -> Path:
            calls.append(threading.get_ident())
            time.sleep(0.5)
            out.mkdir(parents=True, exist_ok=True)
            (out / "done").write_text("")
            return out

    monkeypatch.setattr(seg, "get_backend", lambda name: Backend())
    unit = seg.TrainUnit("fake", "D", tmp_path, 1.0, TrainRequest(), tmp_path / "models" / "u",
                         tmp_path / "cache")
    threads = [threading.Thread(target=seg.run_train_unit, args=(unit,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and unit.done()


@dataclass(frozen=True)
class Sleeper:
    name: str
    seconds: float = 0.3


def _record(unit: Sleeper) -> tuple[str, float, float]:
    from distributed import get_worker

    started = time.monotonic()
    time.sleep(unit.seconds)
    return get_worker().address, started, time.monotonic()


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    # The worker processes cannot import this test module: ship its functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # Two CPU worker processes, each declaring one GPU and offering two threads.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  resources={GPU_RESOURCE: 1}, dashboard_address=None
                                  ) as local:
        yield local


def test_dask_runs_one_unit_per_gpu_resource_at_a_time(cluster) -> None:
    results = dask_cluster(cluster.scheduler_address)(_record,
                                                      [Sleeper(f"u{i}") for i in range(6)])
    assert len(results) == 6
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for address, start, end in results:
        by_worker.setdefault(address, []).append((start, end))
    assert len(by_worker) == 2  # both GPUs used
    for spans in by_worker.values():
        spans.sort()
        # Never two units at once on a worker, although each has two threads.
        assert all(later[0] >= earlier[1] - 1e-3 for earlier, later in pairwise(spans))


def test_an_unreachable_scheduler_is_one_clear_error() -> None:
    pytest.importorskip("distributed")
    with pytest.raises(MedlossyError, match="cannot reach the Dask scheduler"):
        dask_cluster("tcp://127.0.0.1:9")(_record, [Sleeper("u")])


def test_local_gpus_pin_one_gpu_per_worker_process() -> None:
    """Each unit runs in a worker process that sees exactly one of the listed GPUs.
    (os.getenv stands in for a unit: it reports what the unit's process sees.)"""
    import os

    seen = local_gpus(["0", "1"])(os.getenv, ["CUDA_VISIBLE_DEVICES"] * 8)
    assert len(seen) == 8 and set(seen) <= {"0", "1"}


def test_gpu_lists_are_checked() -> None:
    assert parse_gpus("0, 2,3") == ["0", "2", "3"]
    for bad in ("", "a", "0,0", "1;2"):
        with pytest.raises(MedlossyError, match="--gpus"):
            parse_gpus(bad)


STUDY = """\
experiments = ["train", "cross"]
ratios = [1, 5]
train_ratios = [1, 5]
folds = 2

[[datasets]]
path = "data/Dataset950_Phantom"
synthetic = true

[training]
target_spacing = [6, 6, 6]
patch_size = [16, 16, 16]
filters = [4, 8, 16]
epochs = 1
iterations_per_epoch = 2
batch_size = 1
device = "cpu"
"""


@pytest.mark.slow
def test_a_study_runs_its_units_on_the_cluster_and_reruns_nothing(cluster, tmp_path) -> None:
    from medlossy.data.phantom import PhantomConfig, write_phantom_dataset
    from medlossy.experiments.config import load_config
    from medlossy.experiments.study import run_study

    write_phantom_dataset(tmp_path / "data", 4, PhantomConfig(shape=(32, 32, 24),
                                                             spacing=(6.0, 6.0, 6.0)))
    (tmp_path / "study.toml").write_text(STUDY)
    config = load_config(tmp_path / "study.toml")
    run_study(config, tmp_path / "out", scheduler=cluster.scheduler_address)
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    dice = results[(results["experiment"] == "cross") & (results["metric"] == "dice")]
    assert len(dice.groupby(["ratio_train", "ratio_test"])) == 4
    models = sorted((tmp_path / "out" / "models").glob("*/*/model.json"))
    assert len(models) == 2
    stamps = {path: path.stat().st_mtime_ns for path in models}
    run_study(config, tmp_path / "out", scheduler=cluster.scheduler_address)
    assert {path: path.stat().st_mtime_ns for path in models} == stamps
