"""Calibrate the synthetic phantom on the real demo CTs and their TotalSegmentator labels.

The phantom (``medlossy.data.phantom``) draws its HU means, tissue spread and correlated noise
from the frozen table ``phantom_calibration.json`` next to this module, so generating a cohort
needs no download. This module measures that table again from the demo CTs:

* CT A, ``example_ct.nii.gz`` (3 mm isotropic, no contrast agent) with
  ``example_seg_fast_force_split.nii.gz``: the phantom's source (same 3 mm grid as the phantom's
  default, and the only demo CT with kidneys labelled);
* CT C, the DICOM series ``example_ct_dicom/`` (0.98 x 0.98 x 2 mm, contrast-enhanced) with
  ``example_seg_dicom.nii.gz`` flipped along its second axis: reported for comparison.

Per tissue, the mean and standard deviation are taken inside the label eroded by 3 mm (so
partial volume at the borders does not count); fat is the body outside every label within the
adipose range [-190, -30] HU; air is outside the body, at least 9 mm away from it.

Noise is what remains inside the liver (eroded by 6 mm) after subtracting a masked Gaussian
smoothing (sigma 6 mm): its standard deviation and its correlation between neighbouring voxels
along each axis. The phantom's noise model is white noise filtered by a Gaussian; its std and
per-axis width are found by measuring simulated noise exactly as the real liver was measured,
so the phantom reproduces the measured numbers, not just a formula's guess at them.

Run ``python -m medlossy.data.calibration`` to print the table as Markdown and rewrite the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

CALIBRATION_FILE = Path(__file__).with_name("phantom_calibration.json")

#: Phantom tissue -> TotalSegmentator class names whose union is measured.
TISSUE_CLASSES: dict[str, tuple[str, ...]] = {
    "liver": ("liver",),
    "spleen": ("spleen",),
    "kidney": ("kidney_right", "kidney_left"),
    "aorta": ("aorta",),
    "inferior_vena_cava": ("inferior_vena_cava",),
    "vertebrae": tuple(f"vertebrae_{level}" for level in (
        *(f"C{i}" for i in range(1, 8)), *(f"T{i}" for i in range(1, 13)),
        *(f"L{i}" for i in range(1, 6)), "S1")),
    "muscle": ("autochthon_left", "autochthon_right"),
    "bowel": ("small_bowel",),
}
FAT_RANGE_HU = (-190.0, -30.0)
TISSUE_EROSION_MM = 3.0
NOISE_EROSION_MM = 6.0
NOISE_SMOOTHING_MM = 6.0
AIR_MARGIN_MM = 9.0
BODY_THRESHOLD_HU = -500.0


def erode_mm(mask: np.ndarray, spacing: tuple[float, ...], mm: float) -> np.ndarray:
    """Voxels of ``mask`` farther than ``mm`` from its outside (an exact, anisotropic erosion)."""
    if not mask.any():
        return mask.copy()
    padded = np.pad(mask, 1)
    distance = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
    return distance > mm


def body_mask(image: np.ndarray) -> np.ndarray:
    """The patient: the largest connected region above -500 HU, holes filled slice by slice."""
    above = image > BODY_THRESHOLD_HU
    components, count = ndimage.label(above)
    if count == 0:
        return above
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body


def _masked_smooth(image: np.ndarray, mask: np.ndarray, sigma: tuple[float, ...]) -> np.ndarray:
    # Normalised convolution: the smoothing sees only voxels inside the mask.
    weights = ndimage.gaussian_filter(mask.astype(np.float64), sigma, mode="constant")
    values = ndimage.gaussian_filter(np.where(mask, image, 0.0), sigma, mode="constant")
    return values / np.maximum(weights, 1e-6)


def noise_statistics(image: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...]) -> dict:
    """High-pass residual inside ``mask``: std, lag-1 correlation per axis, lengths in mm.

    The correlation length per axis is that of a Gaussian autocorrelation with the measured
    lag-1 value: ``spacing / sqrt(-2 ln rho)``.
    """
    image = np.asarray(image, dtype=np.float64)
    sigma = tuple(NOISE_SMOOTHING_MM / s for s in spacing)
    residual = image - _masked_smooth(image, mask, sigma)
    inner = erode_mm(mask, spacing, NOISE_EROSION_MM)
    values = residual[inner]
    centred = residual - values.mean()
    variance = float(values.var())
    correlations, lengths = [], []
    for axis in range(3):
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(0, -1), slice(1, None)
        pairs = inner[tuple(head)] & inner[tuple(tail)]
        product = centred[tuple(head)][pairs] * centred[tuple(tail)][pairs]
        rho = float(product.mean() / variance)
        correlations.append(rho)
        lengths.append(float(spacing[axis] / np.sqrt(-2 * np.log(rho))) if 0 < rho < 1 else 0.0)
    return {"voxels": int(inner.sum()), "std_hu": float(np.sqrt(variance)),
            "lag1_correlation": correlations, "correlation_length_mm": lengths}


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...],
                     sigma_voxels: tuple[float, ...], std: float) -> np.ndarray:
    """White Gaussian noise filtered by a Gaussian of ``sigma_voxels``, scaled to ``std``.

    The scale is the filter's exact gain (the norm of its kernel), not the sample's std, so a
    small field has the same expected variance as a large one.
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    field = ndimage.gaussian_filter(white, sigma_voxels, mode="wrap")
    impulse = np.zeros([min(n, 31) | 1 for n in shape], dtype=np.float64)
    impulse[tuple(n // 2 for n in impulse.shape)] = 1.0
    gain = float(np.sqrt((ndimage.gaussian_filter(impulse, sigma_voxels, mode="constant") ** 2)
                         .sum()))
    return field * np.float32(std / gain)


def fit_noise_model(measured: dict, spacing: tuple[float, ...], *, size: int = 72,
                    sweeps: int = 3) -> dict:
    """Std and per-axis Gaussian width (mm) of filtered white noise that measures as ``measured``.

    Coordinate-wise bisection on the filter width, each trial measured by
    :func:`noise_statistics` on a simulated cube (fixed seed), then the std is scaled to match.
    """
    target = measured["lag1_correlation"]
    sigma = [0.5, 0.5, 0.5]
    mask = np.ones((size,) * 3, dtype=bool)

    def measure(widths: list[float]) -> dict:
        field = correlated_noise(np.random.default_rng(20240611), mask.shape, tuple(widths), 1.0)
        return noise_statistics(field, mask, spacing)

    for _ in range(sweeps):
        for axis in range(3):
            low, high = 0.0, 3.0
            for _ in range(14):
                middle = (low + high) / 2
                trial = list(sigma)
                trial[axis] = middle
                if measure(trial)["lag1_correlation"][axis] < target[axis]:
                    low = middle
                else:
                    high = middle
            sigma[axis] = (low + high) / 2
    unit = measure(sigma)
    return {"std_hu": measured["std_hu"] / unit["std_hu"],
            "sigma_mm": [s * d for s, d in zip(sigma, spacing, strict=True)],
            "check_lag1_correlation": unit["lag1_correlation"]}


def _tissue_statistics(image: np.ndarray, mask: np.ndarray,
                       spacing: tuple[float, ...]) -> dict | None:
    if not mask.any():
        return None
    inner = erode_mm(mask, spacing, TISSUE_EROSION_MM)
    values = image[inner] if inner.any() else image[mask]
    border = image[mask & ~inner]
    return {"voxels": int(values.size), "mean_hu": float(values.mean()),
            "std_hu": float(values.std()), "label_mean_hu": float(image[mask].mean()),
            "border_mean_hu": float(border.mean()) if border.size else None}


def measure_ct(image: np.ndarray, labels: np.ndarray, class_names: dict[int, str],
               spacing: tuple[float, ...]) -> dict:
    """Per-tissue HU statistics and liver noise of one labelled CT."""
    image = np.asarray(image, dtype=np.float64)
    ids = {name: class_id for class_id, name in class_names.items()}
    tissues: dict[str, dict | None] = {}
    for tissue, names in TISSUE_CLASSES.items():
        mask = np.isin(labels, [ids[n] for n in names if n in ids])
        tissues[tissue] = _tissue_statistics(image, mask, spacing)
    body = body_mask(image)
    unlabelled = body & (labels == 0)
    fat = unlabelled & (image >= FAT_RANGE_HU[0]) & (image <= FAT_RANGE_HU[1])
    tissues["fat"] = {"voxels": int(fat.sum()), "mean_hu": float(image[fat].mean()),
                      "std_hu": float(image[fat].std()), "label_mean_hu": None,
                      "border_mean_hu": None}
    air = ~body & ~(ndimage.distance_transform_edt(~body, sampling=spacing) <= AIR_MARGIN_MM)
    # Outside the body lie the table, blankets and the padding beyond the reconstruction
    # circle: median and MAD describe the air itself, not those.
    median = float(np.median(image[air]))
    tissues["air"] = {"voxels": int(air.sum()), "mean_hu": median,
                      "std_hu": float(1.4826 * np.median(np.abs(image[air] - median))),
                      "label_mean_hu": None, "border_mean_hu": None}
    liver = np.isin(labels, [ids["liver"]])
    return {"spacing_mm": [float(s) for s in spacing], "tissues": tissues,
            "noise": noise_statistics(image, liver, spacing)}


def _load_references(reference: Path) -> dict[str, tuple[np.ndarray, np.ndarray, tuple]]:
    import nibabel as nib

    from medlossy.io import read_volume

    ct_a = read_volume(reference / "example_ct.nii.gz", "CT")
    seg_a = np.asarray(nib.load(reference / "example_seg_fast_force_split.nii.gz").dataobj)
    ct_c = read_volume(reference / "example_ct_dicom", "CT")
    # The label file's y axis runs opposite to the DICOM rows (see data/demo.py).
    seg_c = np.flip(np.asarray(nib.load(reference / "example_seg_dicom.nii.gz").dataobj), 1)
    return {"CT A": (np.asarray(ct_a.array), seg_a, ct_a.spacing),
            "CT C": (np.asarray(ct_c.array), seg_c, ct_c.spacing)}


def calibrate(cache: str | None = None) -> dict:
    """Measure every demo CT; the phantom's model comes from CT A (3 mm, no contrast)."""
    from medlossy.data.demo import VERSION, _class_maps, demo_reference_files

    reference = demo_reference_files(cache)
    names = _class_maps(reference.parents[1])["total"]
    sources = {"CT A": "example_ct.nii.gz + example_seg_fast_force_split.nii.gz "
                       "(3 mm isotropic, no contrast agent)",
               "CT C": "example_ct_dicom/ + example_seg_dicom.nii.gz flipped on axis 1 "
                       "(0.98 x 0.98 x 2 mm, contrast-enhanced)"}
    measurements = {}
    for key, (image, labels, spacing) in _load_references(reference).items():
        measurements[key] = {"source": sources[key], **measure_ct(image, labels, names, spacing)}
    model_source = measurements["CT A"]
    model = {
        "source": "CT A",
        "tissues": {tissue: {"mean_hu": round(stats["mean_hu"], 1),
                             "std_hu": round(stats["std_hu"], 1)}
                    for tissue, stats in model_source["tissues"].items()},
        "vertebrae_border_mean_hu": round(model_source["tissues"]["vertebrae"]["border_mean_hu"],
                                          1),
        "noise": [],
    }
    # One noise model per grid: CT A's at 3 mm (the phantom's default), CT C's at its native
    # 1 x 1 x 2 mm; the phantom uses the one whose voxels are closest to its own.
    for key, measurement in measurements.items():
        fit = fit_noise_model(measurement["noise"], tuple(measurement["spacing_mm"]))
        model["noise"].append({"source": key, "spacing_mm": measurement["spacing_mm"],
                               "std_hu": round(fit["std_hu"], 2),
                               "sigma_mm": [round(s, 3) for s in fit["sigma_mm"]],
                               "check_lag1_correlation": [round(c, 3) for c in
                                                          fit["check_lag1_correlation"]]})
    return {
        "description": f"Calibration of medlossy's synthetic phantom, measured on real CTs of "
                       f"the TotalSegmentator {VERSION} source archive (tests/reference_files) "
                       "with their TotalSegmentator labels (model predictions).",
        "method": {"tissue_erosion_mm": TISSUE_EROSION_MM, "fat_range_hu": list(FAT_RANGE_HU),
                   "air_margin_mm": AIR_MARGIN_MM, "noise_erosion_mm": NOISE_EROSION_MM,
                   "noise_smoothing_mm": NOISE_SMOOTHING_MM,
                   "body_threshold_hu": BODY_THRESHOLD_HU},
        "measured": measurements,
        "model": model,
    }


def load_calibration(path: Path = CALIBRATION_FILE) -> dict:
    """The frozen calibration table shipped with medlossy."""
    return json.loads(Path(path).read_text())


def markdown_table(document: dict) -> str:
    """The measured numbers as Markdown: tissues per CT, then noise."""
    cts = list(document["measured"])
    lines = ["| tissue | " + " | ".join(f"{ct} mean ± std (HU)" for ct in cts)
             + " | phantom mean ± std (HU) |",
             "|---|" + "---|" * (len(cts) + 1)]
    for tissue, model in document["model"]["tissues"].items():
        cells = []
        for ct in cts:
            stats = document["measured"][ct]["tissues"].get(tissue)
            cells.append("not labelled" if stats is None else
                         f"{stats['mean_hu']:.1f} ± {stats['std_hu']:.1f} (n={stats['voxels']})")
        lines.append(f"| {tissue} | " + " | ".join(cells)
                     + f" | {model['mean_hu']:.1f} ± {model['std_hu']:.1f} |")
    lines += ["", "| liver noise (high-pass residual) | " + " | ".join(cts) + " |",
              "|---|" + "---|" * len(cts)]
    noise = {ct: document["measured"][ct]["noise"] for ct in cts}
    models = {fit["source"]: fit for fit in document["model"]["noise"]}

    def triple(values: list[float], digits: int) -> str:
        return " / ".join(f"{v:.{digits}f}" for v in values)

    rows = [
        ("voxel spacing (mm, x / y / z)",
         lambda ct: triple(document["measured"][ct]["spacing_mm"], 2)),
        ("residual std (HU)", lambda ct: f"{noise[ct]['std_hu']:.1f}"),
        ("lag-1 correlation (x / y / z)", lambda ct: triple(noise[ct]["lag1_correlation"], 2)),
        ("correlation length (mm, x / y / z)",
         lambda ct: triple(noise[ct]["correlation_length_mm"], 2)),
        ("model: noise std (HU)", lambda ct: f"{models[ct]['std_hu']:.1f}"),
        ("model: Gaussian filter sigma (mm, x / y / z)",
         lambda ct: triple(models[ct]["sigma_mm"], 2)),
        ("model, measured the same way: lag-1 correlation",
         lambda ct: triple(models[ct]["check_lag1_correlation"], 2)),
    ]
    for name, cell in rows:
        lines.append(f"| {name} | " + " | ".join(cell(ct) for ct in cts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    out = Path(arguments[0]) if arguments else CALIBRATION_FILE
    document = calibrate()
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(markdown_table(document))
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
