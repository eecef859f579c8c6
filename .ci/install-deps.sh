#!/usr/bin/env bash
# Install the Debian packages the tests use (.ci/apt/*.txt) when missing. Idempotent; needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t wanted < <(cat .ci/apt/*.txt 2>/dev/null | sed 's/#.*//' | xargs -rn1 echo | sort -u)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
  exit 2
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
