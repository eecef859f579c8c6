#!/usr/bin/env bash
# Create the kit's environment from the pinned requirements (CPU torch; lmdeploy without its GPU deps).
set -euo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/.."
if [ ! -x "$venv/bin/python" ]; then
  # Debian's python3 lacks venv/ensurepip until python3-venv is installed (`make deps` does).
  python3 -m venv "$venv" >/dev/null 2>&1 || {
    rm -rf "$venv"
    echo "setup-venv: cannot create $venv: python3 with venv is missing; run \`make deps\` (or apt-get install python3-venv)" >&2
    exit 1
  }
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# torch first: the CPU build from PyTorch's CPU index where it answers; elsewhere the configured
# indexes' build (PyPI's Linux torch is the multi-GB CUDA build; it runs on a CPU too).
cpu_index=$(bash .ci/torch-cpu-index.sh)
"${pip[@]}" ${cpu_index:+--extra-index-url "$cpu_index"} -r requirements/torch-cpu.txt
for f in requirements/*.txt; do
  case "$f" in */torch-cpu.txt|*/nodeps.txt) continue ;; esac
  "${pip[@]}" -r "$f"
done
# lmdeploy's wheel pins CUDA-only packages (triton, nvidia-*, ray); install it alone, its pure-Python needs come above.
[ -f requirements/nodeps.txt ] && "${pip[@]}" --no-deps -r requirements/nodeps.txt
"${pip[@]}" --no-deps -e .
echo "environment ready: $venv"
