"""Coverage of the reader study's intervals on simulated studies with a known truth.

Raters and images are random effects (``medlossy.reader_study.simulation.ReaderModel``:
ratios 1, 3, 10, 40, true 50 % detection ratio 6, rater and image SD 0.7 logits); every
rater answers ``--images`` pairs per ratio pair. Prints, per design, the share of studies
whose 95 % interval held the true mean score (per ratio pair; x1 vs x40 is the
near-ceiling cell) and the true 50 % detection ratio.

    PYTHONPATH=src .venv/bin/python bench/reader_coverage.py [--studies 2000] \\
        [--threshold-studies 400] [--out bench/results/reader_coverage.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from medlossy.reader_study.simulation import ReaderModel, coverage

DESIGNS = ((2, 10), (3, 10), (8, 10))  #: raters x images per ratio pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000,
                        help="simulated studies for the score intervals (default: 2000)")
    parser.add_argument("--threshold-studies", type=int, default=400,
                        help="simulated studies for the 50%% detection ratio (default: 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    arguments = parser.parse_args()
    model = ReaderModel()
    results = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}",
               "cores": os.cpu_count(), "load_before": os.getloadavg()[0],
               "model": model.__dict__, "designs": []}
    pairs = model.ratio_pairs
    print(f"load {os.getloadavg()[0]:.2f}; true mean scores: " + ", ".join(
        f"x{low:g}/x{high:g} {model.true_score(low, high):.3f}" for low, high in pairs))
    print("| raters x images | " + " | ".join(f"x{a:g} vs x{b:g}" for a, b in pairs)
          + " | 50% ratio | seconds |")
    print("|---|" + "---|" * (len(pairs) + 2))
    for raters, images in DESIGNS:
        start = time.perf_counter()
        scores = coverage(model, raters, images, studies=arguments.studies,
                          seed=arguments.seed + raters, threshold=False)
        found = coverage(model, raters, images, studies=arguments.threshold_studies,
                         seed=arguments.seed + 100 + raters)
        seconds = time.perf_counter() - start
        print(f"| {raters} x {images} | " + " | ".join(
            f"{100 * scores.scores[pair]:.1f}%" for pair in pairs)
            + f" | {100 * found.threshold:.1f}% (interval in {100 * found.threshold_found:.0f}%)"
            f" | {seconds:.0f} |", flush=True)
        results["designs"].append({
            "raters": raters, "images": images, "studies": arguments.studies,
            "threshold_studies": arguments.threshold_studies,
            "score_coverage": {f"{a:g}-{b:g}": scores.scores[a, b] for a, b in pairs},
            "threshold_coverage": found.threshold, "threshold_found": found.threshold_found,
            "seconds": seconds})
    results["load_after"] = os.getloadavg()[0]
    if arguments.out:
        Path(arguments.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
