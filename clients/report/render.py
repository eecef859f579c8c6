"""Results dict -> Markdown, through the Jinja2 template next to this file (report.md.j2).

This module turns numbers into table cells and lists what failed; the template owns the layout
and the prose. The planner's predicted KV blocks sit beside the engine's: a planner error for a
known reason (PlanError, SettingsError) is shown as a failed section, anything else is a bug and
propagates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from kit.plan import Gpu, PlanError, plan_for_settings
from kit.settings import SettingsError, load_settings
from kit.table import markdown_table

TEMPLATE = "report.md.j2"
CONFIG_ORDER = ["fp16", "awq-kv0", "awq-kv8", "awq-kv4", "bare"]
CONFIG_LABEL = {
    "fp16": "fp16 weights, KV fp16 (fc)",
    "awq-kv0": "AWQ W4A16, KV fp16",
    "awq-kv8": "AWQ W4A16, KV int8",
    "awq-kv4": "AWQ W4A16, KV int4 (seed)",
    "bare": "bare api_server, AWQ + KV int4",
}
ENV_KEYS = ("gpu", "driver", "cuda", "torch", "transformers", "lmdeploy", "backend", "python")
CLIENT_SECTIONS = ("chat", "funcall", "gpu_report", "webui")


@dataclass
class Planned:
    blocks: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Rendered:
    markdown: str
    failures: list[tuple[str, str]]  # (section, why), empty when every section succeeded


# -- cells -----------------------------------------------------------------------------------
def num(v: Any, nd: int = 1) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def gb(n: Any) -> str:
    return "–" if not n else f"{n / 1e9:.2f} GB"


def configs(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cfg = results.get("configs") or {}
    names = [n for n in CONFIG_ORDER if n in cfg] + [n for n in cfg if n not in CONFIG_ORDER]
    return [(n, cfg[n]) for n in names]


def _find(obj: Any, keys: tuple[str, ...]) -> Any:
    if not isinstance(obj, dict):
        return None
    return next((obj[k] for k in keys if k in obj), None)


# -- planner ---------------------------------------------------------------------------------
def run_serving(argv: list[str]) -> dict[str, Any]:
    """The serving values a benchmark server ran with, read from its argv (engine defaults where a
    flag is absent), so that today's settings.yaml cannot shift the prediction for an old run."""

    def flag(name: str, cast: Any, default: Any) -> Any:
        return cast(argv[argv.index(name) + 1]) if name in argv[:-1] else default

    return {
        "backend": flag("--backend", str, "pytorch"),
        "cache_max_entry_count": flag("--cache-max-entry-count", float, 0.4),
        "max_batch_size": flag("--max-batch-size", int, None),
        "session_len": flag("--session-len", int, None),
        "max_prefill_token_num": flag("--max-prefill-token-num", int, None),
    }


def planner_predictions(results: dict[str, Any]) -> Planned:
    """Predicted num_gpu_blocks per config from kit.plan for the run's GPU (nothing when the run has no GPU size)."""
    env = results.get("environment") or {}
    total = env.get("gpu_total_mib")
    planned = Planned()
    if not total:
        return planned
    gpu = Gpu(env.get("gpu") or "gpu", int(total) * 2**20, int(env.get("gpu_baseline_mib") or 0) * 2**20, "results")
    model_dir = (results.get("model") or {}).get("path")
    model_cfg = str(Path(model_dir) / "config.json") if model_dir and Path(model_dir, "config.json").is_file() else None
    for name, c in configs(results):
        policy = int(c.get("quant_policy", 0))
        serving = {**run_serving(c.get("serve_argv") or []), "quant_policy": policy}
        try:
            s = load_settings(c.get("profile") or "seed", overrides={"serving": serving})
            planned.blocks[name] = plan_for_settings(s, gpu=gpu, model_config=model_cfg).policy(policy).num_gpu_blocks
        except (PlanError, SettingsError) as exc:
            planned.errors[name] = str(exc)
    return planned


