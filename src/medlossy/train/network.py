"""The built-in network: MONAI's DynUNet shaped like nnU-Net's 3D U-Net."""

from __future__ import annotations

from typing import Any

from monai.networks.nets import DynUNet
from torch import nn


def network_arguments(in_channels: int, out_channels: int, filters: tuple[int, ...],
                      ) -> dict[str, Any]:
    """DynUNet keyword arguments: 3x3x3 convolutions, stride-2 downsampling per stage."""
    stages = len(filters)
    strides = [1] + [2] * (stages - 1)
    return {
        "spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels,
        "kernel_size": [3] * stages, "strides": strides, "upsample_kernel_size": strides[1:],
        "filters": list(filters), "norm_name": "instance", "deep_supervision": False,
        "res_block": False,
    }


def build_network(arguments: dict[str, Any]) -> nn.Module:
    return DynUNet(**arguments)
