#!/usr/bin/env bash
# Linters of the parts (ansible-lint, kubernetes validators, hadolint): each part adds .ci/lint.d/<part>.sh.
set -euo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/.."
for script in .ci/lint.d/*.sh; do
  [ -e "$script" ] || continue
  echo "== ${script##*/}"
  VENV=$venv bash "$script"
done
