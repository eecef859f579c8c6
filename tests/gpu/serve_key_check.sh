#!/usr/bin/env bash
# kit.serve on a GPU: the real api_server (TurboMind) started as the Deployment starts it, the key
# read from a file. Checks: /health ready, /v1/models answers 401 without the key and 200 with it,
# and no process on the machine has the key in its /proc/<pid>/cmdline.
#   bash tests/gpu/serve_key_check.sh        (bundles in .device/, see shared/FIELD-NOTES.md)
set -uo pipefail
cd "$(dirname "$0")/../.."
W=$(mktemp -d) OUT=${OUT:-$W}
mkdir -p "$W/site" && tar xJf .device/site.tar.xz -C "$W/site" && tar xJf .device/tm.tar.xz -C "$W/site"
export PYTHONPATH=$W/site:$PWD HF_HUB_OFFLINE=1 HF_HOME=$W/hf
python3 - "$W/model" <<'PY'
import sys
from pathlib import Path
from tests.support.models import ModelShape, build_llama
build_llama(Path(sys.argv[1]), ModelShape(hidden=512, intermediate=1024, layers=2, heads=4, kv_heads=2, vocab=1024))
PY
key="sk-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
printf '%s\n' "$key" >"$W/api-key"
python3 -m kit.serve --api-key-file "$W/api-key" -- lmdeploy serve api_server "$W/model" --server-port 23999 \
  --backend turbomind --max-batch-size 8 --cache-max-entry-count 0.1 --log-level WARNING >"$OUT/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:23999/health)" = 200 ] && break
  kill -0 $pid 2>/dev/null || { echo "server exited"; tail -30 "$OUT/server.log"; exit 1; }
  sleep 2
done
no_key=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:23999/v1/models)
wrong=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer sk-wrong" http://127.0.0.1:23999/v1/models)
with_key=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" http://127.0.0.1:23999/v1/models)
# The pattern from the file: a key given to grep as an argument would be in grep's own cmdline.
leaks=$(grep -l -a -F -f "$W/api-key" /proc/[0-9]*/cmdline 2>/dev/null | tee "$OUT/leaks.txt" | wc -l)
procs=$(pgrep -f kit.serve | wc -l)
echo "health=ready no_key=$no_key wrong_key=$wrong with_key=$with_key cmdlines_with_key=$leaks kit.serve_processes=$procs"
tr '\0' ' ' </proc/$pid/cmdline; echo
kill $pid; wait $pid 2>/dev/null
[ "$no_key" = 401 ] && [ "$wrong" = 401 ] && [ "$with_key" = 200 ] && [ "$leaks" = 0 ]
