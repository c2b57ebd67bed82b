"""How fast the demo's x1 model learns each class: Dice per class vs training iterations.

Usage (prints one line per evaluation; the demo phantom cohort is cached under --data):
    .venv/bin/python bench/demo_learning.py [--phase portal-venous] [--iterations 480]
        [--evaluate 240,480] [--optimizer adamw] [--learning-rate 3e-3] [--filters 16,32,64,128]
        [--sampling classes] [--foreground-fraction 0.9] [--mirror ""] [--threads 2]
        [--precision auto]

Data flow: the demo's 12-case phantom cohort (120x120x48 of 3.2 x 3.2 x 4 mm, trained at
4 mm; ``--phase``) -> fold 0 of 3 (8 training, 4 test cases) -> medlossy.train's
preprocessing, PatchSampler, DynUNet and optimizer, Dice + CE, poly learning rate over
``--iterations`` -> at each ``--evaluate`` point, sliding-window prediction of the 4 test
cases and Dice per class; forward passes under bfloat16 autocast as ``--precision`` and
the machine decide (medlossy.train.precision). Training steps alone are timed (it/s), with
the load average beside them: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss

from medlossy.data.phantom import LABELS, write_phantom_dataset
from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.experiments.demo import DEMO_PHANTOM, DEMO_TRAINING
from medlossy.train.config import TrainConfig
from medlossy.train.loop import build_optimizer
from medlossy.train.network import build_network, network_arguments
from medlossy.train.precision import PRECISIONS, uses_bfloat16
from medlossy.train.preprocessing import PreparedCase, fit_normalisation, load_case, prepare
from medlossy.train.sampling import PatchSampler
from medlossy.train.splits import kfold_splits


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _dice(network: torch.nn.Module, cases: list[PreparedCase], patch: tuple[int, ...],
          classes: int, bfloat16: bool) -> np.ndarray:
    network.eval()
    scores = []
    with torch.no_grad():
        for case in cases:
            image = torch.from_numpy(np.ascontiguousarray(case.image))[None]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                logits = sliding_window_inference(image, patch, 2, network, overlap=0.5,
                                                  mode="gaussian")
            predicted = logits.argmax(1)[0].numpy()
            scores.append([2 * ((case.labels == c) & (predicted == c)).sum()
                           / max((case.labels == c).sum() + (predicted == c).sum(), 1)
                           for c in range(1, classes)])
    network.train()
    return np.mean(scores, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="bench/out/demo_learning")
    parser.add_argument("--phase", default="portal-venous")
    parser.add_argument("--iterations", type=int, default=480)
    parser.add_argument("--evaluate", default="240,480")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--filters", default="16,32,64,128")
    parser.add_argument("--patch", default="48,48,32")
    parser.add_argument("--sampling", default="classes")
    parser.add_argument("--foreground-fraction", type=float, default=0.9)
    parser.add_argument("--mirror", default="", help="mirrored axes, e.g. 0,1,2 (default none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)
    bfloat16 = uses_bfloat16(torch.device("cpu"), arguments.precision)

    folder = write_phantom_dataset(arguments.data, 12, replace(DEMO_PHANTOM,
                                                               phase=arguments.phase))
    dataset = open_raw_dataset(folder)
    labelled = [case for case in dataset.cases() if case.label is not None]
    split = kfold_splits([case.name for case in labelled], 3)[0]
    config = TrainConfig(
        target_spacing=tuple(DEMO_TRAINING["target_spacing"]),
        patch_size=_numbers(arguments.patch),
        filters=_numbers(arguments.filters), epochs=1, iterations_per_epoch=arguments.iterations,
        optimizer=arguments.optimizer, learning_rate=arguments.learning_rate,
        weight_decay=arguments.weight_decay, sampling=arguments.sampling,
        foreground_fraction=arguments.foreground_fraction,
        mirror_axes=_numbers(arguments.mirror))
    loaded = {case.name: load_case(dataset, case) for case in labelled}
    specs = fit_normalisation(dataset, [loaded[name] for name in split["train"]])
    prepared = {name: prepare(case, specs, config.target_spacing)
                for name, case in loaded.items()}
    test = [prepared[name] for name in split["test"]]
    classes = max(LABELS.values()) + 1
    network = build_network(network_arguments(1, classes, config.filters))
    optimizer = build_optimizer(network, config)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                               batch=True)
    sampler = PatchSampler([prepared[name] for name in split["train"]], config)
    names = [name for name, value in sorted(LABELS.items(), key=lambda kv: kv[1]) if value]
    evaluate, seconds, losses = set(_numbers(arguments.evaluate)), 0.0, []
    print(f"{vars(arguments)}; bfloat16 {bfloat16}; uptime load {os.getloadavg()}", flush=True)
    for iteration in range(1, config.iterations_per_epoch + 1):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * (
                1 - (iteration - 1) / config.iterations_per_epoch) ** config.poly_exponent
        started = time.perf_counter()
        images, targets = sampler.batch()
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            logits = network(images)
        loss = loss_function(logits.float(), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()
        seconds += time.perf_counter() - started
        losses.append(float(loss.detach()))
        if iteration in evaluate:
            dice = _dice(network, test, config.patch_size, classes, bfloat16)
            print(f"it {iteration} loss {np.mean(losses[-40:]):.3f} it/s "
                  f"{iteration / seconds:.2f} load {os.getloadavg()[0]:.1f} mean "
                  f"{dice.mean():.3f} " + " ".join(f"{n}={v:.2f}" for n, v in
                                                   zip(names, dice, strict=True)), flush=True)


if __name__ == "__main__":
    main()
