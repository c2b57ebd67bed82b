"""Patch supply: how many voxels of training patches a loader delivers per second.

Data flow: a ``StorePatchDataset`` -> a PyTorch DataLoader with ``workers`` processes (0: the
calling process) -> patches consumed as fast as they come for ``seconds`` after the first one
(worker start-up is not counted) -> patches, voxels and Mvox/s. This is what ``medlossy bench
loader`` prints; a GPU training at N Mvox/s of patches never waits when supply exceeds N.
Voxels are those decoded from the stores: padding, where a volume is smaller than the patch,
is not counted.

Wall-clock supply depends on what else runs on the machine, so the CPU time of this process
and of its (finished) workers is reported too: ``mvox_per_cpu_s`` counts every CPU second
spent, start-up and patches decoded ahead but never consumed included, so ``mvox_per_cpu_s``
times the cores is a conservative estimate of the supply on an otherwise idle machine.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import time
from typing import Any

from torch.utils.data import DataLoader

from medlossy.loading.cache import budget_from_environment
from medlossy.loading.dataset import StorePatchDataset
from medlossy.loading.workers import START_METHOD, items


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_supply(dataset: StorePatchDataset, *, workers: int, seconds: float,
                   ) -> dict[str, Any]:
    """Consume patches for ``seconds``; returns the supply figures."""
    cpu_started = _cpu_seconds()
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        persistent_workers=False, prefetch_factor=4 if workers else None,
                        multiprocessing_context=START_METHOD if workers else None)
    patches, decoded, first, started = 0, 0, 0, None
    for sample in items(loader):
        if started is None:
            started = time.perf_counter()
            first = math.prod(dataset.read_size(sample["case"]))
            continue
        patches += 1
        decoded += math.prod(dataset.read_size(sample["case"]))
        if time.perf_counter() - started >= seconds:
            break
    elapsed = time.perf_counter() - started if started is not None else 0.0
    del loader
    gc.collect()  # shuts the workers down, so that their CPU time is counted
    cpu = _cpu_seconds() - cpu_started
    voxels = first + decoded
    volume = dataset.volumes[dataset.names[0]][0]
    return {
        "stores": sum(len(v) for v in dataset.volumes.values()),
        "cases": len(dataset.names),
        "codec": volume.codec.name,
        "ratio": volume.store.attributes.get("achieved", {}).get("ratio"),
        "store_shape": list(volume.store.attributes["geometry"]["shape"]),
        "tile": volume.store.attributes.get("tile"),
        "patch": list(dataset.patch_size),
        "level": dataset.level,
        "workers": workers,
        "threads_per_worker": dataset.threads,
        "decode_cache_mb": round(budget_from_environment() / 2**20, 3),
        "patches": patches,
        "seconds": round(elapsed, 3),
        "patches_per_s": round(patches / elapsed, 3) if elapsed else None,
        "mvox_per_s": round(decoded / elapsed / 1e6, 3) if elapsed else None,
        "cpu_seconds": round(cpu, 3),
        "mvox_per_cpu_s": round(voxels / cpu / 1e6, 3) if cpu > 0 else None,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
