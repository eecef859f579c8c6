#!/usr/bin/env bash
# The pod rehearsal on the GPU machine: rendered overlay -> fetch Job -> quantize Job (AWQ on the GPU)
# -> serving pod with TurboMind, probed to ready -> the kit's clients against it.
#
#   bash tests/gpu/rehearse.sh PROFILE RENDERED.yaml [CLIENT...]   (results in $OUT/<profile>-*)
#
# RENDERED.yaml is `kubectl kustomize k8s/overlays/PROFILE` made on a machine with kubectl (the GPU
# machine has none). Needs the bundles site.tar.xz and tm.tar.xz in $BUNDLES (default .device/;
# shared/FIELD-NOTES.md). Run it from a snapshot of the tree when others edit the checkout.
# The image's /opt/venv is a venv over the machine's torch/transformers with the site bundle on its
# path (a .pth file), outside /tmp so the pods' /tmp emptyDir does not hide it.
# CLIENT: chat | funcall (default both); the GPU reporter always runs inside the serving pod.
set -uo pipefail
cd "$(dirname "$0")/../.."
profile=${1:?profile} rendered=$(realpath "${2:?rendered yaml}")
shift 2
clients=("${@:-chat funcall}")
SITE=/srv/kit-site VENV=/srv/kit-venv WORK=/srv/kit-rehearse OUT=${OUT:-/tmp/rehearse-out} BUNDLES=${BUNDLES:-.device}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
if [ ! -f "$SITE/.unpacked" ]; then
  mkdir -p "$SITE" && tar xJf "$BUNDLES/site.tar.xz" -C "$SITE" && tar xJf "$BUNDLES/tm.tar.xz" -C "$SITE" && touch "$SITE/.unpacked"
  python3 -m venv --without-pip --system-site-packages "$VENV"
  # The bundle first, then every folder the machine's python3 sees (a venv leaves out user sites).
  { echo "$SITE"; python3 -c 'import os, sys; print("\n".join(p for p in sys.path if p and os.path.isdir(p)))'; } \
    >"$(echo "$VENV"/lib/python3*/site-packages)/kit-site.pth"
  printf '#!%s/bin/python3\nimport sys\nfrom lmdeploy.cli.entrypoint import run\nsys.exit(run())\n' "$VENV" >"$VENV/bin/lmdeploy"
  chmod +x "$VENV/bin/lmdeploy"
fi
export PYTHONPATH=$SITE:$PWD
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$VENV/bin/python" -c 'import lmdeploy, torch, transformers, lmdeploy.turbomind as t; print("lmdeploy", lmdeploy.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "turbomind", t.is_available())'
} 2>&1 | tee "$OUT/$profile-machine.txt"
# A Llama of head_dim 128 (TurboMind's kernels), tiny otherwise; random weights.
python3 -m tests.gpu.build_model --arch llama --out "$WORK/model" \
  --shape '{"hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024}' \
  >"$OUT/$profile-build-model.log" 2>&1 || { tail -20 "$OUT/$profile-build-model.log"; exit 1; }
then=()
for c in ${clients[*]}; do
  case $c in
    chat) then+=(--then "python3 -m clients.chat --prompt 'Say hello in one short sentence.' --max-tokens 32 --no-stream") ;;
    funcall) then+=(--then "python3 -m clients.funcall --tool-choice required --max-tokens 64") ;;
  esac
done
start=$(date +%s)
python3 -m kit.rehearse --profile "$profile" --rendered "$rendered" --venv "$VENV" --model-source "$WORK/model" \
  --workdir "$WORK/run-$profile" --until ready "${then[@]}" --exec "python -m clients.gpu_report --json" --json \
  >"$OUT/$profile-report.json" 2> >(tee "$OUT/$profile-rehearse.log" >&2)
rc=$?
echo "rehearse $profile: exit $rc in $(($(date +%s) - start)) s" | tee -a "$OUT/$profile-machine.txt"
exit $rc
