"""Where the study's training and prediction units run: here, one per local GPU, or Dask.

A runner is ``runner(function, units) -> results``; ``segmentation.run_segmentation`` hands
it the units that are not done yet. The units are safe to run anywhere and more than once:
each takes its own lock file and skips itself when finished (``segmentation``), so

- ``local_gpus([0, 1])`` runs one unit per GPU at a time, each in a worker process that sees
  only its GPU (CUDA_VISIBLE_DEVICES, set before PyTorch starts; nnU-Net's child processes
  inherit it);
- ``dask_cluster(address)`` submits each unit as a task that needs one ``GPU`` resource, so
  a worker started with ``dask worker ADDRESS --resources GPU=1`` runs one at a time. A unit
  whose worker dies is rescheduled by Dask on another worker and resumes there from its last
  checkpoint (the dead worker's lock died with it).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from medlossy.errors import MedlossyError
from medlossy.orphans import die_with_parent

GPU_RESOURCE = "GPU"


def parse_gpus(text: str) -> list[str]:
    """"0,1,3" -> ["0", "1", "3"]; one clear error otherwise."""
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if not gpus or any(not gpu.isdigit() for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise MedlossyError(None, f"--gpus needs distinct GPU indices like 0,1,2, got {text!r}")
    return gpus


def _pin_gpu(queue: multiprocessing.Queue, owner: int) -> None:
    die_with_parent(owner)
    os.environ["CUDA_VISIBLE_DEVICES"] = queue.get()


def local_gpus(gpus: Sequence[str]) -> Callable[[Callable, list], list]:
    """A runner with one worker process per GPU, each pinned to its GPU."""

    def run(function: Callable, units: list) -> list:
        if not units:
            return []
        # spawn: a fresh interpreter, so CUDA initialises after the pinning.
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        for gpu in gpus:
            queue.put(gpu)
        with ProcessPoolExecutor(max_workers=len(gpus), mp_context=context,
                                 initializer=_pin_gpu, initargs=(queue, os.getpid()),
                                 ) as executor:
            return list(executor.map(function, units))

    return run


def dask_cluster(address: str) -> Callable[[Callable, list], list]:
    """A runner that submits each unit to the Dask scheduler at ``address`` (one GPU each)."""
    try:
        from distributed import Client
    except ImportError:
        raise MedlossyError(None, "--scheduler needs Dask: pip install 'medlossy[dask]'"
                            ) from None

    def run(function: Callable, units: list) -> list:
        if not units:
            return []
        try:
            client = Client(address, timeout="20s")
        except OSError as error:
            raise MedlossyError(address, f"cannot reach the Dask scheduler ({error})") from None
        with client:
            # The key names the unit: two runs on one scheduler share the task.
            futures = [client.submit(function, unit, resources={GPU_RESOURCE: 1}, pure=False,
                                     key=f"medlossy-{type(unit).__name__}-{unit.name}")
                       for unit in units]
            return client.gather(futures)

    return run
