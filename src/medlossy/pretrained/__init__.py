"""Pretrained segmentation networks on every ratio of a sweep.

Plug-ins of one interface (``base``): ``deepbet`` and ``hd-bet`` (brain extraction, optional
extras) and any trained nnU-Net v2 model folder; ``agreement`` compares each model's
prediction at every ratio with its own prediction on the lossless (x1) images, and with the
labels where a sweep has them. ``swin_unetr``: a MONAI Swin UNETR checkpoint with the BTCV
setup (``evaluate`` with ``--arch``). Weights are never downloaded: the code loads files.
"""

from medlossy.pretrained import deepbet, hdbet, nnunet_folder
from medlossy.pretrained.base import InputSpec, PretrainedModel, get_model, model_names

__all__ = ["InputSpec", "PretrainedModel", "deepbet", "get_model", "hdbet", "model_names",
           "nnunet_folder"]
