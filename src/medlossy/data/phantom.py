"""A seeded cohort of synthetic abdominal CTs with exact labels, calibrated on real CT.

SYNTHETIC DATA. No package ships enough labelled abdominal CTs to train on every compression
ratio offline, so this module draws them: organs as deformed superellipsoids whose size,
shape, position and rotation vary per case; HU means, tissue spread and noise from the frozen
calibration table measured on the real demo CTs (see ``medlossy.data.calibration``). The
labels are exact because they define the image, not the other way round.

Orientation: array axes run to the patient's left, posterior and superior (LPS, as DICOM
stores CT), and the affine says so: a world RAS+ matrix ``diag(-sx, -sy, sz)``, centred on
the volume. A slice ``image[:, :, k].T`` shown with rows from the top is the radiological
view: anterior up, patient's right (the liver) on the image's left.

Case ``k`` of seed ``s`` depends only on ``(s, k)``, the shape, the spacing and the
calibration, never on how many cases are drawn.

Example:
    >>> from medlossy.data.phantom import PhantomConfig, generate_case
    >>> case = generate_case(0, PhantomConfig(shape=(48, 48, 32), spacing=(6.0, 6.0, 6.0)))
    >>> case.image.array.dtype.name, int(case.labels.array.max())
    ('int16', 8)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from medlossy import __version__
from medlossy.atomic import atomic_output
from medlossy.data.calibration import (
    CALIBRATION_FILE,
    TISSUE_EROSION_MM,
    correlated_noise,
    erode_mm,
    load_calibration,
)
from medlossy.errors import MedlossyError
from medlossy.io.nifti import write_nifti
from medlossy.terminal import on_terminal
from medlossy.volume import Volume

#: nnU-Net labels, consecutive from 0.
LABELS: dict[str, int] = {"background": 0, "body": 1, "liver": 2, "spleen": 3,
                          "kidney_right": 4, "kidney_left": 5, "aorta": 6, "vertebrae": 7,
                          "inferior_vena_cava": 8}
#: What each voxel is made of (finer than the labels: the body holds fat, muscle, bowel, gas;
#: a vertebra has a cortex and a cancellous interior). Codes are internal.
TISSUES: tuple[str, ...] = ("air", "fat", "muscle", "bowel", "gas", "liver", "spleen", "kidney",
                            "aorta", "inferior_vena_cava", "vertebrae", "cortex")
_T = {name: code for code, name in enumerate(TISSUES)}
#: What a CT scanner writes: 12 bits stored, rescale intercept -1024.
HU_RANGE = (-1024, 3071)
DEFAULT_SHAPE = (96, 96, 64)
DEFAULT_SPACING = (3.0, 3.0, 3.0)
DEFAULT_DATASET_ID = 950
#: Partial volume: the clean image is blurred by this much before texture and noise.
PARTIAL_VOLUME_SIGMA_MM = 1.2
#: Texture (spread beyond noise, e.g. vessels, trabeculae) correlation width; not calibrated.
TEXTURE_SIGMA_MM = 6.0
#: Contrast phases: HU added to each tissue's calibrated (unenhanced) mean. "portal-venous"
#: follows typical enhancement of an abdominal CT about 70 s after an iodine bolus (aorta
#: about 160 HU, IVC about 125, kidneys about 150, spleen about 30 HU above the liver, muscle
#: and bowel wall mildly enhanced). Literature-typical values, NOT measured: the one contrast
#: CT of the archive (CT B) is early arterial (aorta 353 HU) and labels no abdominal organs.
ENHANCEMENT_HU: dict[str, dict[str, float]] = {
    "native": {},
    "portal-venous": {"aorta": 120.0, "inferior_vena_cava": 85.0, "kidney": 135.0,
                      "spleen": 90.0, "liver": 50.0, "muscle": 15.0, "bowel": 40.0,
                      "vertebrae": 20.0},
}


@dataclass(frozen=True)
class PhantomConfig:
    """What every case of a cohort shares.

    Args:
        shape: voxels along (left, posterior, superior).
        spacing: mm per voxel along the same axes.
        seed: cohort seed; case k uses ``numpy.random.default_rng([seed, k])``.
        mean_jitter_hu: per-case standard deviation of each tissue's HU mean (not measured:
            two real CTs cannot estimate between-subject spread).
        phase: contrast phase, a key of :data:`ENHANCEMENT_HU`: "native" (unenhanced, as
            calibrated) or "portal-venous" (organs and vessels enhanced by contrast agent).
    """

    shape: tuple[int, int, int] = DEFAULT_SHAPE
    spacing: tuple[float, float, float] = DEFAULT_SPACING
    seed: int = 0
    mean_jitter_hu: float = 4.0
    phase: str = "native"

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) < 16 for n in self.shape):
            raise ValueError(f"shape must be three sizes >= 16, got {self.shape}")
        if len(self.spacing) != 3 or any(not float(s) > 0 for s in self.spacing):
            raise ValueError(f"spacing must be three positive numbers, got {self.spacing}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.mean_jitter_hu < 0:
            raise ValueError(f"mean_jitter_hu must be >= 0, got {self.mean_jitter_hu}")
        if self.phase not in ENHANCEMENT_HU:
            raise ValueError(f"phase must be one of {sorted(ENHANCEMENT_HU)}, got "
                             f"{self.phase!r}")
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))

    @property
    def affine(self) -> np.ndarray:
        """Voxel -> world RAS+ mm: axes point L, P, S; the volume's centre is the origin."""
        directions = np.diag([-1.0, -1.0, 1.0]) * np.asarray(self.spacing)
        centre = (np.asarray(self.shape) - 1) / 2
        affine = np.eye(4)
        affine[:3, :3] = directions
        affine[:3, 3] = -directions @ centre
        return affine