# -- what failed -----------------------------------------------------------------------------
def _client_failure(entry: dict[str, Any]) -> str | None:
    rc = entry.get("rc")
    if entry.get("status") != "failed" and rc in (None, 0):
        return None
    verdict = entry.get("json") if isinstance(entry.get("json"), dict) else {}
    tail = [line for line in entry.get("stderr_tail") or [] if line.strip()]
    why = (
        (f"{verdict['verdict']}: {verdict.get('reason', '')}" if verdict.get("verdict") else None)
        or ("the check did not pass" if verdict.get("passed") is False else None)
        or verdict.get("error")
        or entry.get("error")
        or (tail[-1] if tail else None)
        or "no output"
    )
    return (f"exit {rc}: " if rc not in (None, 0) else "") + str(why)


def failures(results: dict[str, Any], planned: Planned) -> list[tuple[str, str]]:
    """Every section that did not succeed: clients, serving configs, bench stages, planner."""
    found: dict[str, str] = {}
    clients = results.get("clients") or {}
    for name in [*CLIENT_SECTIONS, *(k for k in clients if k not in CLIENT_SECTIONS)]:
        entry = clients.get(name)
        if isinstance(entry, dict) and (why := _client_failure(entry)):
            found[name] = why
    for name, c in configs(results):
        if c.get("error"):
            found[f"serving {name}"] = str(c["error"])
    for name, st in (results.get("stages") or {}).items():
        if isinstance(st, dict) and st.get("status") == "failed" and f"serving {name}" not in found:
            found[f"stage {name}"] = str(st.get("error") or "failed")
    for name, err in planned.errors.items():
        found[f"planner {name}"] = err
    return [(k, v.replace("\n", " ")[:200]) for k, v in found.items()]


# -- sections --------------------------------------------------------------------------------
def _serving_rows(results: dict[str, Any], planned: Planned) -> list[list[Any]]:
    rows = []
    for name, c in configs(results):
        kv, b1, s64 = c.get("kv") or {}, c.get("batch1") or {}, c.get("streams64") or {}
        errs = sum(int((c.get(k) or {}).get("errors") or 0) for k in ("batch1", "streams64", "capacity"))
        rows.append(
            [
                CONFIG_LABEL.get(name, name),
                num(c.get("ready_s")),
                num(c.get("gpu_used_mib")),
                num(kv.get("num_gpu_blocks")),
                num(planned.blocks.get(name)) if name not in planned.errors else "planner failed",
                num(kv.get("tokens")),
                num(b1.get("decode_tok_s")),
                num(b1.get("ttft_s"), 3),
                num(s64.get("steady_tok_s") or s64.get("total_tok_s")),
                f"{num(s64.get('ttft_p50_s'), 3)} / {num(s64.get('ttft_p95_s'), 3)}",
                "failed: " + c["error"][:60] if c.get("error") else errs,
            ]
        )
    return rows


def _capacity(results: dict[str, Any]) -> dict[str, Any] | None:
    cap = [(n, c["capacity"]) for n, c in configs(results) if isinstance(c.get("capacity"), dict) and "total_tok_s" in c["capacity"]]
    if not cap:
        return None
    first = cap[0][1]
    rows = [
        [
            CONFIG_LABEL.get(n, n),
            c.get("seqs_fit_this_config", "–"),
            num(c.get("total_tok_s")),
            f"{num(c.get('ttft_p50_s'), 2)} / {num(c.get('ttft_p95_s'), 2)}",
            c.get("requests"),
            c.get("errors"),
        ]
        for n, c in cap
    ]
    prompt = num(first.get("prompt_tokens_measured") or first.get("prompt_tokens_target"))
    return {"first": first, "prompt": prompt, "rows": rows}


def _quantize_rows(q: dict[str, Any]) -> list[list[Any]]:
    runs = (("kit", "kit (`python -m jobs.quantize`)"), ("bare", "bare auto_awq"), ("rerun", "kit, unchanged re-run"))
    return [[label, num(r.get("seconds")), r.get("rc"), num(r.get("peak_gpu_used_mib"))] for key, label in runs if (r := q.get(key) or {})]


