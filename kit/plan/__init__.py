"""The capacity planner (`python -m kit.plan`, `make plan`), one module per concern:

shapes        model config -> weight and KV bytes
gpus          the GPU table (kit/data/gpus.json), NVML
formula       lmdeploy's KV sizing for the PyTorch engine and TurboMind, findings, recommendation
engine_logs   what the engines logged, checks against it, the fitted constants refitted
choices       when AWQ pays: measured costs (kit/data/measured.json) against KV gains
from_settings settings -> plan, `make deploy`'s blockers
cli           the command line
"""

from kit.plan.choices import compare
from kit.plan.cli import main, render_table
from kit.plan.engine_logs import (
    CacheConfigLog,
    LogCheck,
    check_engine_logs,
    fitted_overheads,
    parse_cache_config,
    parse_turbomind_budget,
)
from kit.plan.formula import (
    ENGINE_OVERHEAD_BYTES,
    MAX_PREFILL_TOKENS,
    MIN_HEADROOM_GIB,
    TURBOMIND_OVERHEAD_BYTES,
    Finding,
    PlanInputs,
    PlanResult,
    PolicyPlan,
    Recommendation,
    plan,
    recommend,
    shape_findings,
    size_policy,
)
from kit.plan.from_settings import deploy_blockers, find_model_config, inputs_from_settings, plan_for_settings
from kit.plan.gpus import GPUS, Gpu, GpuSpec, gpu_from_name, gpu_from_nvml, lmdeploy_default_max_batch_size
from kit.plan.shapes import (
    BLOCK_SIZE,
    GIB,
    MIB,
    POLICIES,
    POLICY_NAMES,
    SHAPES_DIR,
    ModelShape,
    PlanError,
    kv_block_bytes,
    kv_bytes_per_token,
    weight_bytes,
)

__all__ = [
    "BLOCK_SIZE", "ENGINE_OVERHEAD_BYTES", "GIB", "GPUS", "MAX_PREFILL_TOKENS", "MIB", "MIN_HEADROOM_GIB", "POLICIES",
    "POLICY_NAMES", "SHAPES_DIR", "TURBOMIND_OVERHEAD_BYTES", "CacheConfigLog", "Finding", "Gpu", "GpuSpec", "LogCheck",
    "ModelShape", "PlanError", "PlanInputs", "PlanResult", "PolicyPlan", "Recommendation", "check_engine_logs", "compare",
    "deploy_blockers", "find_model_config", "fitted_overheads", "gpu_from_name", "gpu_from_nvml", "inputs_from_settings",
    "kv_block_bytes", "kv_bytes_per_token", "lmdeploy_default_max_batch_size", "main", "parse_cache_config",
    "parse_turbomind_budget", "plan", "plan_for_settings", "recommend", "render_table", "shape_findings", "size_policy",
    "weight_bytes",
]  # fmt: skip
