#!/usr/bin/env bash
# Run every benchmark; Markdown sections go to bench/results/<name>.md, JSON to
# bench/results/<name>.json. Needs the demo CTs (fetched with pip on first use) and, for the
# command-line comparison, Debian's OpenJPEG tools: apt-get install -y libopenjp2-tools.
# Usage: bash bench/run_all.sh [--slices N]   (synthetic CT for memory*.py and nifti_read.py;
# default 1000 slices of 512x512: about 0.5 GB raw, 0.3 GB as .nii.gz under bench/out/)
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
mkdir -p bench/results
{
  echo "nproc: $(nproc)"
  grep -m1 "model name" /proc/cpuinfo
  uname -a
  "$python" --version
  "$python" -m pip list 2>/dev/null | grep -Ei "^(numpy|imagecodecs|pylibjpeg-openjpeg|zarr|numcodecs|nibabel|medlossy) "
  (opj_compress -h 2>/dev/null | grep "compiled against") || echo "opj_compress: not installed"
} | tee bench/results/machine.txt
for name in rate_accuracy throughput pipeline sweep_encode stores_sweep; do
  echo "== $name" >&2
  "$python" "bench/$name.py" | tee "bench/results/$name.md"
done
for name in memory memory_phases nifti_read; do
  echo "== $name" >&2
  "$python" "bench/$name.py" "$@" | tee "bench/results/$name.md"
done
echo "== memory_phases --slice-errors" >&2
"$python" bench/memory_phases.py --slice-errors "$@" | tee bench/results/memory_phases_slice_errors.md
