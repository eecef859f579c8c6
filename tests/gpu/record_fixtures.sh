#!/usr/bin/env bash
# Record real lmdeploy api_server replies for tests/fixtures/recorded/session and run every client
# against the server, the Gradio page last (tests/gpu/webui_live.py; it stops the server to check the
# unreachable-server message). GPU machine; results in $OUT/recorded.tgz. Used for the committed fixtures.
set -uo pipefail
: "${PYTHONPATH:?set PYTHONPATH to the unpacked lmdeploy bundle (see tests/gpu/README.md)}"
export PYTHONPATH="$PYTHONPATH:$PWD" PYTHONUNBUFFERED=1
W=/tmp/rec; rm -rf $W; mkdir -p $W $OUT/clients
python3 -m tests.gpu.build_model --out $W/model --shape '{"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 92544}' > $OUT/build.log 2>&1 || { tail $OUT/build.log; exit 1; }
python3 -m jobs.quantize --profile fc --template-only --model-path $W/model > $OUT/template.log 2>&1 || { tail $OUT/template.log; exit 1; }
KEY=rec-$RANDOM$RANDOM
SOURCE="lmdeploy 0.18.0 api_server, pytorch backend, random-weight tiny InternLM2 (tests/gpu/build_model.py) with the kit's tools template, $(nvidia-smi --query-gpu=name --format=csv,noheader), $(date -u +%F)"
mapfile -t ARGV < <(python3 - "$W/model" <<'PY'
import sys
from kit.render import serve_args
from kit.settings import load_settings
s = load_settings("fc", overrides={"serving": {"backend": "pytorch", "cache_max_entry_count": 0.02, "log_level": "INFO"}})
print("\n".join(serve_args(s, model_path=sys.argv[1])))
PY
)
echo "serve: ${ARGV[*]} --api-keys ***" | tee $OUT/clients/commands.txt
python3 -m "${ARGV[@]}" --api-keys "$KEY" > $OUT/server.log 2>&1 &
SRV=$!
t0=$SECONDS
until curl -sf localhost:23333/health >/dev/null; do sleep 2; kill -0 $SRV || { tail -20 $OUT/server.log; exit 1; }; [ $((SECONDS-t0)) -gt 300 ] && exit 1; done
echo "ready after $((SECONDS-t0)) s" | tee -a $OUT/clients/commands.txt
export OPENAI_BASE_URL=http://127.0.0.1:23333/v1 OPENAI_API_KEY=$KEY PROFILE=fc
python3 -m tests.support.replay session --upstream http://127.0.0.1:23333 --out $OUT/recorded --api-key "$KEY" \
  --source "$SOURCE" > $OUT/session.log 2>&1; echo "session rc=$?" | tee -a $OUT/clients/commands.txt
run() { echo "\$ $*" >> $OUT/clients/transcript.txt; "$@" >> $OUT/clients/transcript.txt 2>&1; echo "exit $?" >> $OUT/clients/transcript.txt; }
run python3 -m clients.chat --prompt "Say hello in five words." --max-tokens 24
run python3 -m clients.funcall --tool-choice required --max-tokens 512 --json
run python3 -m clients.gpu_report
run python3 -m clients.gpu_report --json
OPENAI_API_KEY=wrong run python3 -m clients.chat --prompt hi
if python3 -c "import gradio, gradio_client" 2>/dev/null; then
  run python3 -m tests.gpu.webui_live --upstream http://127.0.0.1:23333 --out $OUT/clients/webui --server-pid $SRV --source "$SOURCE"
else
  echo "webui: gradio not importable here; the page was not run" | tee -a $OUT/clients/transcript.txt
fi
kill $SRV 2>/dev/null; wait $SRV 2>/dev/null
run python3 -m clients.chat --prompt hi
tail -c 6000 $OUT/clients/transcript.txt
tar czf $OUT/recorded.tgz -C $OUT recorded session.log server.log template.log build.log clients && rm -rf $OUT/recorded $OUT/clients $OUT/*.log