@dataclass
class PhantomCase:
    """One synthetic subject: image (int16 HU), labels (uint8), tissue map and parameters."""

    image: Volume
    labels: Volume
    tissues: np.ndarray
    means_hu: dict[str, float]
    parameters: dict = field(default_factory=dict)


def case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _noise_model(calibration: dict, spacing: tuple[float, ...]) -> dict:
    """The calibrated noise model measured on the grid closest to ``spacing``."""
    def distance(model: dict) -> float:
        return float(np.abs(np.log(np.asarray(model["spacing_mm"]) / np.asarray(spacing))).sum())

    return min(calibration["model"]["noise"], key=distance)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...],
                  feature_mm: float) -> np.ndarray:
    """A smooth random field of unit spread, varying over about ``feature_mm``.

    A coarse grid of Gaussian values is interpolated with Gaussian weights, one small matrix
    per axis (much faster than spline zooming on a full grid).
    """
    coarse = tuple(max(2, int(np.ceil(n * s / feature_mm)) + 1)
                   for n, s in zip(shape, spacing, strict=True))
    values = rng.standard_normal(coarse)
    for axis, (n, c) in enumerate(zip(shape, coarse, strict=True)):
        positions = np.linspace(0.0, c - 1.0, n)
        weights = np.exp(-0.5 * ((positions[:, None] - np.arange(c)[None, :]) / 0.6) ** 2)
        weights /= weights.sum(axis=1, keepdims=True)
        values = np.moveaxis(np.tensordot(weights, np.moveaxis(values, axis, 0), axes=1), 0,
                             axis)
    return (values / max(float(values.std()), 1e-12)).astype(np.float32)


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    """Rotation about z, then y, then x (radians)."""
    gz, gy, gx = angles
    rz = np.array([[np.cos(gz), -np.sin(gz), 0], [np.sin(gz), np.cos(gz), 0], [0, 0, 1]])
    ry = np.array([[np.cos(gy), 0, np.sin(gy)], [0, 1, 0], [-np.sin(gy), 0, np.cos(gy)]])
    rx = np.array([[1, 0, 0], [0, np.cos(gx), -np.sin(gx)], [0, np.sin(gx), np.cos(gx)]])
    return rz @ ry @ rx


