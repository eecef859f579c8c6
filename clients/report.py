"""The homework's evidence as Markdown + PNG, without screenshots (`make report`).

    python -m clients.report --from docs/benchmarks/results.json --out docs/benchmarks
    python -m clients.report --out build/report            # from the live service

From a benchmark's results.json (tests/gpu/bench.py) or from the live service (model list, a chat
reply, the function-call check, the GPU report, model sizes on this host), it writes README.md with:
environment, model sizes (fp16 vs W4A16), GPU memory at serve time, a chat reply, the function-call
trace, the benchmark table, the targets with pass/fail, the planner's predicted KV blocks beside the
engine's, and PNG charts (matplotlib; skipped with a note when it is not installed).

Environment: KIT_SETTINGS, PROFILE (settings), OPENAI_BASE_URL / OPENAI_API_KEY (live mode).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kit.exitcodes import FAILED, OK, USAGE
from kit.logs import add_verbosity, setup_logging

log = logging.getLogger("report")
CONFIG_ORDER = ["fp16", "awq-kv0", "awq-kv8", "awq-kv4", "bare"]
CONFIG_LABEL = {
    "fp16": "fp16 weights, KV fp16 (fc)",
    "awq-kv0": "AWQ W4A16, KV fp16",
    "awq-kv8": "AWQ W4A16, KV int8",
    "awq-kv4": "AWQ W4A16, KV int4 (seed)",
    "bare": "bare api_server, AWQ + KV int4",
}


# -- formatting helpers ----------------------------------------------------------------------
def _num(v: Any, nd: int = 1) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def _gb(n: Any) -> str:
    return "–" if not n else f"{n / 1e9:.2f} GB"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _configs(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cfg = results.get("configs") or {}
    names = [n for n in CONFIG_ORDER if n in cfg] + [n for n in cfg if n not in CONFIG_ORDER]
    return [(n, cfg[n]) for n in names]


# -- planner ---------------------------------------------------------------------------------
def planner_predictions(results: dict[str, Any]) -> dict[str, int]:
    """Predicted num_gpu_blocks per config from kit.plan for the run's GPU (empty when unavailable)."""
    env = results.get("environment") or {}
    total = env.get("gpu_total_mib")
    if not total:
        return {}
    try:
        from kit.plan import Gpu, PlanError, plan_for_settings
        from kit.settings import load_settings
    except ImportError as exc:
        log.info("planner unavailable: %s", exc)
        return {}
    used = (results.get("environment") or {}).get("gpu_baseline_mib") or 0
    gpu = Gpu(env.get("gpu") or "gpu", int(total) * 2**20, int(used) * 2**20, "results")
    out: dict[str, int] = {}
    for name, c in _configs(results):
        try:
            s = load_settings(
                c.get("profile") or "seed",
                overrides={"serving": {"backend": "pytorch", "quant_policy": c.get("quant_policy", 0), "cache_max_entry_count": 0.4}},
            )
            model_cfg = (results.get("model") or {}).get("path")
            model_cfg = str(Path(model_cfg) / "config.json") if model_cfg and Path(model_cfg, "config.json").is_file() else None
            out[name] = plan_for_settings(s, gpu=gpu, model_config=model_cfg).policy(int(c.get("quant_policy", 0))).num_gpu_blocks
        except (PlanError, Exception) as exc:  # the planner is a guest here: never fail the report for it
            log.info("planner failed for %s: %s", name, exc)
    return out


