#!/usr/bin/env bash
# Issue 18's round trip on the GPU machine: train the function-call test model (tests/gpu/train_fc.py,
# fixed seed), serve it with the kit's rendered `fc` arguments (TurboMind; the PyTorch backend only if
# TurboMind does not come up), then run `python -m clients.funcall` (what `make fc-check` runs) with
# tool_choice auto and required, and the held-out questions (tests/gpu/fc_heldout.py), all through
# tests.support.replay's recorder. Results in $OUT/funcall_trained.tgz: fc/recorded/*.json, fc/verdicts.json and
# fc/train-fc.json are what tests/fixtures/funcall_trained/ holds; the logs beside them.
#   PYTHONPATH=/tmp/site bash tests/gpu/fc_roundtrip.sh        # env: TRAIN_ARGS, BACKEND, CACHE, REUSE
# The committed fixtures: TRAIN_ARGS="--steps 5000 --lr 1e-3 --seconds 140" (stopped at step 1867, loss 0.0023).
set -uo pipefail
: "${PYTHONPATH:?set PYTHONPATH to the unpacked lmdeploy bundle (see tests/gpu/README.md)}"
: "${OUT:?set OUT to the folder for the results}"
export PYTHONPATH="$PYTHONPATH:$PWD" PYTHONUNBUFFERED=1 HF_HOME=/tmp/fc-hf
W=/tmp/fc; R=$OUT/fc; mkdir -p $W $R
BACKEND=${BACKEND:-turbomind}
GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
t_start=$SECONDS
pack() { tar czf $OUT/funcall_trained.tgz -C $OUT fc && rm -rf $R; }
trap pack EXIT

if [ "${REUSE:-0}" != 1 ] || [ ! -f $W/model/train-fc.json ]; then  # REUSE=1: a warm machine's trained model
  rm -rf $W/model
  echo "\$ python3 -m tests.gpu.train_fc --out $W/model ${TRAIN_ARGS:-}" >> $R/commands.txt
  # shellcheck disable=SC2086
  python3 -m tests.gpu.train_fc --out $W/model ${TRAIN_ARGS:-} > $R/train.log 2>&1 || { grep -v "duplicate bos" $R/train.log | tail -30; exit 1; }
fi
cp $W/model/train-fc.json $R/
grep -v "duplicate bos" $R/train.log | tail -8
echo "trained after $((SECONDS - t_start)) s" | tee -a $R/commands.txt

serve() {  # serve BACKEND: start the api_server with the kit's fc arguments; 0 once /health answers 200
  mapfile -t ARGV < <(python3 - "$W/model" "$1" "${CACHE:-0.05}" <<'PY'
import sys
from kit.render import serve_args
from kit.settings import load_settings
s = load_settings("fc", overrides={"serving": {"backend": sys.argv[2], "cache_max_entry_count": float(sys.argv[3]), "log_level": "INFO"}})
print("\n".join(serve_args(s, model_path=sys.argv[1])))
PY
  )
  echo "\$ python3 -m ${ARGV[*]}" | tee -a $R/commands.txt
  python3 -m "${ARGV[@]}" > $R/server-$1.log 2>&1 &
  SRV=$!
  local t0=$SECONDS
  until curl -sf localhost:23333/health >/dev/null; do
    sleep 2
    kill -0 $SRV 2>/dev/null || { echo "$1 server exited:"; tail -15 $R/server-$1.log; return 1; }
    [ $((SECONDS - t0)) -gt 240 ] && { echo "$1 server not ready after 240 s"; kill $SRV; return 1; }
  done
  echo "$1 ready after $((SECONDS - t0)) s" | tee -a $R/commands.txt
}
if ! serve "$BACKEND"; then
  [ "$BACKEND" = pytorch ] && exit 1
  echo "FALLBACK: $BACKEND did not serve; trying the pytorch backend" | tee -a $R/commands.txt
  BACKEND=pytorch; serve pytorch || exit 1
fi

SOURCE="lmdeploy 0.18.0 api_server ($BACKEND backend), the function-call test model trained by tests/gpu/train_fc.py (seed 0), kit fc serve args, $GPU, $(date -u +%F)"
python3 -m tests.support.replay record --upstream http://127.0.0.1:23333 --out $R/recorded --port 23334 --source "$SOURCE" 2> $R/recorder.log &
REC=$!
until curl -s -o /dev/null localhost:23334/health; do sleep 0.5; done
export OPENAI_BASE_URL=http://127.0.0.1:23334/v1 OPENAI_API_KEY=none PROFILE=fc
run() { echo "\$ $*" >> $R/transcript.txt; "$@" >> $R/transcript.txt 2>&1; local rc=$?; echo "exit $rc" >> $R/transcript.txt; return $rc; }
checked() {  # checked KEY CMD...: run a check with --output, keep its command, exit code and verdicts for verdicts.json
  local key=$1; shift
  run "$@" --output $R/verdict-$key.json; echo "$? $*" > $R/verdict-$key.cmd
}
checked funcall-auto python3 -m clients.funcall --tool-choice auto --max-steps 4 --json
checked funcall-required python3 -m clients.funcall --tool-choice required --max-steps 4 --json
run python3 -m clients.funcall --tool-choice auto -v
checked heldout-auto python3 -m tests.gpu.fc_heldout --tool-choice auto --max-steps 4 --json
python3 - $R <<'PY'
import json, pathlib, sys
r = pathlib.Path(sys.argv[1])
out = {}
for cmd in sorted(r.glob("verdict-*.cmd")):
    rc, _, command = cmd.read_text().strip().partition(" ")
    path = cmd.with_suffix(".json")
    verdicts = json.loads(path.read_text()) if path.exists() else []
    verdicts = verdicts if isinstance(verdicts, list) else [verdicts]
    for v in verdicts:
        v.pop("base_url", None)
    out[cmd.stem.removeprefix("verdict-")] = {"command": command, "exit": int(rc), "verdicts": verdicts}
(r / "verdicts.json").write_text(json.dumps(out, indent=2) + "\n")
print({k: [v["verdict"] for v in x["verdicts"]] for k, x in out.items()})
PY
kill $REC; wait $REC
kill $SRV; wait $SRV 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $R/gpu.txt
cat $R/transcript.txt | grep -E '^\$|^exit|"verdict"|"final_answer"|^PASS|^FAIL|held-out' | head -60
echo "total $((SECONDS - t_start)) s" | tee -a $R/commands.txt
