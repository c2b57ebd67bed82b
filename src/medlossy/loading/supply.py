"""Patch supply: how many voxels of training patches a loader delivers per second.

Data flow: a ``StorePatchDataset`` -> a PyTorch DataLoader with ``workers`` processes (0: the
calling process) -> patches consumed as fast as they come for ``seconds`` after the first one
(worker start-up is not counted) -> patches, voxels and Mvox/s. This is what ``medlossy bench
loader`` prints; a GPU training at N Mvox/s of patches never waits when supply exceeds N.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from torch.utils.data import DataLoader

from medlossy.loading.dataset import StorePatchDataset


def measure_supply(dataset: StorePatchDataset, *, workers: int, seconds: float,
                   ) -> dict[str, Any]:
    """Consume patches for ``seconds``; returns the supply figures."""
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    patch_voxels = math.prod(dataset.patch_size)
    patches, started = 0, None
    for _ in loader:
        if started is None:
            started = time.perf_counter()
            continue
        patches += 1
        if time.perf_counter() - started >= seconds:
            break
    elapsed = time.perf_counter() - started if started is not None else 0.0
    volume = dataset.volumes[dataset.names[0]][0]
    return {
        "stores": sum(len(v) for v in dataset.volumes.values()),
        "cases": len(dataset.names),
        "codec": volume.codec.name,
        "ratio": volume.store.attributes.get("achieved", {}).get("ratio"),
        "store_shape": list(volume.store.attributes["geometry"]["shape"]),
        "patch": list(dataset.patch_size),
        "level": dataset.level,
        "workers": workers,
        "threads_per_worker": dataset.threads,
        "patches": patches,
        "seconds": round(elapsed, 3),
        "patches_per_s": round(patches / elapsed, 3) if elapsed else None,
        "mvox_per_s": round(patches * patch_voxels / elapsed / 1e6, 3) if elapsed else None,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
