#!/usr/bin/env bash
# Print PyTorch's CPU wheel index when it answers within a few seconds, else nothing (exit 0 both ways).
# setup-venv.sh adds it as an extra index so `torch==<pin>` resolves to the +cpu build; where it is
# unreachable, the configured indexes serve torch (on PyPI, Linux: the CUDA build, which runs on a CPU).
# TORCH_CPU_INDEX_URL picks another index (a mirror); set it empty to skip the probe.
set -euo pipefail
url=${TORCH_CPU_INDEX_URL-https://download.pytorch.org/whl/cpu}
[ -n "$url" ] || exit 0
python3 - "$url" <<'PY' && echo "$url" || true
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
