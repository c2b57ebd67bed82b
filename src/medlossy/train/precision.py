"""Mixed precision: bfloat16 where the device computes it natively, float32 elsewhere."""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively: every CUDA GPU medlossy
    trains on, and CPUs with AMX tiles or AVX-512 BF16 (oneDNN's bfloat16 kernels; elsewhere
    bfloat16 is emulated and slower than float32). PyTorch has no public test for the CPU
    instructions; its private ones are looked up so that a release without them means no."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return any(getattr(torch.cpu, name, lambda: False)()
               for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def uses_bfloat16(device: torch.device, precision: str) -> bool:
    """Whether to run under bfloat16 autocast: ``precision`` "bf16", "fp32", or "auto" (the
    device's native choice, :func:`native_bfloat16`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and native_bfloat16(device))


def arithmetic(device: str, precision: str) -> str:
    """"bfloat16" or "float32": what ``precision`` means for training on ``device`` ("auto":
    a GPU when there is one) on this machine; part of a model's recipe, so that a model
    trained one way is never reused or resumed as the other."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "bfloat16" if uses_bfloat16(torch.device(device), precision) else "float32"
