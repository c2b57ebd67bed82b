"""Decode (and HTJ2K-encode) slices on the GPU with nvImageCodec, straight into torch tensors.

Data flow: codestreams (bytes) -> one batched nvImageCodec decode on the GPU -> CUDA images
shared with torch through ``__cuda_array_interface__`` (no host copy) -> an (N, rows, columns)
tensor on the GPU. Where nvImageCodec or CUDA is missing, the same call decodes on the CPU
(imagecodecs) and says so once on stderr; the GPU is never required.

nvImageCodec is the optional extra ``medlossy[gpu]`` (nvidia-nvimgcodec-cu13 with the
nvjpeg2k plugin). The checks that need a GPU are in ``bench/gpu_check.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import imagecodecs
import numpy as np
import torch

from medlossy.gpu_libraries import NVIMGCODEC_NOTES, import_nvimgcodec

nvimgcodec = import_nvimgcodec()  # optional: the CUDA wheels exist only for GPU machines

_NOTICE = "medlossy: note: no nvImageCodec GPU decoder ({why}); decoding on the CPU"


def gpu_unavailable_reason() -> str | None:
    """Why the GPU path cannot run, or None when it can."""
    if nvimgcodec is None:
        return "pip install 'medlossy[gpu]' on a CUDA machine"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return None


class GpuSliceCodec:
    """Batched JPEG 2000 / HTJ2K decode into torch tensors, on the GPU when one is usable."""

    def __init__(self, device: str = "auto") -> None:
        reason = gpu_unavailable_reason()
        if device == "cuda" and reason is not None:
            said = f" (nvImageCodec: {NVIMGCODEC_NOTES[0]})" if NVIMGCODEC_NOTES else ""
            raise RuntimeError(f"GPU decoding asked for, but {reason}{said}")
        self.on_gpu = device != "cpu" and reason is None
        if self.on_gpu:
            self._decoder = nvimgcodec.Decoder()
            self._params = nvimgcodec.DecodeParams(allow_any_depth=True,
                                                   color_spec=nvimgcodec.ColorSpec.UNCHANGED)
        elif device == "auto":
            print(_NOTICE.format(why=reason), file=sys.stderr)
        self.device = torch.device("cuda" if self.on_gpu else "cpu")

    def decode(self, streams: Sequence[bytes], dtype: np.dtype | str) -> torch.Tensor:
        """(N, rows, columns) codes of ``dtype`` (the store's code dtype) on ``self.device``.

        The GPU decoder returns unsigned samples for 8- and 16-bit data; signed codes are
        reinterpreted, as OpenJPEG does with the codestream's sign flag.
        """
        if not self.on_gpu:
            # the CPU fallback reads any JPEG 2000 / HTJ2K codestream (Part 1 or Part 15)
            planes = [imagecodecs.jpeg2k_decode(s) for s in streams]
            return torch.from_numpy(np.stack(planes).astype(dtype, copy=False))
        images = self._decoder.decode([nvimgcodec.CodeStream(bytes(s)) for s in streams],
                                      params=self._params)
        planes = [torch.as_tensor(image, device=self.device).reshape(image.shape[:2])
                  for image in images]
        stacked = torch.stack(planes)
        signed = {torch.uint16: torch.int16, torch.uint8: torch.int8}
        if np.dtype(dtype).kind == "i" and stacked.dtype in signed:
            stacked = stacked.view(signed[stacked.dtype])
        return stacked

    def encode_htj2k(self, planes: torch.Tensor, quantisation_step: float) -> list[bytes]:
        """HTJ2K codestreams (Part 15) of uint16/int16 planes, on the GPU when available."""
        if not self.on_gpu:
            return [imagecodecs.htj2k_encode(np.ascontiguousarray(plane), level=quantisation_step)
                    for plane in planes.cpu().numpy()]
        params = nvimgcodec.EncodeParams(
            quality_type=nvimgcodec.QualityType.QUANTIZATION_STEP,
            quality_value=quantisation_step,
            jpeg2k_encode_params=nvimgcodec.Jpeg2kEncodeParams(ht=True))
        images = [nvimgcodec.as_image(plane.contiguous()) for plane in planes]
        return [bytes(stream) for stream in
                nvimgcodec.Encoder().encode(images, codec="jpeg2k", params=params)]
