"""deepbet (Fisch et al., Comput. Biol. Med. 2024; MIT): brain extraction for adult T1 MR.

Installed with ``pip install 'medlossy[deepbet]'`` (deepbet 1.0.2, whose 10 MB wheel holds
both TorchScript networks, ``model.pt`` and ``bbox_model.pt``: nothing is downloaded at run
time). deepbet reorients to RAS itself, finds the brain's bounding box on a 128^3 copy,
segments the box at 256^3 and keeps the largest component with its holes filled; the mask
comes back on the image's own grid. Its defaults are used (threshold 0.5, no dilation).
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
class DeepBet(PretrainedModel):
    name = "deepbet"
    task = "brain extraction"
    requirement = "pip install 'medlossy[deepbet]' (deepbet 1.0.2, MIT)"
    classes = ("brain",)
    # Trained on 1 mm adult T1; it resizes the brain's box to 256^3, so coarser voxels run
    # but lose detail: 3 mm is the coarsest accepted.
    expects = InputSpec("MR", ("T1",), "any (deepbet reorients to RAS)", (0.5, 3.0), "head")

    def __init__(self, *, device: str = "auto") -> None:
        bet = import_optional("deepbet", self.name, "deepbet")
        cpu = torch_device(device).type == "cpu"
        with contextlib.redirect_stdout(sys.stderr):
            self._extractor = bet.BrainExtraction(no_gpu=cpu)

    def predict(self, volume: Volume) -> np.ndarray:
        image = nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), volume.affine)
        with contextlib.redirect_stdout(sys.stderr):
            _, mask, _ = self._extractor.run(image)
        return np.asarray(mask.dataobj).astype(np.uint8)
