"""Pictures for the report: what compression does to one slice, and to a model's contours.

``plot_ratio_strip``: the same slice at x1, x10, x20, x50 and x100 (those swept) over its
absolute error against x1 (the paper's Fig. 1, right). ``plot_contours``: the slice of a
test case with the ground truth and the predictions of the x1 model and of a model trained
at a high ratio, each on its own ratio's image.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from medlossy.datasets.nnunet_raw import open_raw_dataset
from medlossy.reader_study.windows import PRESETS
from medlossy.report.plotting import plt

PICTURE_RATIOS = (1.0, 10.0, 20.0, 50.0, 100.0)
CT_PEAK = 4096.0  # the study's PSNR peak for CT


def _volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def busiest_slice(label: np.ndarray | None, depth: int) -> int:
    """The axial slice showing the most classes, then the most labelled voxels (the middle
    one without a label): a slice through the body alone would hide the organs."""
    if label is None or not label.any():
        return depth // 2
    classes = [c for c in np.unique(label) if c > 0]
    present = sum((label == c).any(axis=(0, 1)).astype(np.int64) for c in classes)
    voxels = (label > 0).sum(axis=(0, 1))
    return int(np.lexsort((voxels, present))[-1])


def _display(image: np.ndarray) -> np.ndarray:
    return np.rot90(image)  # nibabel's (x, y) to rows top-down, as viewers show axial slices


def _bounds(original: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT":
        width, level = PRESETS["abdomen"]
        return level - width / 2, level + width / 2
    low, high = np.percentile(original, (0.5, 99.5))
    return float(low), float(max(high, low + 1e-6))


def plot_ratio_strip(folders: Mapping[float, Path], stem: Path, title: str) -> list[Path]:
    """The first labelled case's busiest slice at each swept ratio of ``PICTURE_RATIOS`` (top;
    the first swept ratios where fewer than two of those were) and its absolute error against
    x1 (bottom, one scale); [] without x1 and another ratio."""
    ratios = [r for r in PICTURE_RATIOS if r in folders]
    if len(ratios) < 2:  # other ratios swept (or some out of reach): show those
        ratios = sorted(folders)[:len(PICTURE_RATIOS)]
    if 1.0 not in ratios or len(ratios) < 2:
        return []
    reference = open_raw_dataset(folders[1.0])
    cases = reference.cases()
    case = next((c for c in cases if c.label is not None), cases[0])
    modality = reference.channel_modality(0)
    original = _volume(case.images[0])
    label = _volume(case.label) if case.label is not None else None
    z = busiest_slice(label, original.shape[2])
    slices = {}
    for ratio in ratios:
        image = open_raw_dataset(folders[ratio]).cases()
        path = next(c for c in image if c.name == case.name).images[0]
        slices[ratio] = _volume(path)[:, :, z]
    peak = CT_PEAK if modality == "CT" else float(original.max() - original.min()) or 1.0
    errors = {r: np.abs(s - original[:, :, z]) for r, s in slices.items()}
    scale = max(float(np.percentile(np.concatenate([e.ravel() for e in errors.values()]),
                                    99.5)), 1.0)
    low, high = _bounds(original[:, :, z], modality)
    figure, axes = plt.subplots(2, len(ratios), figsize=(2.3 * len(ratios), 5.0), dpi=120,
                                squeeze=False)
    for column, ratio in enumerate(ratios):
        mse = float(np.mean(errors[ratio] ** 2))
        quality = "lossless" if mse == 0 else f"{10 * np.log10(peak ** 2 / mse):.1f} dB"
        axes[0, column].imshow(_display(slices[ratio]), cmap="gray", vmin=low, vmax=high)
        axes[0, column].set_title(f"x{ratio:g}\n{quality}", fontsize=9)
        shown = axes[1, column].imshow(_display(errors[ratio]), cmap="inferno", vmin=0,
                                       vmax=scale)
        for row in (0, 1):
            axes[row, column].set_axis_off()
    figure.colorbar(shown, ax=axes[1, :].tolist(), shrink=0.8,
                    label="|error| vs x1" + (" (HU)" if modality == "CT" else ""))
    figure.suptitle(f"{title}: case {case.name}, slice {z}", fontsize=10)
    return _save(figure, stem)


def _classes(folder: Path) -> dict[int, str]:
    labels = open_raw_dataset(folder).metadata.get("labels", {})
    return {int(value): str(name) for name, value in labels.items()
            if not isinstance(value, list) and int(value) > 0}


def plot_contours(panels: list[tuple[float, Path, Path]], stem: Path, title: str,
                  ) -> list[Path]:
    """Per panel (ratio, the ratio's dataset folder, the predictions of the model trained at
    that ratio): one test case's busiest slice with the ground truth (dashed) and the
    predicted contours (solid) per class; [] when no case has a prediction everywhere."""
    if not panels:
        return []
    first = open_raw_dataset(panels[0][1])
    ending = first.file_ending
    names = [{f.name for f in p.glob(f"*{ending}")} for _, _, p in panels]
    labelled = {c.name + ending: c for c in first.cases() if c.label is not None}
    common = sorted(set.intersection(*names) & set(labelled))
    if not common:
        return []
    name = common[0]
    case = labelled[name]
    truth = _volume(case.label)
    z = busiest_slice(truth, truth.shape[2])
    classes = _classes(panels[0][1])
    colours = plt.get_cmap("tab20")
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), dpi=120,
                                squeeze=False)
    for axis, (ratio, folder, predicted) in zip(axes[0], panels, strict=True):
        dataset = open_raw_dataset(folder)
        image = _volume(next(c for c in dataset.cases() if c.name == case.name).images[0])
        low, high = _bounds(image[:, :, z], dataset.channel_modality(0))
        axis.imshow(_display(image[:, :, z]), cmap="gray", vmin=low, vmax=high)
        prediction = _volume(predicted / name)[:, :, z]
        for index, (value, label) in enumerate(sorted(classes.items())):
            colour = colours(index % 20)
            for mask, style in ((truth[:, :, z] == value, "--"), (prediction == value, "-")):
                if mask.any():
                    axis.contour(_display(mask.astype(float)), levels=[0.5], colors=[colour],
                                 linestyles=style, linewidths=1.0)
            axis.plot([], [], color=colour, label=label)
        axis.set_title(f"model trained and tested at x{ratio:g}", fontsize=9)
        axis.set_axis_off()
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
                       title="solid: predicted\ndashed: truth", title_fontsize=7)
    figure.suptitle(f"{title}: case {case.name}, slice {z}", fontsize=10)
    return _save(figure, stem)


def _save(figure, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return paths
