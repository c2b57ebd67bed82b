"""Run by .ci/fresh_install.sh inside the fresh virtual environment: nnU-Net v2 works after
the README's install commands alone (torch kept, no CUDA wheel, nnU-Net plans a dataset)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medlossy.nnunet import commands
from medlossy.nnunet.commands import NnunetFolders

TORCH = "2.13.0"


def write_dataset(root: Path, cases: int = 3, size: int = 24) -> Path:
    """A raw nnU-Net dataset of noisy cubes, each with one bright ball (label 1)."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    distance = np.sqrt(((np.indices((size,) * 3) - size / 2) ** 2).sum(axis=0))
    for index in range(cases):
        label = (distance <= size * rng.uniform(0.2, 0.3)).astype(np.uint8)
        image = (rng.normal(0, 25, label.shape) + 200 * label - 50).astype(np.int16)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"c{index}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"c{index}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "ball": 1},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


def main() -> int:
    problems = []
    if not torch.__version__.startswith(TORCH):
        problems.append(f"torch is {torch.__version__}, not {TORCH}")
    cuda = sorted(d.metadata["Name"] for d in metadata.distributions()
                  if d.metadata["Name"].lower().startswith(("nvidia-", "triton")))
    if not torch.cuda.is_available() and cuda:
        problems.append(f"CUDA wheels installed beside the CPU torch: {', '.join(cuda)}")
    commands.require_nnunet()
    import medlossy.nnunet.trainer  # noqa: F401  (nnU-Net's trainer, without timm)

    with tempfile.TemporaryDirectory(prefix="medlossy-nnunet-smoke-") as scratch:
        folders = NnunetFolders(Path(scratch) / "run").create()
        folders.link_dataset(write_dataset(Path(scratch) / "Dataset990_Ball"))
        started = time.perf_counter()
        commands.plan_and_preprocess(folders, 990, "3d_fullres", processes=1, quiet=True)
        planned = json.loads(folders.plans("Dataset990_Ball").read_text())
        if "3d_fullres" not in planned["configurations"]:
            problems.append("nnU-Net's plans have no 3d_fullres configuration")
        print(f"nnU-Net planned and preprocessed 3 cases in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    for problem in problems:
        print(f"fresh install: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
