#!/usr/bin/env bash
# Issue 19 on a two-GPU machine (device kind nvidia-h200-x2), from the repo root there:
#   bash tests/gpu/tp2.sh OUT_DIR
# Needs the device bundles in .device/ (site.tar.xz, tm.tar.xz) and the multi-gpu overlay rendered
# here first (no kubectl there): .venv/bin/kubectl kustomize k8s/overlays/multi-gpu > .device/multi-gpu.yaml
#  1. environment: GPUs, their link, which NCCL TurboMind's CUDA 12 build loads
#  2. a random-weight Llama of the internlm2_5-1_8b-chat shape
#  3. the multi-gpu profile rehearsed to a ready tp=2 server (fetch -> AWQ Job -> Deployment), the
#     clients against it, the planner's tp=2 prediction beside the engine's per-GPU budget lines
#  4. tests.gpu.tp_compare: tp=2 against two tp=1 replicas, A B A B
set -uo pipefail
out=${1:?usage: tp2.sh OUT_DIR}
mkdir -p "$out" /tmp/site /tmp/tp
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
[ -f /tmp/site/.unpacked ] || { tar xJf .device/site.tar.xz -C /tmp/site && tar xJf .device/tm.tar.xz -C /tmp/site && touch /tmp/site/.unpacked; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
py=python3
step() { echo "=== $(date +%T) $*" | tee -a "$out/steps.log"; }

step environment
{
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
  nvidia-smi topo -m
  $py -c 'import torch; print("torch", torch.__version__, "gpus", torch.cuda.device_count(), "nccl", torch.cuda.nccl.version())'
  ldd /tmp/site/lmdeploy/turbomind/_turbomind*.so | grep -E 'nccl|cudart|cublas'
} >"$out/environment.txt" 2>&1

step model
shape='{"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 92544}'
$py -m tests.gpu.build_model --arch llama --out /tmp/tp/src --shape "$shape" >"$out/build-model.log" 2>&1 || { step "model failed"; exit 1; }

step plan
$py -m kit.plan --profile multi-gpu --json >"$out/plan-tp2.json" 2>"$out/plan.log"
$py -m kit.plan --profile multi-gpu --tp 1 --json >"$out/plan-tp1.json" 2>>"$out/plan.log"

step rehearsal
$py -m kit.rehearse --profile multi-gpu --rendered .device/multi-gpu.yaml --model-source /tmp/tp/src \
  --store /tmp/tp/store --workdir /tmp/tp/rh --until ready \
  --then "$py -m clients.chat --prompt 'Say hello in five words.' --max-tokens 24" \
  --then "$py -m clients.funcall --tool-choice required --json" \
  --then "$py -m clients.gpu_report --json" \
  --json >"$out/rehearsal.json" 2>"$out/rehearsal.log"
echo "rehearsal rc=$?" | tee -a "$out/steps.log"
cp /tmp/tp/rh/report.json "$out/rehearsal-report.json" 2>/dev/null
find /tmp/tp/rh -name '*.log' -path '*serve*' -exec cp {} "$out/" \; 2>/dev/null

step compare
$py - <<'EOF'
import yaml
from kit.settings import DEFAULT_SETTINGS_PATH, deep_merge
raw = yaml.safe_load(DEFAULT_SETTINGS_PATH.read_text())
raw["defaults"] = deep_merge(raw.get("defaults") or {}, {"storage": {"models_root": "/tmp/tp/store"}})
open("/tmp/tp/settings.yaml", "w").write(yaml.safe_dump(raw, sort_keys=False))
EOF
$py -m tests.gpu.tp_compare --settings /tmp/tp/settings.yaml --out "$out/compare" >"$out/compare.log" 2>&1
echo "compare rc=$?" | tee -a "$out/steps.log"
step done