def _clients(clients: dict[str, Any]) -> dict[str, Any]:
    chat = clients.get("chat") or {}
    fc = clients.get("funcall") or {}
    gpu = clients.get("gpu_report") or {}
    out: dict[str, Any] = {"raw": clients, "chat": chat, "funcall": fc, "gpu_report": gpu, "webui": clients.get("webui") or {}}
    for name, entry in (("chat", chat), ("funcall", fc), ("gpu_report", gpu)):
        out[f"{name}_failure"] = _client_failure(entry) if entry else None
    if chat:
        reply = _find(chat.get("json"), ("reply", "content", "answer", "text")) or chat.get("stdout") or ""
        tail = "\n".join(chat.get("stderr_tail") or [])
        out["chat_text"] = str(reply).strip()[:1500] or (tail[:1500] if out["chat_failure"] else "") or "(empty)"
    verdict = fc.get("json") if isinstance(fc.get("json"), dict) else {}
    calls = _find(verdict, ("tool_calls", "calls", "trace")) or []
    out["funcall_rows"] = [
        [i + 1, _find(c, ("name", "tool")) or "?", json.dumps(_find(c, ("arguments", "args")) or {}), num(_find(c, ("result", "output")))]
        for i, c in enumerate(calls if isinstance(calls, list) else [])
        if isinstance(c, dict)
    ]
    out["funcall_final"] = num(_find(verdict, ("final_answer", "answer", "final")))
    out["funcall_passed"] = num(_find(verdict, ("passed", "pass", "ok", "verdict")))
    out["funcall_json"] = json.dumps(verdict, indent=2)[:3000] if verdict else ""
    out["funcall_text"] = "" if verdict else (fc.get("stdout") or "\n".join(fc.get("stderr_tail") or []))[:2000]
    if gpu:
        body = json.dumps(gpu["json"], indent=2) if "json" in gpu else (gpu.get("stdout") or "\n".join(gpu.get("stderr_tail") or []))
        out["gpu_text"] = body[:2500]
    return out


def context(results: dict[str, Any], charts: list[str], chart_note: str | None) -> dict[str, Any]:
    """Everything the template shows, as strings and table rows."""
    env = results.get("environment") or {}
    q = results.get("quantize") or {}
    sizes = q.get("sizes_bytes") or results.get("sizes_bytes") or {}
    over = results.get("settings_overrides")
    planned = planner_predictions(results) if results.get("configs") else Planned()
    ratio = f"{sizes['fp16'] / sizes['w4a16']:.2f}×" if sizes.get("fp16") and sizes.get("w4a16") else "–"
    return {
        "source": results.get("source") or "GPU benchmark (tests/gpu/bench.py)",
        "started": results.get("started", "?"),
        "finished": results.get("finished") or results.get("updated") or "?",
        "kind": results.get("kind", "full"),
        "failures": failures(results, planned),
        "env_row": [env.get(k, "–") or "–" for k in ENV_KEYS],
        "model": results.get("model") or {},
        "overrides": json.dumps(over.get("serving", over)) if over else "",
        "sizes_row": [gb(sizes.get("fp16")), gb(sizes.get("w4a16")), ratio] if sizes.get("fp16") or sizes.get("w4a16") else None,
        "quantize": q if q.get("kit") or q.get("bare") else None,
        "quantize_rows": _quantize_rows(q),
        "serving_rows": _serving_rows(results, planned) if results.get("configs") else [],
        "capacity": _capacity(results),
        "ratios": [
            [
                k,
                num(v.get("value"), 3),
                v.get("target", v.get("info", "")),
                "PASS" if v.get("pass") else ("FAIL" if "pass" in v else ""),
                v.get("basis", ""),
            ]
            for k, v in (results.get("ratios") or {}).items()
        ],
        "notes": results.get("notes") or [],
        "clients": _clients(results.get("clients") or {}),
        "charts": [(Path(c).stem, Path(c).name) for c in charts],
        "chart_note": chart_note,
        "stages": [
            [k, v.get("status"), num(v.get("seconds")), (v.get("error") or "")[:120]] for k, v in (results.get("stages") or {}).items()
        ],
    }


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals.update(table=markdown_table, num=num, label=lambda n: CONFIG_LABEL.get(n, n))
    return env


def render_markdown(results: dict[str, Any], charts: list[str] | None = None, chart_note: str | None = None) -> Rendered:
    ctx = context(results, charts or [], chart_note)
    text = _environment().get_template(TEMPLATE).render(ctx)
    return Rendered(text.rstrip() + "\n", ctx["failures"])
