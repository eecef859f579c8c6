"""Block bytes against lmdeploy's own PyTorch-engine cache plan (the installed lmdeploy, on the CPU).

lmdeploy computes a block's bytes in `pytorch/engine/cache_engine/plan.py` (`build_block_cache_plan(...)
.logical_block_nbytes`, allocated on the meta device). Importing `lmdeploy.pytorch.engine` pulls in the
serving engine (zmq, ray, ...), so the probe runs in a subprocess that registers that package's path
without executing its `__init__`; every number still comes from lmdeploy's code.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from kit.plan import SHAPES_DIR, ModelShape, kv_block_bytes

PROBE = r"""
import json, sys, types
from pathlib import Path
import lmdeploy.pytorch as lp
for name in ("engine", "engine/cache_engine"):
    mod = types.ModuleType("lmdeploy.pytorch." + name.replace("/", "."))
    mod.__path__ = [str(Path(lp.__file__).parent / name)]
    sys.modules[mod.__name__] = mod
import torch
from lmdeploy.messages import QuantPolicy
from lmdeploy.pytorch.config import CacheConfig, ModelConfig
from lmdeploy.pytorch.engine.cache_engine.plan import build_block_cache_plan
out = []
for case in json.loads(sys.argv[1]):
    mc = ModelConfig(hidden_size=case["hidden"], num_layers=case["layers"], num_attention_heads=case["heads"],
                     num_key_value_heads=case["kv_heads"], bos_token_id=1, eos_token_id=[2], head_dim=case["head_dim"],
                     dtype=torch.bfloat16, vocab_size=case["vocab"])
    cc = CacheConfig(max_batches=8, block_size=case["block"], num_cpu_blocks=0, num_gpu_blocks=0,
                     quant_policy=QuantPolicy(case["policy"]))
    out.append(build_block_cache_plan(mc, cc, case["tp"]).logical_block_nbytes)
print(json.dumps(out))
"""


def _shape(name: str) -> ModelShape:
    return ModelShape.from_config(json.loads((SHAPES_DIR / f"{name}.json").read_text()), name)


ODD = ModelShape("odd", "llama", 3, 216, 3, 1, 72, 256, 1000, 4096)
CASES = [
    (shape, policy, block, tp)
    for shape, block, tp in [
        (_shape("internlm2_5-1_8b-chat"), 64, 1),
        (_shape("Meta-Llama-3-8B-Instruct"), 64, 2),
        (_shape("Qwen2.5-7B-Instruct"), 64, 4),
        (ODD, 16, 1),  # 72-dim heads, 16-token blocks: every tensor needs the 256-byte rounding
    ]
    for policy in (0, 8, 4)
]


@pytest.mark.slow
def test_block_bytes_equal_lmdeploys_cache_plan() -> None:
    if importlib.util.find_spec("lmdeploy") is None:
        pytest.fail("lmdeploy is not installed: run `make venv` / .ci/run (requirements/nodeps.txt installs it)")
    cases = [
        {
            "hidden": s.hidden_size,
            "layers": s.num_layers,
            "heads": s.num_attention_heads,
            "kv_heads": s.num_kv_heads,
            "head_dim": s.head_dim,
            "vocab": s.vocab_size,
            "block": block,
            "policy": policy,
            "tp": tp,
        }
        for s, policy, block, tp in CASES
    ]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cases)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = [kv_block_bytes(s, policy, block, tp, "pytorch") for s, policy, block, tp in CASES]
    assert ours == theirs
    assert kv_block_bytes(ODD, 4, 16, 1, "turbomind") < theirs[-1]  # TurboMind does not round up
