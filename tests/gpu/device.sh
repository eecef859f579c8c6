#!/usr/bin/env bash
# Run the GPU benchmark on the GPU test machine (PYTHONPATH already holds the lmdeploy bundle).
# BENCH_MODULE picks it: tests.gpu.bench_tm (TurboMind, default) or tests.gpu.bench (PyTorch backend).
#
#   bash tests/gpu/device.sh [--quick] [bench args]   foreground run, results in $OUT/bench
#   bash tests/gpu/device.sh start [--quick] [args]   detached (setsid nohup), results in $BENCH_DIR
#   bash tests/gpu/device.sh status                   progress; copies what exists into $OUT/bench
#   bash tests/gpu/device.sh wait [SECONDS]           status every 20 s until done or SECONDS passed
#
# A detached run survives the call that started it; poll with `status` or `wait` (each call's $OUT
# is emptied first, so results live in $BENCH_DIR and are copied into $OUT/bench on every poll).
# Files back: results.json, bench.log, cache-configs.log, logs.tgz, recorded.tgz, console.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
BENCH_DIR=${BENCH_DIR:-/tmp/kit-bench-out}
PY=${PYTHON:-python3}
BENCH_MODULE=${BENCH_MODULE:-tests.gpu.bench_tm}
export PYTHONUNBUFFERED=1 KIT_BENCH_WORKDIR=${KIT_BENCH_WORKDIR:-/tmp/kit-bench}

preflight() {
  "$PY" - <<'EOF' || exit 2
import importlib, sys
missing = []
for m in ("lmdeploy", "torch", "transformers", "yaml", "pydantic"):
    try:
        importlib.import_module(m)
    except Exception as exc:
        missing.append(f"{m} ({exc})")
if missing:
    sys.exit("device.sh: cannot import " + ", ".join(missing) + "; set PYTHONPATH to the unpacked site bundle")
import transformers, lmdeploy
print(f"preflight: lmdeploy {lmdeploy.__version__}, transformers {transformers.__version__}", flush=True)
EOF
}

collect() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT/bench"
  for f in results.json bench.log cache-configs.log logs.tgz recorded.tgz console.log; do
    [ -f "$BENCH_DIR/$f" ] && cp -f "$BENCH_DIR/$f" "$OUT/bench/"
  done
  return 0
}

status() {
  if [ -f "$BENCH_DIR/pid" ] && kill -0 "$(cat "$BENCH_DIR/pid")" 2>/dev/null; then
    echo "running (pid $(cat "$BENCH_DIR/pid"))"
  else
    echo "not running${BENCH_DIR:+; exit code $(cat "$BENCH_DIR/rc" 2>/dev/null || echo '?')}"
  fi
  tail -n 15 "$BENCH_DIR/bench.log" 2>/dev/null
  "$PY" - "$BENCH_DIR/results.json" <<'EOF' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
print("stages:", {k: v.get("status") for k, v in r.get("stages", {}).items()})  # both benchmarks' results.json
for k, v in r.get("ratios", {}).items():
    print(f"  {k}: {v.get('value')} ({v.get('target', '')}) {'PASS' if v.get('pass') else 'FAIL' if 'pass' in v else ''}")
EOF
  collect
}

case "${1:-run}" in
  start)
    shift
    preflight
    mkdir -p "$BENCH_DIR"
    rm -f "$BENCH_DIR/rc"
    setsid nohup bash -c "$PY -m $BENCH_MODULE --out '$BENCH_DIR' $*; echo \$? > '$BENCH_DIR/rc'" \
      >"$BENCH_DIR/console.log" 2>&1 </dev/null &
    echo $! >"$BENCH_DIR/pid"
    echo "started (pid $!); poll with: bash tests/gpu/device.sh status"
    ;;
  status)
    status
    ;;
  wait)
    limit=${2:-540}
    t0=$SECONDS
    while [ $((SECONDS - t0)) -lt "$limit" ]; do
      [ -f "$BENCH_DIR/rc" ] && break
      sleep 20
    done
    status
    ;;
  run | --*)
    [ "${1:-run}" = run ] && shift
    preflight
    out=${OUT:-build}/bench
    mkdir -p "$out"
    "$PY" -m "$BENCH_MODULE" --out "$out" "$@" 2>&1 | tee "$out/console.log"
    ;;
  *)
    echo "usage: device.sh [run|start|status|wait] [--quick] [bench args]" >&2
    exit 2
    ;;
esac
