"""The GPU codec path on a machine without nvImageCodec/CUDA: a CPU fallback, said once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_nvimgcodec_loading_noise_stays_off_stderr(tmp_path):
    # nvImageCodec's native extensions print "Failed to load nvjpeg library!..." straight to
    # file descriptor 2 when imported without CUDA libraries; MONAI imports it too, so every
    # study process printed it. A stand-in that writes the same way at import:
    package = tmp_path / "nvidia" / "nvimgcodec"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'Failed to load nvjpeg library! Please install CUDA toolkit\\n')\n"
        "os.write(2, b'\\x1b[0;31m[ERROR] \\x1b[0m[nvjpeg-ext] Failed to load nvJPEG\\n')\n"
        "os.write(2, b'something else entirely\\n')\n")
    source = Path(gpu.__file__).parents[2]
    script = ("import medlossy\n"
              "from nvidia import nvimgcodec\n"  # as MONAI does later: loaded, silent
              "from medlossy.loading import gpu\n"
              "assert gpu.nvimgcodec is nvimgcodec\n"
              "print(gpu.NVIMGCODEC_NOTES)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{source}"},
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Failed to load" not in run.stderr and "[ERROR]" not in run.stderr
    assert "something else entirely" in run.stderr  # what is not its noise passes
    assert "Failed to load nvjpeg library!" in run.stdout  # kept for the 'cuda' refusal
