"""Run by .ci/fresh_install.sh inside the fresh virtual environment: nnU-Net v2 works after
the README's install commands alone: torch kept, no CUDA wheel beside a CPU torch, nnU-Net's
entry points and medlossy's trainer import, and the plain U-Net nnU-Net plans runs a step.
(Planning and training run in `make test`'s nnU-Net tests, from the same extra.)"""

from __future__ import annotations

import sys
from importlib import metadata

import torch

from medlossy.nnunet import commands

TORCH = "2.13.0"


def unet_step() -> None:
    """One training step of a small 3D PlainConvUNet, the network of nnU-Net's plans."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    network = PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=(8, 16, 32),
                            conv_op=torch.nn.Conv3d, kernel_sizes=3, strides=(1, 2, 2),
                            n_conv_per_stage=2, num_classes=2, n_conv_per_stage_decoder=(2, 2),
                            conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                            norm_op_kwargs={"eps": 1e-5, "affine": True},
                            nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    output = network(torch.randn(2, 1, 16, 16, 16))
    torch.nn.functional.cross_entropy(output, torch.randint(0, 2, (2, 16, 16, 16))).backward()


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

    unet_step()
    for problem in problems:
        print(f"fresh install: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