def _superellipsoid(coords: tuple[np.ndarray, ...], centre, semi, exponent: float,
                    angles=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Level of a superellipsoid: < 1 inside. ``coords`` are world-like mm arrays (x, y, z)."""
    rotation = _rotation(angles)
    offsets = [c - np.float32(c0) for c, c0 in zip(coords, centre, strict=True)]
    level = np.zeros(np.broadcast_shapes(*(o.shape for o in offsets)), dtype=np.float32)
    for axis in range(3):
        local = sum(np.float32(rotation[row, axis]) * offsets[row] for row in range(3))
        level += (np.abs(local) / np.float32(semi[axis])) ** np.float32(exponent)
    return level


class _Painter:
    """Labels and tissues painted in order: a later structure wins where two overlap."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.labels = np.zeros(shape, dtype=np.uint8)
        self.tissues = np.full(shape, _T["air"], dtype=np.uint8)

    def paint(self, mask: np.ndarray, label: str, tissue: str,
              region: tuple[slice, ...] = (slice(None),) * 3) -> None:
        """Paint ``mask``, which covers ``region`` of the volume (basic slices: a view)."""
        self.labels[region][mask] = LABELS[label]
        self.tissues[region][mask] = _T[tissue]


def _anatomy(rng: np.random.Generator, config: PhantomConfig) -> tuple[_Painter, dict]:
    shape, spacing = config.shape, config.spacing
    axes = [((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s)
            for n, s in zip(shape, spacing, strict=True)]
    grid = np.meshgrid(*axes, indexing="ij")
    # A smooth displacement (a few mm over tens of mm) bends everything a little.
    bend = rng.uniform(2.0, 5.0)
    x, y, z = (g + bend * _smooth_field(rng, shape, spacing, 100.0) for g in grid)
    bumps = _smooth_field(rng, shape, spacing, 25.0)
    params: dict = {"bend_mm": bend}
    painter = _Painter(shape)
    extent = [(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True)]

    # Body: an elliptic cylinder with a superelliptic, slightly flattened posterior section.
    half_width = min(rng.uniform(105.0, 130.0), 0.92 * extent[0])
    half_depth = min(rng.uniform(78.0, 102.0) * half_width / 118.0, 0.92 * extent[1])
    centre_x, centre_y = rng.normal(0.0, 4.0), rng.normal(0.0, 4.0)
    taper = 1.0 + rng.uniform(-0.08, 0.08) * z / max(extent[2], 1.0)
    exponent = rng.uniform(2.2, 2.8)
    fat_mm, wall_mm = rng.uniform(8.0, 30.0), rng.uniform(6.0, 12.0)

    def section(inset: float) -> np.ndarray:
        depth = np.where(y > centre_y, 0.92 * half_depth, half_depth) - inset
        # Small fields of view can inset past the centre: keep the semi-axes positive.
        semi_x = np.maximum(half_width * taper - inset, 1.0)
        semi_y = np.maximum(depth * taper, 1.0)
        return ((np.abs(x - centre_x) / semi_x) ** exponent
                + (np.abs(y - centre_y) / semi_y) ** exponent + 0.03 * bumps)

    body = section(0.0) < 1
    inside_fat = section(fat_mm) < 1
    cavity = section(fat_mm + wall_mm) < 1
    painter.paint(body, "body", "fat")
    painter.paint(inside_fat, "body", "muscle")
    # Inside the wall: bowel loops and mesenteric fat, a few pockets of gas.
    loops = _smooth_field(rng, shape, spacing, 18.0)
    gas = _smooth_field(rng, shape, spacing, 12.0)
    bowel_fraction = rng.uniform(0.4, 0.65)
    threshold = np.quantile(loops[cavity], 1 - bowel_fraction) if cavity.any() else 0.0
    painter.paint(cavity & (loops <= threshold), "body", "fat")
    painter.paint(cavity & (loops > threshold), "body", "bowel")
    painter.paint(cavity & (loops > threshold) & (gas > 2.0), "body", "gas")
    params.update(half_width_mm=half_width, half_depth_mm=half_depth, fat_mm=fat_mm,
                  bowel_fraction=bowel_fraction)

    # Spine: vertebral bodies stacked along z, with arches and processes.
    cavity_depth = half_depth - fat_mm - wall_mm
    spine_x = centre_x + rng.normal(0.0, 3.0)
    spine_y = centre_y + half_depth * rng.uniform(0.12, 0.25)
    body_rx, body_ry = rng.uniform(19.0, 25.0), rng.uniform(13.0, 17.0)
    height, disc = rng.uniform(22.0, 28.0), rng.uniform(6.0, 10.0)
    canal_y = spine_y + body_ry + 8.0
    start = -extent[2] - rng.uniform(0.0, height + disc)
    level_z = np.arange(start, extent[2] + height + disc, height + disc)
    # Paraspinal muscles and psoas first: bone is painted over them.
    for side in (-1, 1):
        muscle = _superellipsoid((x, y, z), (spine_x + side * rng.uniform(26.0, 34.0),
                                             canal_y + rng.uniform(20.0, 28.0), 0.0),
                                 (rng.uniform(22.0, 28.0), rng.uniform(20.0, 26.0), 1e4), 2.4)
        painter.paint((muscle + 0.1 * bumps < 1) & inside_fat, "body", "muscle")
        psoas_top = rng.uniform(-20.0, 20.0)
        radius = np.clip((psoas_top - z) / 50.0, 0.0, 1.0) * rng.uniform(12.0, 18.0)
        psoas = ((x - spine_x - side * (body_rx + 10.0)) ** 2 + (y - spine_y + 2.0) ** 2
                 < radius**2)
        painter.paint(psoas & inside_fat, "body", "muscle")
    for centre_z in level_z:
        # Only the slab that can hold this vertebra, bending included, is evaluated.
        near_k = np.flatnonzero(np.abs(axes[2] - centre_z) < height / 2 + 40.0)
        if near_k.size == 0:
            continue
        region = (slice(None), slice(None), slice(near_k[0], near_k[-1] + 1))
        xs, ys, zs = x[region], y[region], z[region]
        tilt = rng.normal(0.0, 0.05)
        vertebra = _superellipsoid((xs, ys, zs), (spine_x, spine_y, centre_z),
                                   (body_rx, body_ry, height / 2), 3.0, (0.0, 0.0, tilt)) < 1
        near = np.abs(zs - centre_z) < height / 2
        ring = (xs - spine_x) ** 2 + (ys - canal_y) ** 2
        arch = near & (ring < 15.0**2) & (ring >= 8.5**2) & (ys > spine_y)
        spinous = ((np.abs(xs - spine_x) < 4.0) & (ys > canal_y) & (ys < canal_y + 42.0)
                   & (np.abs(zs - centre_z + 0.2 * (ys - canal_y)) < height / 2 - 4.0))
        transverse = ((np.abs(xs - spine_x) < 38.0) & (np.abs(ys - canal_y + 2.0) < 5.0)
                      & (np.abs(zs - centre_z) < height / 2 - 8.0))
        painter.paint(vertebra | arch | spinous | transverse, "vertebrae", "vertebrae", region)
        painter.paint(near & (ring < 8.5**2), "body", "muscle", region)
    params.update(vertebral_levels=len(level_z))

    # Liver: right upper quadrant, a big superellipsoid with a left lobe over the midline.
    cavity_width = half_width - fat_mm - wall_mm
    liver_centre = (centre_x - cavity_width * rng.uniform(0.4, 0.55),
                    centre_y - rng.uniform(-5.0, 10.0), rng.uniform(50.0, 80.0))
    liver_semi = (rng.uniform(50.0, 65.0), rng.uniform(55.0, 70.0), rng.uniform(60.0, 80.0))
    liver = _superellipsoid((x, y, z), liver_centre, liver_semi, rng.uniform(2.0, 2.6),
                            (rng.normal(0.0, 0.2), rng.normal(0.0, 0.1), 0.0))
    left_lobe = _superellipsoid((x, y, z), (liver_centre[0] + liver_semi[0] * 0.9,
                                            centre_y - cavity_depth * 0.5,
                                            liver_centre[2] + 10.0),
                                (rng.uniform(35.0, 55.0), rng.uniform(18.0, 28.0),
                                 rng.uniform(30.0, 45.0)), 2.0, (rng.normal(0.0, 0.2), 0, 0))
    liver_mask = (np.minimum(liver, left_lobe) + 0.15 * bumps < 1) & cavity
    painter.paint(liver_mask, "liver", "liver")

    # Spleen: left, posterior, upper; long axis along the ribs.
    spleen = _superellipsoid((x, y, z), (centre_x + cavity_width * rng.uniform(0.6, 0.75),
                                         centre_y + cavity_depth * rng.uniform(0.2, 0.45),
                                         rng.uniform(30.0, 60.0)),
                             (rng.uniform(20.0, 30.0), rng.uniform(45.0, 60.0),
                              rng.uniform(40.0, 55.0)), rng.uniform(2.0, 2.5),
                             (rng.uniform(-0.9, -0.5), 0.0, 0.0))
    painter.paint((spleen - 0.15 * bumps < 1) & cavity, "spleen", "spleen")

    # Kidneys either side of the spine, the right one lower; upper poles tilted inward, and a
    # hilum (renal sinus fat) cut out of the medial side.
    left_z = rng.uniform(-15.0, 15.0)
    for side, name, centre_z in ((-1, "kidney_right", left_z - rng.uniform(5.0, 20.0)),
                                 (1, "kidney_left", left_z)):
        centre = (spine_x + side * rng.uniform(55.0, 72.0), spine_y + rng.uniform(0.0, 15.0),
                  centre_z)
        semi = (rng.uniform(22.0, 28.0), rng.uniform(18.0, 24.0), rng.uniform(45.0, 58.0))
        angles = (side * rng.uniform(0.3, 0.7), side * rng.uniform(-0.35, -0.15), 0.0)
        kidney = _superellipsoid((x, y, z), centre, semi, 2.0, angles) + 0.1 * bumps < 1
        hilum = _superellipsoid((x, y, z), (centre[0] - side * semi[0] * 0.9, centre[1] - 4.0,
                                            centre[2]), (semi[0] * 0.45, 9.0, 16.0), 2.0) < 1
        painter.paint(kidney & ~hilum & inside_fat, name, "kidney")
        params[f"{name}_centre_mm"] = [float(c) for c in centre]

    # Great vessels in front of the spine: aorta left of midline, IVC to the right.
    aorta_radius = rng.uniform(9.0, 13.0)
    aorta = ((x - spine_x - rng.uniform(8.0, 18.0)) ** 2
             + (y - spine_y + body_ry + aorta_radius + rng.uniform(2.0, 6.0)) ** 2
             < aorta_radius**2)
    ivc_rx, ivc_ry = rng.uniform(10.0, 14.0), rng.uniform(7.0, 10.0)
    ivc = (((x - spine_x + rng.uniform(20.0, 28.0)) / ivc_rx) ** 2
           + ((y - spine_y + body_ry + ivc_ry + rng.uniform(0.0, 8.0)) / ivc_ry) ** 2 < 1)
    painter.paint(ivc & inside_fat, "inferior_vena_cava", "inferior_vena_cava")
    painter.paint(aorta & inside_fat, "aorta", "aorta")
    params["aorta_radius_mm"] = aorta_radius
    return painter, params


def generate_case(index: int, config: PhantomConfig | None = None,
                  calibration: dict | None = None) -> PhantomCase:
    """Synthetic case ``index`` of the cohort ``config``: image, labels, tissues, parameters."""
    config = config or PhantomConfig()
    calibration = calibration or load_calibration()
    if index < 0:
        raise ValueError(f"case index must be >= 0, got {index}")
    rng = case_rng(config.seed, index)
    painter, params = _anatomy(rng, config)
    # Vertebrae: a dense border (cortex) around a cancellous interior, measured like that.
    bone = painter.tissues == _T["vertebrae"]
    cortex = bone & ~erode_mm(bone, config.spacing, TISSUE_EROSION_MM)
    painter.tissues[cortex] = _T["cortex"]

    model = calibration["model"]
    measured = dict(model["tissues"])
    measured["gas"] = measured["air"]
    measured["cortex"] = {"mean_hu": model["vertebrae_border_mean_hu"],
                          "std_hu": measured["vertebrae"]["std_hu"]}
    noise = _noise_model(calibration, config.spacing)
    means = np.zeros(len(TISSUES), dtype=np.float32)
    texture = np.zeros(len(TISSUES), dtype=np.float32)
    means_hu: dict[str, float] = {}
    enhancement = ENHANCEMENT_HU[config.phase]
    for code, tissue in enumerate(TISSUES):
        jitter = 0.0 if tissue in ("air", "gas") else rng.normal(0.0, config.mean_jitter_hu)
        means[code] = measured[tissue]["mean_hu"] + enhancement.get(tissue, 0.0) + jitter
        means_hu[tissue] = float(means[code])
        texture[code] = np.sqrt(max(measured[tissue]["std_hu"] ** 2 - noise["std_hu"] ** 2, 0.0))

    clean = means[painter.tissues]
    clean = ndimage.gaussian_filter(clean, [PARTIAL_VOLUME_SIGMA_MM / s for s in config.spacing])
    texture_field = correlated_noise(rng, config.shape,
                                     tuple(TEXTURE_SIGMA_MM / s for s in config.spacing), 1.0)
    texture_field /= max(float(texture_field.std()), 1e-6)
    noise_field = correlated_noise(rng, config.shape,
                                   tuple(s / d for s, d in zip(noise["sigma_mm"], config.spacing,
                                                               strict=True)),
                                   noise["std_hu"])
    image = clean + texture[painter.tissues] * texture_field + noise_field
    image = np.clip(np.rint(image), *HU_RANGE).astype(np.int16)

    voxel_ml = float(np.prod(config.spacing)) / 1000.0
    counts = np.bincount(painter.labels.ravel(), minlength=len(LABELS))
    params["volumes_ml"] = {name: round(float(counts[label]) * voxel_ml, 1)
                            for name, label in LABELS.items() if label > 0}
    params["means_hu"] = {name: round(value, 1) for name, value in means_hu.items()}
    params["noise_model"] = noise["source"]
    params["phase"] = config.phase
    affine = config.affine
    return PhantomCase(image=Volume(image, affine, modality="CT"),
                       labels=Volume(painter.labels, affine.copy()),
                       tissues=painter.tissues, means_hu=means_hu, parameters=params)


def _calibration_digest(path: Path = CALIBRATION_FILE) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _generation(config: PhantomConfig) -> dict:
    """What decides every case's bytes: equal generations give identical files."""
    return {"seed": config.seed, "shape": list(config.shape), "spacing": list(config.spacing),
            "mean_jitter_hu": config.mean_jitter_hu, "phase": config.phase,
            "medlossy_version": __version__,
            "calibration_sha256": _calibration_digest()}


def dataset_name(dataset_id: int) -> str:
    if not 0 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be 0..999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_Phantom"


def case_name(index: int) -> str:
    return f"phantom_{index:03d}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_phantom_dataset(out: str | Path, cases: int = 24, config: PhantomConfig | None = None,
                          dataset_id: int = DEFAULT_DATASET_ID,
                          show_progress: bool = False) -> Path:
    """Write (or keep) the nnU-Net raw dataset ``out/DatasetXXX_Phantom``; returns its folder.

    The folder appears whole or not at all. If it already holds this exact cohort it is left
    untouched; if it holds the same generation with other case counts, the cases it has are
    copied instead of drawn again (they would be the same bytes).
    """
    config = config or PhantomConfig()
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    folder = Path(out) / dataset_name(dataset_id)
    generation = _generation(config)
    existing = _read_json(folder / "dataset.json") or {}
    previous = existing.get("phantom", {})
    if (folder.exists() or folder.is_symlink()) and not previous:
        # replaced whole below: only a phantom cohort (its dataset.json says so) may be
        raise MedlossyError(folder, "exists and is not a phantom cohort medlossy wrote; "
                                    "choose another --out or --id")
    reusable = previous.get("generation") == generation
    if reusable and existing.get("numTraining") == cases:
        return folder
    calibration = load_calibration()
    records = []
    show_progress = on_terminal(show_progress)  # a carriage-return counter: terminals only
    with atomic_output(folder) as scratch:
        (scratch / "imagesTr").mkdir(parents=True)
        (scratch / "labelsTr").mkdir()
        for index in range(cases):
            name = case_name(index)
            image_file = Path("imagesTr") / f"{name}_0000.nii.gz"
            label_file = Path("labelsTr") / f"{name}.nii.gz"
            old = {r["case"]: r for r in previous.get("cases", [])} if reusable else {}
            if (name in old and (folder / image_file).is_file()
                    and (folder / label_file).is_file()):
                shutil.copyfile(folder / image_file, scratch / image_file)
                shutil.copyfile(folder / label_file, scratch / label_file)
                records.append(old[name])
            else:
                case = generate_case(index, config, calibration)
                write_nifti(case.image, scratch / image_file)
                write_nifti(case.labels, scratch / label_file)
                records.append({"case": name, **case.parameters})
            if show_progress:
                print(f"\rphantom case {index + 1}/{cases}", end="", file=sys.stderr)
        if show_progress:
            print(file=sys.stderr)
        _write_dataset_json(scratch, dataset_id, cases, generation, records, calibration)
    return folder


def _write_dataset_json(folder: Path, dataset_id: int, cases: int, generation: dict,
                        records: list[dict], calibration: dict) -> None:
    source = calibration["model"]["source"]
    description = (
        f"SYNTHETIC phantom cohort generated by medlossy {generation['medlossy_version']} "
        f"(seed {generation['seed']}, {cases} cases, shape {generation['shape']}, spacing "
        f"{generation['spacing']} mm, {generation['phase']} phase). Not patients: organs are "
        f"deformed superellipsoids with exact labels; unenhanced HU means, tissue spread and "
        f"noise calibrated on real {source} of the TotalSegmentator 2.18.0 source archive "
        f"(medlossy/data/phantom_calibration.json, "
        f"sha256 {generation['calibration_sha256']}...); contrast enhancement, if any, from "
        f"typical values (medlossy.data.phantom.ENHANCEMENT_HU).")
    document = {
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": dataset_name(dataset_id).split("_", 1)[1],
        "description": description,
        "synthetic": True,
        "licence": "Apache-2.0",
        "reference": "medlossy.data.phantom",
        "phantom": {"generation": generation, "orientation": "LPS (RAS+ affine diag(-sx, -sy, "
                                                             "sz))",
                    "hu_range": list(HU_RANGE), "cases": records},
    }
    (folder / "dataset.json").write_text(json.dumps(document, indent=2) + "\n")
