"""Settings -> plan: the model config the settings point at, the engine inputs they imply, and the
checks `make deploy` runs before applying anything."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from kit.plan.formula import PlanInputs, PlanResult, plan, shape_findings
from kit.plan.gpus import Gpu, gpu_from_name, gpu_from_nvml
from kit.plan.shapes import SHAPES_DIR, ModelShape, PlanError
from kit.settings import Settings

log = logging.getLogger("kit.plan")


def find_model_config(s: Settings, explicit: str | None = None) -> tuple[dict[str, Any], str]:
    """config.json from --model-config, the served model, the fp16 model, else the bundled shape."""
    candidates = (
        [Path(explicit)]
        if explicit
        else [Path(s.serve_path) / "config.json", Path(s.fp16_path) / "config.json", SHAPES_DIR / f"{s.model.name}.json"]
    )
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text()), str(path)
            except (OSError, json.JSONDecodeError) as exc:
                raise PlanError(f"cannot read model config {path}: {exc}") from None
    if explicit:
        raise PlanError(f"model config not found: {explicit}")
    known = ", ".join(sorted(p.stem for p in SHAPES_DIR.glob("*.json")))
    raise PlanError(
        f"no config.json for model {s.model.name!r} (looked in {s.serve_path}, {s.fp16_path}); pass --model-config FILE "
        f"or use a bundled shape: {known}"
    )


# The PlanInputs fields that `serving` settings carry under the same name.
SERVING_INPUTS = ("backend", "cache_max_entry_count", "quant_policy", "session_len", "tp", "max_batch_size", "max_prefill_token_num")


def inputs_from_settings(s: Settings, shape: ModelShape | None = None) -> PlanInputs:
    """The engine inputs the settings imply; an empty serving setting keeps the planner's default (lmdeploy's)."""
    served = {name: value for name in SERVING_INPUTS if (value := getattr(s.serving, name)) is not None}
    awq = s.effective_model_format == "awq" or bool(shape and shape.awq_group_size)
    group = (shape.awq_group_size if shape and shape.awq_group_size else s.quantization.w_group_size) or 128
    return PlanInputs(**served, awq=awq, awq_group_size=group)


def plan_for_settings(
    settings: Settings,
    gpu: Gpu | str | None = None,
    context: int | None = None,
    target_sessions: int | None = None,
    model_config: str | None = None,
) -> PlanResult:
    """The plan `make plan` prints, for embedding (the report): GPU by name, a `Gpu`, or None = live NVML.
    Raises PlanError when the model config or the GPU cannot be found."""
    cfg, source = find_model_config(settings, model_config)
    shape = ModelShape.from_config(cfg, _model_name(settings, source), source)
    inputs = inputs_from_settings(settings, shape)
    if context:
        inputs = dataclasses.replace(inputs, context=context)
    resolved = gpu_from_name(gpu) if isinstance(gpu, str) else gpu or gpu_from_nvml()
    return plan(shape, resolved, inputs, settings.profile, target_sessions)


def deploy_blockers(settings: Settings, gpu: str | None = None) -> list[str]:
    """One-line reasons the deployment would fail, for `make deploy` (empty = go).

    Without a GPU (argument, else a `kubernetes.gpu_model` setting when one exists) only the GPU-free
    checks run: tp against the KV heads and session_len against the model's context.
    """
    try:
        cfg, source = find_model_config(settings)
    except PlanError as exc:
        log.info("planner skipped: %s", exc)
        return []
    shape = ModelShape.from_config(cfg, settings.model.name, source)
    inputs = inputs_from_settings(settings, shape)
    gpu = gpu or getattr(settings.kubernetes, "gpu_model", None) or None
    if not gpu:
        return [
            f.message
            for f in shape_findings(shape, inputs.tp, inputs.session_len)
            if f.level == "error" and f.policy in (None, inputs.quant_policy)
        ]
    try:
        result = plan(shape, gpu_from_name(gpu), inputs, settings.profile)
    except PlanError as exc:
        return [str(exc)]
    return [f.message for f in result.errors]


def _model_name(s: Settings, source: str) -> str:
    path = Path(source)
    if path.parent == SHAPES_DIR or path.parent.name in (Path(s.serve_path).name, Path(s.fp16_path).name):
        return s.model.name
    return path.parent.name if path.stem == "config" else path.stem
