"""Engine logs: what lmdeploy logged about its KV cache, the planner checked against it, and the
fitted constants refitted from the logs that fitted them.

PyTorch logs `Building CacheEngine with config: CacheConfig(... num_gpu_blocks=N ...)`; TurboMind logs
`Object cache budget: X MB from free Y MB and ratio R` (MB = MiB) and, per block size, a
`slab_size S, object_size B, object_count N` line. Fixture format: docs/planner.md.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from typing import Any

from kit.plan.formula import MAX_PREFILL_TOKENS, PlanInputs, plan, size_policy
from kit.plan.gpus import Gpu
from kit.plan.shapes import BLOCK_SIZE, MIB, SHAPES_DIR, ModelShape, PlanError, weight_bytes


@dataclass(frozen=True)
class CacheConfigLog:
    """The fields of lmdeploy's `Building CacheEngine with config: CacheConfig(...)` log line."""

    num_gpu_blocks: int
    block_size: int
    cache_max_entry_count: float
    quant_policy: int
    max_batches: int | None
    max_prefill_token_num: int | None
    fields: dict[str, Any]


# One `name=value` of CacheConfig(...): an enum repr, a quoted string or a bare number/word.
_FIELD = re.compile(r"(\w+)=(<[^>]*>|'[^']*'|-?[\w.]+)")


def _value(raw: str) -> Any:
    if raw.startswith("<"):  # enum repr: <QuantPolicy.INT8: 8>
        m = re.search(r":\s*(-?\d+)>$", raw)
        return int(m.group(1)) if m else raw
    if raw.startswith("'"):
        return raw.strip("'")
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(raw, raw)


def parse_cache_config(text: str) -> CacheConfigLog | None:
    """Parse the last `CacheConfig(... num_gpu_blocks=N ...)` in an engine log (None when absent)."""
    idx = text.rfind("CacheConfig(")
    if idx < 0:
        return None
    body = text[idx + len("CacheConfig(") :]
    depth, end = 1, len(body)
    for i, ch in enumerate(body):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = i
            break
    fields = {k: _value(v) for k, v in _FIELD.findall(body[:end])}
    if "num_gpu_blocks" not in fields:
        return None
    return CacheConfigLog(
        num_gpu_blocks=int(fields["num_gpu_blocks"]),
        block_size=int(fields.get("block_size", BLOCK_SIZE)),
        cache_max_entry_count=float(fields.get("cache_max_entry_count", 0.8)),
        quant_policy=int(fields.get("quant_policy", 0)),
        max_batches=fields.get("max_batches"),
        max_prefill_token_num=fields.get("max_prefill_token_num"),
        fields=fields,
    )


@dataclass(frozen=True)
class BudgetLog:
    """TurboMind's KV sizing: the budget and the free memory it came from (bytes), and its slab lines."""

    budget_bytes: int
    free_bytes: int
    ratio: float
    slabs: tuple[tuple[int, int, int], ...]  # (slab_size, object_size, object_count)


_BUDGET = re.compile(r"Object cache budget: ([\d.]+) MB from free ([\d.]+) MB and ratio ([\d.]+)")
_SLAB = re.compile(r"slab_size (\d+), object_size (\d+), object_count (\d+)")


def parse_turbomind_budget(text: str) -> BudgetLog | None:
    """The last `Object cache budget` line of a TurboMind log (None when absent) and every slab line."""
    hits = _BUDGET.findall(text)
    if not hits:
        return None
    budget, free, ratio = hits[-1]
    slabs = tuple(sorted({(int(a), int(b), int(c)) for a, b, c in _SLAB.findall(text)}))
    return BudgetLog(round(float(budget) * MIB), round(float(free) * MIB), float(ratio), slabs)


@dataclass(frozen=True)
class LogCheck:
    label: str
    quantity: str  # num_gpu_blocks (PyTorch) | budget_mib (TurboMind)
    predicted: float
    logged: float
    tolerance: float
    role: str = "validate"  # fit: the run fitted a constant; validate: the fit never saw it

    @property
    def relative_error(self) -> float:
        return (self.predicted - self.logged) / self.logged

    @property
    def ok(self) -> bool:
        return abs(self.relative_error) <= self.tolerance


def fixture_shape(fixture: dict[str, Any]) -> ModelShape:
    if isinstance(fixture.get("model_config"), dict):
        return ModelShape.from_config(fixture["model_config"], fixture.get("model_shape", ""), "fixture")
    name = fixture["model_shape"]
    return ModelShape.from_config(json.loads((SHAPES_DIR / f"{name}.json").read_text()), name, f"bundled {name}")


def fixture_gpu(fixture: dict[str, Any]) -> Gpu:
    g = fixture["gpu"]
    total = int(g["total_mib"]) * MIB
    free = g.get("free_mib_at_start")
    return Gpu(g["name"], total, total - int(free) * MIB if free is not None else 0, "fixture")


