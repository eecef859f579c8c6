#!/usr/bin/env bash
# Create build/checkov-venv with the pinned checkov (its own venv: its pins conflict with the
# kit's). Idempotent; prints the checkov path. Used by .ci/lint.d/images.sh and the k8s lint.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOV_VERSION=3.3.30
venv=${CHECKOV_VENV:-build/checkov-venv}
stamp="$venv/.checkov-$CHECKOV_VERSION"
if [ ! -e "$stamp" ]; then
  # Serialize concurrent callers (the lint scripts may run in parallel).
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if [ ! -e "$stamp" ]; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    echo "installing checkov==$CHECKOV_VERSION into $venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
    touch "$stamp"
  fi
fi
echo "$venv/bin/checkov"
