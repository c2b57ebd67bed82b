"""Dataset sweep and training benchmarks (issues: datasets at every ratio; segmentation).

1. The full 8-ratio sweep of the demo CT dataset (3 real CTs, 24 tasks) with a process pool
   of 1 and 2 workers and a 2-worker Dask LocalCluster: wall time, images/s, and the share of
   the CPU time spent in the codec (encode passes + decode) against everything else.
2. The built-in MONAI backend at the demo preset on the demo phantom cohort: iterations/s and
   Mvox/s of training on CPU, then the time to predict and evaluate one model on one ratio.

Usage: .venv/bin/python bench/pipeline.py
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from _common import OUT, machine, machine_markdown, progress, save, table, timed, wait_for_quiet

from medlossy.data.demo import prepare_demo
from medlossy.data.phantom import write_phantom_dataset
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.datasets.sweep import STUDY_RATIOS, plan_sweep, run_sweep
from medlossy.evaluate.evaluate import evaluate_predictions
from medlossy.experiments.demo import DEMO_PHANTOM, DEMO_PHANTOM_CASES, DEMO_TRAINING
from medlossy.train.config import TrainConfig
from medlossy.train.inference import predict_dataset
from medlossy.train.loop import train_model


def sweep_once(source: Path, workers: int, scheduler: str | None) -> pd.DataFrame:
    with tempfile.TemporaryDirectory(dir=OUT) as scratch:
        plan = plan_sweep(open_raw_dataset(source), Path(scratch) / "sweep", STUDY_RATIOS)
        return run_sweep(plan, workers=workers, scheduler=scheduler)


def bench_sweep(source: Path) -> tuple[list[list], dict]:
    from distributed import LocalCluster

    rows, document = [], {}
    setups = [("process pool, 1 worker", 1, None), ("process pool, 2 workers", 2, None)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        setups.append(("Dask LocalCluster, 2 workers", 2, cluster.scheduler_address))
        for name, workers, scheduler in setups:
            busy = wait_for_quiet()
            progress(f"sweep: {name}")
            timing = timed(lambda w=workers, s=scheduler: sweep_once(source, w, s), repeats=1)
            manifest = timing["result"]
            codec = float(manifest["encode_seconds"].sum() + manifest["decode_seconds"].sum())
            # Workers are not children this process waits for (forkserver, Dask), so the
            # share is taken of the workers' wall time rather than of measured CPU time.
            worker_seconds = timing["wall_best"] * workers
            rows.append([name, len(manifest), f"{timing['wall_best']:.1f}",
                         f"{len(manifest) / timing['wall_best']:.2f}", f"{codec:.1f}",
                         f"{100 * codec / worker_seconds:.0f}%", busy])
            document[name] = {"images": len(manifest), "wall_seconds": timing["wall_best"],
                              "codec_seconds": codec, "worker_seconds": worker_seconds,
                              "other_busy_cores": busy}
    return rows, document


def bench_training(out: Path) -> tuple[list[list], dict]:
    phantom = write_phantom_dataset(out / "data", DEMO_PHANTOM_CASES, DEMO_PHANTOM)
    training = {k: (tuple(v) if isinstance(v, list) else v) for k, v in DEMO_TRAINING.items()}
    preset = training.pop("preset")
    training.update(epochs=1, iterations_per_epoch=30, device="cpu")
    config = TrainConfig.from_preset(preset, **training)
    busy = wait_for_quiet()
    progress("training")
    model = out / "model"
    shutil.rmtree(model, ignore_errors=True)
    started = time.perf_counter()
    train_model(phantom, model, config)
    train_seconds = time.perf_counter() - started
    iterations = config.epochs * config.iterations_per_epoch
    voxels = math.prod(config.patch_size) * config.batch_size * iterations
    predictions = out / "predictions"
    shutil.rmtree(predictions, ignore_errors=True)
    progress("predict + evaluate")
    started = time.perf_counter()
    written = predict_dataset(model, phantom, predictions, cases="test")
    table_ = evaluate_predictions(predictions, phantom, only_predicted=True)
    evaluate_seconds = time.perf_counter() - started
    document = {"iterations": iterations, "train_seconds": train_seconds,
                "iterations_per_second": iterations / train_seconds,
                "mvox_per_second": voxels / train_seconds / 1e6,
                "patch_size": config.patch_size, "batch_size": config.batch_size,
                "filters": config.filters, "test_cases": len(written),
                "predict_evaluate_seconds": evaluate_seconds, "other_busy_cores": busy,
                "dice_rows": len(table_)}
    rows = [["train (CPU, 2 threads)", f"{iterations} iterations", f"{train_seconds:.1f}",
             f"{iterations / train_seconds:.2f} it/s, {voxels / train_seconds / 1e6:.2f} "
             f"Mvox/s", busy],
            ["predict + evaluate one ratio", f"{len(written)} test cases",
             f"{evaluate_seconds:.1f}", f"{evaluate_seconds / len(written):.2f} s/case", busy]]
    return rows, document


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    info = machine()
    source = prepare_demo(OUT / "demo-data")[0]
    sweep_rows, sweep_doc = bench_sweep(source)
    train_rows, train_doc = bench_training(OUT / "training")
    markdown = "\n\n".join([
        "## Dataset sweep: the demo CT dataset at all 8 ratios",
        "Command: `.venv/bin/python bench/pipeline.py`. 3 real CTs (122x101x112, 512x512x20, "
        "233x167x191) x ratios 1, 2, 5, 10, 20, 50, 70, 100 = 24 tasks, from scratch each "
        "time. Codec share = (encode passes + decode seconds) / (wall seconds x workers); "
        "the rest is reading, writing NIfTI, checksums, scheduling.",
        table(["setup", "images", "wall s", "images/s", "codec s", "codec share",
               "other busy cores"], sweep_rows),
        "## Built-in MONAI backend at the demo preset (phantom cohort, CPU)",
        f"Patch {'x'.join(map(str, train_doc['patch_size']))}, batch "
        f"{train_doc['batch_size']}, filters {list(train_doc['filters'])}, 4 mm phantom "
        "(96x96x48).",
        table(["step", "work", "seconds", "speed", "other busy cores"], train_rows),
        machine_markdown(info)])
    save("pipeline", {"machine": info, "sweep": sweep_doc, "training": train_doc}, markdown)


if __name__ == "__main__":
    main()
