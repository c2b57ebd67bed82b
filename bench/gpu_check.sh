#!/usr/bin/env bash
# GPU check (under 8 minutes on one H100): the built-in backend for a few hundred iterations
# and nnU-Net 3d_fullres for one short epoch on a SYNTHETIC phantom cohort, each followed by
# prediction; prints it/s, Mvox/s and peak GPU memory, and writes bench/results/gpu_check.md
# (gpu_check_cpu.md for a CPU smoke run). Predict Mvox/s counts the voxels of the predicted
# label maps on the image grid, per second of wall time including start-up.
# Needs the project's .venv (make install; the device machine has no network) and a GPU.
#
#   bash bench/gpu_check.sh                    # on the GPU machine
#   DEVICE=cpu SMALL=1 bash bench/gpu_check.sh # the same steps on CPU, tiny (a smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
medlossy=.venv/bin/medlossy
device=${DEVICE:-cuda}
work=${WORK:-bench/out/gpu_check}
if [ "${SMALL:-0}" = 1 ]; then
  shape=48,48,32; spacing=4; cases=4; builtin_iterations=4; nnunet_iterations=2; patch=32,32,32
else
  # 8 cases of 256x256x160 at 1.5 mm: nnU-Net plans a large 3d_fullres patch for them.
  shape=256,256,160; spacing=1.5; cases=8; builtin_iterations=300; nnunet_iterations=100
  patch=96,96,96
fi
rm -rf "$work"; mkdir -p "$work" bench/results
started=$(date +%s)
{
  echo "card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo none)"
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} | tee "$work/machine.txt"

$medlossy data phantom --cases "$cases" --shape "$shape" --spacing "$spacing" \
  --out "$work/data" --quiet >/dev/null
dataset=$(ls -d "$work"/data/Dataset*)

# Built-in backend: DynUNet 16-256 (fullres preset), bf16 autocast on CUDA.
t0=$(date +%s.%N)
$medlossy train "$dataset" --out "$work/builtin" --preset fullres --patch-size "$patch" \
  --epochs 1 --iterations "$builtin_iterations" --folds 2 --device "$device" --quiet
t1=$(date +%s.%N)
$medlossy predict "$work/builtin" "$dataset" --out "$work/builtin_predictions" \
  --device "$device" --quiet
t2=$(date +%s.%N)

# nnU-Net 3d_fullres, one epoch of nnunet_iterations, MedlossyTrainer (mirroring at test).
$medlossy train "$dataset" --out "$work/nnunet" --backend nnunet --configuration 3d_fullres \
  --epochs 1 --iterations "$nnunet_iterations" --validation-iterations 5 --folds 2 \
  --device "$device" --quiet
t3=$(date +%s.%N)
$medlossy predict "$work/nnunet" "$dataset" --out "$work/nnunet_predictions" \
  --device "$device" --quiet
t4=$(date +%s.%N)

# A CPU smoke run must not overwrite the GPU figures.
results=bench/results/gpu_check.md
[ "$device" = cuda ] || results=bench/results/gpu_check_$device.md
"$python" - "$work" "$t0" "$t1" "$t2" "$t3" "$t4" <<'PY' | tee "$results"
import json, math, sys
from pathlib import Path
import nibabel as nib

work = Path(sys.argv[1])
t0, t1, t2, t3, t4 = map(float, sys.argv[2:])
card = (work / "machine.txt").read_text().splitlines()[0]

def voxels(folder: Path) -> int:
    return sum(math.prod(nib.load(p).shape) for p in folder.glob("*.nii.gz"))

builtin = json.loads((work / "builtin" / "model.json").read_text())
training = builtin["training"]
patch = builtin["preprocessing"]["patch_size"]
batch = builtin["config"]["batch_size"]
nnunet = json.loads((work / "nnunet" / "medlossy-model.json").read_text())["training"]
nn_voxels = math.prod(nnunet["patch_size"]) * nnunet["batch_size"]
nn_its = nnunet["iterations_per_second"]
rows = [
    ("built-in train", f"{training['iterations_per_second']:.2f} it/s",
     f"{training['mvox_per_second']:.3g}", training.get("peak_gpu_memory_gb"),
     f"patch {'x'.join(map(str, patch))}, batch {batch}, {training['iterations_this_run']} it, "
     f"wall {t1 - t0:.0f} s incl. start-up and preprocessing"),
    ("built-in predict", "", f"{voxels(work / 'builtin_predictions') / (t2 - t1) / 1e6:.3g}",
     "", f"wall {t2 - t1:.0f} s incl. start-up"),
    ("nnU-Net 3d_fullres train", f"{nn_its:.2f} it/s", f"{nn_its * nn_voxels / 1e6:.3g}",
     nnunet.get("peak_gpu_memory_gb"),
     f"patch {'x'.join(map(str, nnunet['patch_size']))}, batch {nnunet['batch_size']}, "
     f"{nnunet['iterations_this_run']} it, wall {t3 - t2:.0f} s incl. planning"),
    ("nnU-Net predict", "", f"{voxels(work / 'nnunet_predictions') / (t4 - t3) / 1e6:.3g}",
     "", f"wall {t4 - t3:.0f} s incl. start-up, mirroring on"),
]
print(f"## GPU check ({card})\n")
print("| step | speed | Mvox/s | peak GPU memory (GB) | notes |\n|---|---|---|---|---|")
for row in rows:
    print("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
PY
echo "total wall time: $(( $(date +%s) - started )) s"
