#!/usr/bin/env bash
# Create the kit's environment from the pinned requirements (CPU torch; lmdeploy without its GPU deps).
set -euo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/.."
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# torch first: the CPU build (a plain spec elsewhere pulls a multi-GB CUDA build).
"${pip[@]}" -r requirements/torch-cpu.txt
for f in requirements/*.txt; do
  case "$f" in */torch-cpu.txt|*/nodeps.txt) continue ;; esac
  "${pip[@]}" -r "$f"
done
# lmdeploy's wheel pins CUDA-only packages (triton, nvidia-*, ray); install it alone, its pure-Python needs come above.
[ -f requirements/nodeps.txt ] && "${pip[@]}" --no-deps -r requirements/nodeps.txt
"${pip[@]}" --no-deps -e .
echo "environment ready: $venv"