# -- Markdown --------------------------------------------------------------------------------
def render_markdown(results: dict[str, Any], charts: list[str], chart_note: str | None = None) -> str:
    env = results.get("environment") or {}
    lines = ["# lmdeploy-kit evidence report", ""]
    source = results.get("source") or "GPU benchmark (tests/gpu/bench.py)"
    lines += [
        f"Source: {source}; run {results.get('started', '?')} → {results.get('finished') or results.get('updated') or '?'} ({results.get('kind', 'full')}).",
        "",
    ]
    lines += ["## Environment", ""]
    lines += [
        _table(
            ["GPU", "driver", "CUDA", "torch", "transformers", "lmdeploy", "backend", "python"],
            [[env.get(k, "–") or "–" for k in ("gpu", "driver", "cuda", "torch", "transformers", "lmdeploy", "backend", "python")]],
        ),
        "",
    ]
    model = results.get("model") or {}
    if model:
        arch = model.get("arch", "?")
        fb = " (fallback: InternLM2 build failed)" if model.get("fallback") else ""
        lines += [
            f"Model: random weights of the internlm2_5-1_8b-chat shape, {arch} architecture{fb}, {_num(model.get('params'))} parameters.",
            "",
        ]
    over = results.get("settings_overrides")
    if over:
        lines += [
            f"Settings overrides for every server: `{json.dumps(over.get('serving', over))}` (TurboMind cannot run on the test machine; INFO logs carry the KV CacheConfig).",
            "",
        ]

    q = results.get("quantize") or {}
    sizes = q.get("sizes_bytes") or results.get("sizes_bytes") or {}
    lines += ["## Model sizes", ""]
    if sizes.get("fp16") or sizes.get("w4a16"):
        ratio = f"{sizes['fp16'] / sizes['w4a16']:.2f}×" if sizes.get("fp16") and sizes.get("w4a16") else "–"
        lines += [_table(["fp16", "W4A16 (AWQ)", "fp16 / W4A16"], [[_gb(sizes.get("fp16")), _gb(sizes.get("w4a16")), ratio]]), ""]
    else:
        lines += ["No model sizes recorded.", ""]

    if q.get("kit") or q.get("bare"):
        lines += ["## Quantization: kit vs bare `lmdeploy lite auto_awq`", ""]
        rows = []
        for key, label in (("kit", "kit (`python -m jobs.quantize`)"), ("bare", "bare auto_awq"), ("rerun", "kit, unchanged re-run")):
            r = q.get(key) or {}
            if r:
                rows.append([label, _num(r.get("seconds")), r.get("rc"), _num(r.get("peak_gpu_used_mib"))])
        lines += [_table(["run", "wall s", "exit", "peak GPU MiB"], rows), ""]
        if q.get("bare_cmd"):
            lines += [f"Bare command: `{q['bare_cmd']}`", ""]
        if q.get("bare_note"):
            lines += [q["bare_note"] + ".", ""]

    cfgs = _configs(results)
    if cfgs:
        planned = planner_predictions(results)
        lines += ["## Serving: per config (cache-max-entry-count 0.4)", ""]
        rows = []
        for name, c in cfgs:
            kv = c.get("kv") or {}
            b1 = c.get("batch1") or {}
            s64 = c.get("streams64") or {}
            errs = sum(int((c.get(k) or {}).get("errors") or 0) for k in ("batch1", "streams64", "capacity"))
            rows.append(
                [
                    CONFIG_LABEL.get(name, name),
                    _num(c.get("ready_s")),
                    _num(c.get("gpu_used_mib")),
                    _num(kv.get("num_gpu_blocks")),
                    _num(planned.get(name)),
                    _num(kv.get("tokens")),
                    _num(b1.get("decode_tok_s")),
                    _num(b1.get("ttft_s"), 3),
                    _num(s64.get("steady_tok_s") or s64.get("total_tok_s")),
                    f"{_num(s64.get('ttft_p50_s'), 3)} / {_num(s64.get('ttft_p95_s'), 3)}",
                    "failed: " + c["error"][:60] if c.get("error") else errs,
                ]
            )
        lines += [
            _table(
                [
                    "config",
                    "ready s",
                    "GPU MiB",
                    "KV blocks",
                    "planned blocks",
                    "KV tokens",
                    "batch-1 tok/s",
                    "batch-1 TTFT s",
                    "64 streams tok/s",
                    "TTFT p50 / p95 s",
                    "errors",
                ],
                rows,
            ),
            "",
        ]
        lines += ["Batch-1: median of 3 requests; 64 streams: closed loop over the stated seconds, steady-window output tok/s. "
                  "On the PyTorch backend AWQ runs on a Triton kernel that is slower than fp16 at batch 1.", ""]  # fmt: skip
        cap = [(n, c["capacity"]) for n, c in cfgs if isinstance(c.get("capacity"), dict) and "total_tok_s" in c["capacity"]]
        if cap:
            first = cap[0][1]
            lines += ["## Capacity-bound load", ""]
            lines += [
                f"{first.get('concurrency')} concurrent streams of ~{_num(first.get('prompt_tokens_measured') or first.get('prompt_tokens_target'))}-token prompts, "
                f"{first.get('max_tokens')} new tokens each; the fp16 KV cache holds {first.get('fp16_seqs_fit')} such sequences at once.",
                "",
            ]
            rows = [
                [
                    CONFIG_LABEL.get(n, n),
                    c.get("seqs_fit_this_config", "–"),
                    _num(c.get("total_tok_s")),
                    f"{_num(c.get('ttft_p50_s'), 2)} / {_num(c.get('ttft_p95_s'), 2)}",
                    c.get("requests"),
                    c.get("errors"),
                ]
                for n, c in cap
            ]
            lines += [_table(["config", "sequences that fit", "output tok/s", "TTFT p50 / p95 s", "requests", "errors"], rows), ""]

    ratios = results.get("ratios") or {}
    if ratios:
        lines += ["## Targets (ratios measured in this run)", ""]
        rows = [
            [
                k,
                _num(v.get("value"), 3),
                v.get("target", v.get("info", "")),
                "PASS" if v.get("pass") else ("FAIL" if "pass" in v else ""),
                v.get("basis", ""),
            ]
            for k, v in ratios.items()
        ]
        lines += [_table(["ratio", "value", "target", "result", "basis"], rows), ""]
    notes = results.get("notes") or []
    if notes:
        lines += ["### Notes on these results", ""] + [f"- {n}" for n in notes] + [""]

    lines += _clients_section(results.get("clients") or {})
    if charts:
        lines += ["## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts] + [""]
    elif chart_note:
        lines += [f"_Charts: {chart_note}_", ""]
    stages = results.get("stages") or {}
    if stages:
        lines += ["## Stages", ""]
        lines += [
            _table(
                ["stage", "status", "seconds", "error"],
                [[k, v.get("status"), _num(v.get("seconds")), (v.get("error") or "")[:120]] for k, v in stages.items()],
            ),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def _clients_section(clients: dict[str, Any]) -> list[str]:
    if not clients:
        return []
    lines = ["## Clients against the served model", ""]
    if clients.get("server"):
        lines += [
            f"Server: {clients['server']} config, model `{clients.get('served_model', '?')}`; replies recorded through {clients.get('proxy', 'a proxy')}.",
            "",
        ]
    chat = clients.get("chat") or {}
    if chat:
        reply = _find(chat.get("json"), ("reply", "content", "answer", "text")) or chat.get("stdout") or ""
        lines += [
            "### Chat (one-shot)",
            "",
            f"`{chat.get('cmd', '')}` → exit {chat.get('rc')}",
            "",
            "```text",
            str(reply).strip()[:1500] or "(empty)",
            "```",
            "",
        ]
    fc = clients.get("funcall") or {}
    if fc:
        verdict = fc.get("json") if isinstance(fc.get("json"), dict) else {}
        lines += [
            "### Function call (add/mul, (3+5)*2)",
            "",
            f"`{fc.get('cmd', '')}` → exit {fc.get('rc')}" + (f"; {fc['note']}" if fc.get("note") else ""),
            "",
        ]
        calls = _find(verdict, ("tool_calls", "calls", "trace")) or []
        if isinstance(calls, list) and calls:
            rows = [
                [
                    i + 1,
                    _find(c, ("name", "tool")) or "?",
                    json.dumps(_find(c, ("arguments", "args")) or {}),
                    _num(_find(c, ("result", "output"))),
                ]
                for i, c in enumerate(calls)
                if isinstance(c, dict)
            ]
            lines += [_table(["#", "tool", "arguments", "result"], rows), ""]
        final = _find(verdict, ("final_answer", "answer", "final"))
        passed = _find(verdict, ("passed", "pass", "ok", "verdict"))
        lines += [f"Final answer: {_num(final)}; verdict: {_num(passed)} (expected 16).", ""]
        if verdict:
            lines += ["```json", json.dumps(verdict, indent=2)[:3000], "```", ""]
        elif fc.get("stdout") or fc.get("stderr_tail"):
            lines += ["```text", (fc.get("stdout") or "\n".join(fc.get("stderr_tail") or []))[:2000], "```", ""]
    gpu = clients.get("gpu_report") or {}
    if gpu:
        lines += ["### GPU report", "", f"`{gpu.get('cmd', '')}` → exit {gpu.get('rc')}", ""]
        body = json.dumps(gpu["json"], indent=2) if "json" in gpu else (gpu.get("stdout") or "\n".join(gpu.get("stderr_tail") or []))
        lines += ["```text", body[:2500], "```", ""]
    web = clients.get("webui") or {}
    if web:
        lines += [
            "### Gradio page",
            "",
            f"status {web.get('status')}, HTTP {web.get('http_status', '–')}" + (f", {web['error']}" if web.get("error") else ""),
            "",
        ]
    return lines


def _find(obj: Any, keys: tuple[str, ...]) -> Any:
    if not isinstance(obj, dict):
        return None
    for k in keys:
        if k in obj:
            return obj[k]
    return None


# -- charts ----------------------------------------------------------------------------------
def render_charts(results: dict[str, Any], out: Path) -> tuple[list[str], str | None]:
    """PNG bar charts; ([], reason) when matplotlib is missing or nothing was measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (pip install -r requirements/report.txt), no PNG written"
    cfgs = _configs(results)
    made: list[str] = []

    def bar(filename: str, title: str, ylabel: str, items: list[tuple[str, float]], note: str = "") -> None:
        items = [(k, v) for k, v in items if v]
        if not items:
            return
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
        bars = ax.bar([k for k, _ in items], [v for _, v in items], color="#4C72B0")
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.2f}" for _, v in items], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if note:
            fig.text(0.01, 0.01, note, fontsize=7, color="#555")
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        fig.savefig(out / filename)
        plt.close(fig)
        made.append(str(out / filename))

    env = results.get("environment") or {}
    note = f"{env.get('gpu', '?')}, lmdeploy {env.get('lmdeploy', '?')}, backend {env.get('backend', '?')}"
    bar(
        "kv-capacity.png",
        "KV cache tokens at cache-max-entry-count 0.4",
        "tokens",
        [(n, (c.get("kv") or {}).get("tokens")) for n, c in cfgs],
        note,
    )
    bar(
        "throughput-64.png",
        "64 concurrent streams: output tok/s",
        "tok/s",
        [(n, (c.get("streams64") or {}).get("steady_tok_s") or (c.get("streams64") or {}).get("total_tok_s")) for n, c in cfgs],
        note,
    )
    bar(
        "batch1-decode.png",
        "Batch-1 decode tok/s (median of 3)",
        "tok/s",
        [(n, (c.get("batch1") or {}).get("decode_tok_s")) for n, c in cfgs],
        note,
    )
    bar(
        "capacity-load.png",
        "Capacity-bound load: output tok/s",
        "tok/s",
        [(n, (c.get("capacity") or {}).get("total_tok_s")) for n, c in cfgs],
        note,
    )
    return made, None if made else "nothing measured to chart"


def write_report(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    charts, note = render_charts(results, out)
    md = out / "README.md"
    md.write_text(render_markdown(results, charts, note))
    return md


# -- live mode -------------------------------------------------------------------------------
def _get(url: str, key: str | None, payload: Any = None, timeout: float = 120) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode() if payload is not None else None)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")[:300]


def _client(module: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", module, *args]
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"cmd": " ".join(cmd[2:]), "rc": FAILED, "status": "failed", "stderr_tail": [str(exc)]}
    res: dict[str, Any] = {"cmd": " ".join(cmd[2:]), "rc": cp.returncode, "status": "ok" if cp.returncode == 0 else "failed"}
    try:
        res["json"] = json.loads(cp.stdout)
    except ValueError:
        res["stdout"] = cp.stdout[-3000:]
    if cp.returncode:
        res["stderr_tail"] = cp.stderr.strip().splitlines()[-3:]
    return res


def collect_live(base_url: str, api_key: str | None, profile: str | None) -> dict[str, Any]:
    """A results-shaped dict from the running service and this host."""
    from kit.settings import load_settings

    s = load_settings(profile)
    root = base_url.rstrip("/").removesuffix("/v1")
    status, health = _get(root + "/health", None, timeout=10)
    if status != 200:
        raise ConnectionError(f"{root}/health answered {status}: {health}")
    status, models = _get(base_url.rstrip("/") + "/models", api_key, timeout=20)
    if status != 200:
        raise ConnectionError(f"{base_url}/models answered {status}: {models}")
    env = {**os.environ, "OPENAI_BASE_URL": base_url, **({"OPENAI_API_KEY": api_key} if api_key else {})}
    clients = {
        "served_model": models["data"][0]["id"] if models.get("data") else "?",
        "server": f"live ({base_url})",
        "proxy": "no proxy (live)",
        "chat": _client("clients.chat", ["--prompt", "Introduce yourself in one sentence."], env),
        "funcall": _client("clients.funcall", ["--json"], env),
        "gpu_report": _client("clients.gpu_report", ["--json"], env),
    }
    sizes = {}
    for key, path in (("fp16", s.fp16_path), ("w4a16", s.quantized_path)):
        p = Path(path)
        if p.is_dir():
            sizes[key] = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return {
        "source": f"live service {base_url} (profile {s.profile})",
        "kind": "live",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {"backend": s.serving.backend, "lmdeploy": s.versions.lmdeploy},
        "sizes_bytes": sizes,
        "clients": clients,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clients.report",
        description="Write the evidence report (Markdown + PNG) from a results.json or the live service.",
        epilog="Environment: OPENAI_BASE_URL, OPENAI_API_KEY (live mode), KIT_SETTINGS, PROFILE.",
    )
    p.add_argument("--from", dest="source", metavar="FILE", help="a results.json written by tests/gpu/bench.py")
    p.add_argument("--out", default=None, help="output directory (default: the results file's directory, else build/report)")
    p.add_argument(
        "--base-url", default=None, help="live mode: API base URL (default OPENAI_BASE_URL, else the settings' port on 127.0.0.1)"
    )
    p.add_argument("--profile", default=None, help="settings profile (default PROFILE, else default)")
    p.add_argument("--json", action="store_true", help="print the collected results as JSON instead of the report path")
    add_verbosity(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if args.source:
        src = Path(args.source)
        try:
            results = json.loads(src.read_text())
        except FileNotFoundError:
            print(f"report: {src} not found; run `make bench` or pass a results.json", file=sys.stderr)
            return USAGE
        except json.JSONDecodeError as exc:
            print(f"report: {src} is not valid JSON: {exc}", file=sys.stderr)
            return USAGE
        if not isinstance(results, dict) or not ({"configs", "clients", "quantize"} & set(results)):
            print(f"report: {src} is not a benchmark results file (no configs/clients/quantize)", file=sys.stderr)
            return USAGE
        out = Path(args.out) if args.out else src.parent
    else:
        from kit.render import api_base_url
        from kit.settings import SettingsError, load_settings

        try:
            base = args.base_url or os.environ.get("OPENAI_BASE_URL") or api_base_url(load_settings(args.profile))
            results = collect_live(base, os.environ.get("OPENAI_API_KEY"), args.profile)
        except SettingsError as exc:
            print(f"report: {exc}", file=sys.stderr)
            return USAGE
        except (ConnectionError, OSError) as exc:
            print(f"report: cannot reach the service: {exc}", file=sys.stderr)
            return FAILED
        out = Path(args.out or "build/report")
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    md = write_report(results, out)
    print(json.dumps(results, indent=2) if args.json else md)
    return OK


if __name__ == "__main__":
    sys.exit(main())
