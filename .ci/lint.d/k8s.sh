#!/usr/bin/env bash
# Kubernetes manifests: render every overlay with the kit's kustomize, then validate the output with
# kubernetes-validate --strict (offline schemas) and checkov (own venv; skips need a written reason
# in a `checkov.io/skipN: CKV_...=reason` annotation, enforced by tests/k8s). yamllint runs in `make lint`.
# The semantic checks the validators miss (mounts, selectors, ports, paths, serve args) are in tests/k8s.
set -euo pipefail
venv=${VENV:-.venv}
cd "$(dirname "$0")/../.."
CHECKOV_VERSION=3.3.30
CHECKOV_VENV=build/checkov-venv
kubectl="$venv/bin/kubectl"
out=build/k8s-rendered
rm -rf "$out" && mkdir -p "$out"

for dir in k8s/overlays/*/; do
  name=$(basename "$dir")
  "$kubectl" kustomize "$dir" >"$out/$name.yaml"
  # --strict: unknown fields are errors. Kinds without a schema (ServiceMonitor, ScaledObject) only warn.
  "$venv/bin/kubernetes-validate" --strict --quiet "$out/$name.yaml"
  echo "rendered + schema-valid: $name"
done

if [ ! -x "$CHECKOV_VENV/bin/checkov" ] || ! "$CHECKOV_VENV/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  echo "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV"
  python3 -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/python" -m pip install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi
# Exit code 1 on any failed check; --skip-download: no Prisma Cloud, no network.
"$CHECKOV_VENV/bin/checkov" --skip-download --quiet --compact --framework kubernetes -d "$out"
