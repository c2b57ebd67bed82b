#!/usr/bin/env bash
# The README's install commands in a fresh virtual environment (not the development one):
# PyTorch 2.13.0 first, then medlossy with its nnunet extra, nothing else; then
# .ci/nnunet_smoke.py checks that torch stayed, no CUDA wheel came in and nnU-Net v2 runs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

PYTHON=${PYTHON:-python3}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/medlossy-fresh-install-XXXXXX")
trap 'rm -rf "$scratch"' EXIT
started=$SECONDS
"$PYTHON" -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install --quiet torch==2.13.0
# A copy of the tree, so the install leaves no build folder in this checkout.
mkdir "$scratch/src-tree"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$scratch/src-tree"
(cd "$scratch/src-tree" && "$scratch/venv/bin/pip" install --quiet ".[nnunet]")
echo "fresh install: $((SECONDS - started)) s, $(du -sh "$scratch/venv" | cut -f1)" >&2
(cd "$scratch" && "$scratch/venv/bin/python" "$repo/.ci/nnunet_smoke.py")
echo "fresh install: nnU-Net v2 works after the README's two commands" >&2