def _run_inputs(run: dict[str, Any], logged: CacheConfigLog | None) -> PlanInputs:
    backend = run.get("backend", "pytorch")
    return PlanInputs(
        backend=backend,
        cache_max_entry_count=float(run.get("cache_max_entry_count") or (logged.cache_max_entry_count if logged else 0.8)),
        quant_policy=int(run.get("quant_policy", logged.quant_policy if logged else 0)),
        tp=int(run.get("tp", 1)),
        max_batch_size=run.get("max_batch_size") or (logged.max_batches if logged else None),
        awq=run.get("weights") == "awq",
        awq_group_size=int(run.get("awq_group_size", 128)),
        block_size=logged.block_size if logged else BLOCK_SIZE,
        max_prefill_token_num=int(run.get("max_prefill_token_num", MAX_PREFILL_TOKENS)),
    )


def check_engine_logs(fixture: dict[str, Any]) -> list[LogCheck]:
    """Compare the planner with every run of an engine-log fixture: PyTorch blocks, TurboMind budget."""
    shape, gpu = fixture_shape(fixture), fixture_gpu(fixture)
    tol = float(fixture.get("tolerance", 0.01))
    checks = []
    for run in fixture["runs"]:
        label, role = run.get("label", ""), run.get("role", "validate")
        if run.get("backend", "pytorch") == "turbomind":
            budget = parse_turbomind_budget(run["log"])
            if budget is None:
                raise PlanError(f"fixture run {label!r}: no `Object cache budget` line in its log")
            p = plan(shape, gpu, _run_inputs(run, None)).policy(int(run.get("quant_policy", 0)))
            checks.append(LogCheck(label, "budget_mib", p.budget_bytes / MIB, budget.budget_bytes / MIB, tol, role))
            continue
        logged = parse_cache_config(run["log"])
        if logged is None:
            raise PlanError(f"fixture run {label!r}: no CacheConfig(... num_gpu_blocks=N ...) in its log")
        inputs = _run_inputs(run, logged)
        predicted = plan(shape, gpu, inputs).policy(inputs.quant_policy).num_gpu_blocks
        checks.append(LogCheck(label, "num_gpu_blocks", predicted, logged.num_gpu_blocks, tol, role))
    return checks


def check_slabs(fixture: dict[str, Any]) -> list[tuple[str, tuple[int, int, int], tuple[int, int, int]]]:
    """TurboMind runs: (label, predicted, logged) (slab_size, object_size, object_count) per logged slab line."""
    from kit.plan.formula import turbomind_slab_bytes
    from kit.plan.shapes import kv_block_bytes

    shape, out = fixture_shape(fixture), []
    for run in fixture["runs"]:
        budget = parse_turbomind_budget(run["log"]) if run.get("backend") == "turbomind" else None
        if not budget or not budget.slabs:
            continue
        block = kv_block_bytes(shape, int(run["quant_policy"]), BLOCK_SIZE, int(run.get("tp", 1)), "turbomind")
        slab = turbomind_slab_bytes(block)
        predicted = (slab, block, slab // block)
        logged = next((s for s in budget.slabs if s[1] == block), budget.slabs[0])
        out.append((run.get("label", ""), predicted, logged))
    return out


def fitted_overheads(fixtures: list[dict[str, Any]]) -> dict[str, float]:
    """Refit the engine-overhead constants from the fixture runs marked `role: fit` (bytes).

    The overhead is what the GPU lacks at KV sizing beyond the weights: TurboMind logs the free memory
    itself; for PyTorch it is recovered from num_gpu_blocks (mid-point of the block's rounding step).
    Keys: pytorch, turbomind-fp16, turbomind-awq.
    """
    samples: dict[str, list[float]] = {}
    for fx in fixtures:
        shape, gpu = fixture_shape(fx), fixture_gpu(fx)
        for run in fx["runs"]:
            if run.get("role") != "fit":
                continue
            awq = run.get("weights") == "awq"
            weights = weight_bytes(shape, int(run.get("awq_group_size", 128)) if awq else None)
            if run.get("backend") == "turbomind":
                budget = parse_turbomind_budget(run["log"])
                assert budget is not None, run.get("label")
                samples.setdefault(f"turbomind-{'awq' if awq else 'fp16'}", []).append(gpu.free_bytes - weights - budget.free_bytes)
                continue
            logged = parse_cache_config(run["log"])
            assert logged is not None, run.get("label")
            inputs = _run_inputs(run, logged)
            ratio = inputs.cache_max_entry_count
            block = size_policy(shape, inputs, gpu.free_bytes - weights, inputs.quant_policy, inputs.max_batch_size or 1024, 1).block_bytes
            runtime = int((inputs.max_prefill_token_num + (inputs.max_batch_size or 1024) * 2) * shape.vocab_size * 2)
            free_at_sizing = (logged.num_gpu_blocks + 0.5) * block / ratio + runtime
            samples.setdefault("pytorch", []).append(gpu.free_bytes - weights - free_at_sizing)
    return {k: statistics.mean(v) for k, v in samples.items()}
