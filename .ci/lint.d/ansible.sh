#!/usr/bin/env bash
# ansible-lint (production profile) over the playbook and roles.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${VENV:-.venv}
[[ $venv = /* ]] || venv=$root/$venv
cd "$root/ansible"
"$venv/bin/ansible-lint" --profile production --nocolor -q
