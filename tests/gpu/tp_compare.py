"""Two GPUs of one host: one tp=2 server against two tp=1 replicas, on the same load (issue 19).

    python -m tests.gpu.tp_compare --quantized /tmp/tp/store/<model>-w4a16-4bit --out build/tp2

Both layouts serve the multi-gpu profile's rendered argv (kit.render.serve_args); the replicas
differ only in `--tp 1`, one per GPU (CUDA_VISIBLE_DEVICES) on its own port. A Kubernetes Service
balances connections over its endpoints, so the replicas' load is split the same way: each client
process talks to one replica, half the requests each. Layouts alternate A B A B; each round
records ready time, TurboMind's per-GPU `Object cache budget` lines, batch-1 decode and the
whole-run output tokens/s of N whole responses (lmdeploy's profiler counts the same way).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kit.render import serve_args
from kit.settings import Settings, load_settings
from tests.gpu import openai_load as ol
from tests.gpu.bench_tm import BUDGET_LINE
from tests.gpu.server import ServerRun, gpu_memory

log = logging.getLogger("tp_compare")
LAYOUTS = ("tp2", "replicas")
NCCL_SAFE = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def budgets(text: str) -> list[dict[str, float]]:
    """Every `Object cache budget` line of a log (TurboMind logs one per GPU rank)."""
    return [{"budget_mb": float(b), "free_mb": float(f), "ratio": float(r)} for b, f, r in BUDGET_LINE.findall(text)]


def layout_servers(s: Settings, layout: str, logs: Path, tag: str) -> list[ServerRun]:
    argv = serve_args(s)
    if layout == "tp2":
        return [ServerRun(f"tp2-{tag}", argv, s.serving.port, logs / f"tp2-{tag}.log", env=dict(NCCL_SAFE))]
    one = [*argv[: argv.index("--tp") + 1], "1", *argv[argv.index("--tp") + 2 :]]
    out = []
    for gpu in (0, 1):
        port = s.serving.port + 1 + gpu
        a = [*one[: one.index("--server-port") + 1], str(port), *one[one.index("--server-port") + 2 :]]
        out.append(ServerRun(f"replica{gpu}-{tag}", a, port, logs / f"replica{gpu}-{tag}.log", env={"CUDA_VISIBLE_DEVICES": str(gpu)}))
    return out


def split_load(bases: list[str], model: str, spec: ol.LoadSpec) -> dict[str, Any]:
    """openai_load's run, its client processes dealt round-robin over the endpoints (as a Service
    spreads connections); one clock for all, so tok/s = all output tokens / whole wall time."""
    procs = max(len(bases), spec.procs)
    start_at = time.perf_counter() + 1.0 + 0.3 * procs
    jobs = []
    for p in range(procs):
        indices = list(range(p, spec.requests, procs))
        workers = spec.concurrency // procs + (1 if p < spec.concurrency % procs else 0)
        jobs.append((bases[p % len(bases)], model, spec, indices, workers, start_at))
    with mp.get_context("fork").Pool(procs) as pool:
        records = [r for part in pool.map(ol._child, jobs) for r in part]
    return ol.summarize(records, spec, procs).as_dict()


def run_round(s: Settings, layout: str, tag: str, logs: Path, spec: ol.LoadSpec) -> dict[str, Any]:
    servers = layout_servers(s, layout, logs, tag)
    rec: dict[str, Any] = {"layout": layout, "round": tag, "argv": [x.argv for x in servers]}
    for srv in servers:
        srv.start()
    try:
        for srv in servers:
            if not srv.wait_ready(timeout_s=300):
                raise RuntimeError(f"{srv.name}: {srv.error}")
        rec["ready_s"] = max(x.ready_s or 0 for x in servers)
        rec["budgets"] = [b for x in servers for b in budgets(x.log_text())]
        rec["gpu"] = gpu_memory()
        bases = [x.base_url for x in servers]
        model = ol.served_model(bases[0])
        for base in bases:
            ol.run_load(base, model, ol.LoadSpec(8, 8, 64, 16, stream=False))
        rec["batch1"] = ol.batch1(bases[0], model)
        rec["load"] = split_load(bases, model, spec)
    finally:
        for srv in servers:
            srv.stop()
        time.sleep(3)
    log.info("%s %s: ready %.1f s, %s tok/s", layout, tag, rec.get("ready_s", 0), rec.get("load", {}).get("tok_s"))
    return rec


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layout in LAYOUTS:
        mine = [r for r in rounds if r["layout"] == layout and "load" in r]
        if not mine:
            continue
        tps = [r["load"]["tok_s"] for r in mine]
        b1 = [r["batch1"].get("decode_tok_s") or r["batch1"].get("tok_s") for r in mine]
        out[layout] = {
            "tok_s": {"median": statistics.median(tps), "min": min(tps), "max": max(tps), "n": len(tps)},
            "batch1_tok_s": statistics.median([x for x in b1 if x is not None]) if any(x is not None for x in b1) else None,
            "ready_s": statistics.median([r["ready_s"] for r in mine]),
            "budgets": mine[0]["budgets"],
        }
    if "tp2" in out and "replicas" in out:
        out["replicas_over_tp2"] = round(out["replicas"]["tok_s"]["median"] / out["tp2"]["tok_s"]["median"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.gpu.tp_compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--settings", required=True, help="settings file whose multi-gpu profile points at the quantized model")
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--requests", type=int, default=512)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--procs", type=int, default=8)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.update(NCCL_SAFE)
    s = load_settings("multi-gpu", path=Path(args.settings), overrides={"serving": {"log_level": "INFO"}})
    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    spec = ol.LoadSpec(args.requests, args.requests, args.prompt_tokens, args.max_tokens, stream=False, procs=args.procs, seed=19)
    results: dict[str, Any] = {"load": spec.__dict__, "serve_argv": serve_args(s), "rounds": []}
    for i in range(args.pairs):
        for layout in LAYOUTS if i % 2 == 0 else LAYOUTS[::-1]:
            try:
                results["rounds"].append(run_round(s, layout, str(i), logs, spec))
            except Exception as exc:  # keep what ran; the summary says what is missing
                log.exception("%s round %d failed", layout, i)
                results["rounds"].append({"layout": layout, "round": str(i), "error": f"{type(exc).__name__}: {exc}"[:600]})
            results["summary"] = summarize(results["rounds"])
            (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["summary"], indent=1))
    return 0 if all("error" not in r for r in results["rounds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
