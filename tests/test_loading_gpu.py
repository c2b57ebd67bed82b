"""The GPU codec path on a machine without nvImageCodec/CUDA: a CPU fallback, said once."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import torch

from medlossy.loading import gpu


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(gpu, "nvimgcodec", None)


def test_auto_falls_back_to_the_cpu_with_a_one_line_notice(no_gpu, ct_b_crop_array, capsys):
    codec = gpu.GpuSliceCodec("auto")
    notice = capsys.readouterr().err
    assert not codec.on_gpu and codec.device == torch.device("cpu")
    assert len(notice.strip().splitlines()) == 1 and "decoding on the CPU" in notice
    planes = np.moveaxis(ct_b_crop_array[:, :, :3], 2, 0).astype(np.int16)
    streams = [imagecodecs.jpeg2k_encode(p, level=50, reversible=False) for p in planes]
    decoded = codec.decode(streams, "int16")
    assert decoded.dtype == torch.int16 and decoded.shape == planes.shape
    for stream, plane in zip(streams, decoded, strict=True):
        np.testing.assert_array_equal(plane.numpy(), imagecodecs.jpeg2k_decode(stream))


def test_cuda_asked_for_without_a_gpu_is_refused(no_gpu):
    with pytest.raises(RuntimeError, match="medlossy\\[gpu\\]"):
        gpu.GpuSliceCodec("cuda")


def test_htj2k_encode_falls_back_and_decodes_within_the_quantisation(no_gpu, ct_b_crop_array):
    codec = gpu.GpuSliceCodec("cpu")
    planes = torch.from_numpy(np.moveaxis(ct_b_crop_array[:, :, :2], 2, 0).astype(np.int16))
    streams = codec.encode_htj2k(planes, quantisation_step=0.0005)
    decoded = codec.decode(streams, "int16")
    error = (decoded.int() - planes.int()).abs()
    assert 0 < error.float().mean() < 20  # lossy, and close (about 30 codes per step unit)
    assert len(b"".join(streams)) < planes.numpy().nbytes
