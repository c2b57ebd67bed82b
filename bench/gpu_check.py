"""GPU check (prepared; needs CUDA, PyTorch with CUDA and `pip install 'medlossy[gpu]'`).

Usage (writes bench/results/gpu_check.{json,md}; about 3 minutes on one GPU):
    .venv/bin/python bench/gpu_check.py [--store DIR.zarr] [--seconds 30] [--workers 8]

Data flow: a JPEG 2000 store at x20 (default: CT C's slices interpolated to 200 slices, built by
bench/loader.py's helper) ->
  1. GPU decode: every slice through nvImageCodec in batches, compared with the CPU decode
     (imagecodecs) slice by slice (must agree within 1 grey level), Mvox/s of both;
  2. HTJ2K encode on the GPU at a quantisation step, decoded back on the CPU: Mvox/s and PSNR;
  3. the loader feeding a real training loop: an nnU-Net-like DynUNet (6 stages, 32-320
     features, bf16, batch 2, 64x160x160 patches) trained for ``--seconds`` from
     StorePatchDataset through a DataLoader with ``--workers`` processes; reports the GPU's
     patch consumption (Mvox/s) and the share of time the loop waited for data.
"""

from __future__ import annotations

import argparse
import math
import time

import _common
import numpy as np
import torch

from medlossy.codecs.ht_profile import gpu_profile_problem
from medlossy.loading import StorePatchDataset
from medlossy.loading.gpu import GpuSliceCodec, gpu_unavailable_reason
from medlossy.store import SliceStore

PATCH = (64, 160, 160)


def _default_store() -> str:
    import loader

    from medlossy.io import read_volume

    volume = read_volume(loader.memory.synthetic_ct(200), "CT")
    loader.OUT.mkdir(parents=True, exist_ok=True)
    return str(loader.store("CT C x200", volume, "jpeg2k", None, loader.OUT))


def check_decode(store_path: str) -> dict:
    store = SliceStore(store_path)
    streams = [store.codestream(i) for i in range(store.slices)]
    code_dtype = store.mapping.code_dtype
    gpu, cpu = GpuSliceCodec("cuda"), GpuSliceCodec("cpu")
    voxels = store.slices * math.prod(store.slice_shape)
    started = time.perf_counter()
    reference = cpu.decode(streams, code_dtype)
    cpu_seconds = time.perf_counter() - started
    gpu.decode(streams[:8], code_dtype)  # warm-up: plugin and memory pools
    torch.cuda.synchronize()
    started = time.perf_counter()
    decoded = gpu.decode(streams, code_dtype)
    torch.cuda.synchronize()
    gpu_seconds = time.perf_counter() - started
    difference = (decoded.cpu().int() - reference.int()).abs()
    return {"slices": store.slices, "max_abs_difference": int(difference.max()),
            "within_one_grey_level": bool(difference.max() <= 1),
            "cpu_mvox_per_s_one_thread": round(voxels / cpu_seconds / 1e6, 1),
            "gpu_mvox_per_s": round(voxels / gpu_seconds / 1e6, 1)}


def check_htj2k_encode(store_path: str) -> dict:
    import imagecodecs

    store = SliceStore(store_path)
    gpu = GpuSliceCodec("cuda")
    planes = GpuSliceCodec("cpu").decode([store.codestream(i) for i in range(store.slices)],
                                         store.mapping.code_dtype).cuda()
    gpu.encode_htj2k(planes[:4], 0.002)  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    streams = gpu.encode_htj2k(planes, 0.002)
    seconds = time.perf_counter() - started
    back = np.stack([imagecodecs.jpeg2k_decode(s) for s in streams])
    reference = planes.cpu().numpy()
    problems = {gpu_profile_problem(bytes(s)) for s in streams}
    return {"gpu_encode_mvox_per_s": round(reference.size / seconds / 1e6, 1),
            "ratio": round(reference.nbytes / sum(map(len, streams)), 2),
            "psnr_db": round(_common.psnr(reference, back), 2),
            # what GPU decoders need: HT code-blocks only, one HT set (CAP and COD markers)
            "gpu_decodable_profile": sorted(p or "HT only, one HT set" for p in problems)}


def check_training(store_path: str, seconds: float, workers: int) -> dict:
    from monai.networks.nets import DynUNet

    network = DynUNet(3, 1, 2, kernel_size=[3] * 6, strides=[1] + [2] * 5,
                      upsample_kernel_size=[2] * 5, filters=[32, 64, 128, 256, 320, 320],
                      res_block=False).cuda()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    dataset = StorePatchDataset(store_path, PATCH, samples=10**9, threads=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers,
                                         pin_memory=True, prefetch_factor=4,
                                         persistent_workers=True)
    iterator = iter(loader)
    next(iterator)  # workers started
    waited = computed = 0.0
    iterations = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        before = time.perf_counter()
        batch = next(iterator)
        images = batch["image"].cuda(non_blocking=True)
        images = (images - images.mean()) / (images.std() + 1e-6)
        target = (images > 1.0).float()
        middle = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                network(images)[:, 1:], target)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        waited += middle - before
        computed += time.perf_counter() - middle
        iterations += 1
    total = time.perf_counter() - started
    return {"iterations": iterations, "seconds": round(total, 2), "workers": workers,
            "patch_mvox_per_s": round(iterations * 2 * math.prod(PATCH) / total / 1e6, 2),
            "data_wait_share": round(waited / total, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=8)
    arguments = parser.parse_args()
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise SystemExit(f"gpu_check: cannot run: {reason}")
    store = arguments.store or _default_store()
    if SliceStore(store).grid.tiled:
        parser.error(f"{store}: a tiled store; the GPU checks decode whole slices")
    document = {"machine": _common.machine(), "gpu": torch.cuda.get_device_name(0),
                "store": store, "decode": check_decode(store),
                "htj2k_encode": check_htj2k_encode(store),
                "training": check_training(store, arguments.seconds, arguments.workers)}
    rows = [[document["gpu"], document["decode"]["gpu_mvox_per_s"],
             document["decode"]["cpu_mvox_per_s_one_thread"],
             document["decode"]["max_abs_difference"],
             document["htj2k_encode"]["gpu_encode_mvox_per_s"],
             document["training"]["patch_mvox_per_s"], document["training"]["data_wait_share"]]]
    _common.save("gpu_check", document, _common.table(
        ["GPU", "J2K decode GPU Mvox/s", "CPU (1 thread)", "max |GPU-CPU|",
         "HTJ2K encode GPU Mvox/s", "training patches Mvox/s", "share waiting for data"],
        rows))


if __name__ == "__main__":
    main()
