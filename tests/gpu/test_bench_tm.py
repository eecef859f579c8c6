"""The TurboMind benchmark's parts on the CPU: the openai-SDK load generator against a local streaming
server (whole-run tokens, TTFT, several processes), the ratios with their verdicts, TurboMind's budget line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.gpu import bench_tm
from tests.gpu import openai_load as ol
from tests.gpu.fake_server import FakeServer


@pytest.fixture
def server():
    srv = FakeServer(ttft_s=0.05, delay_s=0.002)
    base = srv.start() + "/v1"
    yield srv, base
    srv.stop()


def test_whole_run_tokens_over_wall_time_from_several_processes(server) -> None:
    srv, base = server
    spec = ol.LoadSpec(requests=24, concurrency=6, prompt_chars=100, max_tokens=10, stream=True, procs=3)
    stats = ol.run_load(base, ol.served_model(base), spec)
    assert (stats.requests, stats.errors, stats.procs) == (24, 0, 3)
    assert stats.output_tokens == 240 and stats.prompt_tokens == 24 * 110  # the server's usage, not a guess
    assert stats.tok_s == pytest.approx(240 / stats.wall_s, rel=0.01)
    assert 0.05 <= stats.ttft_p50_s <= stats.ttft_p95_s < 10.0  # first content chunk after the server's TTFT (busy CI: loose top)
    sent = [r["json"] for r in srv.requests if r["path"] == "/v1/chat/completions"]
    assert len(sent) == 24 and all(p["ignore_eos"] is True for p in sent)
    assert len({p["messages"][0]["content"] for p in sent}) == 24 and all(len(p["messages"][0]["content"]) == 100 for p in sent)


def test_whole_responses_have_no_ttft_and_errors_are_counted(server) -> None:
    srv, base = server
    srv.fail_every = 4
    stats = ol.run_load(base, "fake-model", ol.LoadSpec(8, 2, 20, 5, stream=False))
    assert stats.errors == 2 and stats.output_tokens == 30 and stats.ttft_p50_s is None
    assert stats.first_errors and "500" in stats.first_errors[0]


def run(who: str, pair: int, tok_s: float) -> dict:
    return {"who": who, "pair": pair, "ready_s": 16.0, "load": {"tok_s": tok_s, "errors": 0}}


def cap_run(config: str, rnd: int, tok_s: float) -> dict:
    return {"config": config, "round": rnd, "load": {"tok_s": tok_s, "errors": 0}}


def test_ratios_use_medians_of_alternating_runs_and_carry_verdicts() -> None:
    runs = [run("kit", 0, 100), run("bare", 0, 100), run("bare", 1, 110), run("kit", 1, 90), run("kit", 2, 95), run("bare", 2, 100)]
    cap = [cap_run("fp16", 0, 1000), cap_run("awq-kv4", 0, 1490), cap_run("awq-kv4", 1, 1600), cap_run("fp16", 1, 1100)]
    cap += [cap_run("fp16", 2, 900), cap_run("awq-kv4", 2, 1400)]
    r = bench_tm.compute_ratios({"pairs": {"runs": runs}, "capacity": {"runs": cap}})
    t = r["throughput_kit_over_bare"]
    assert t["value"] == 0.95 and t["pass"] is True and t["pair_ratios"] == [1.0, 0.818, 0.95]
    assert t["kit_tok_s"] == {"median": 95, "min": 90, "max": 100, "n": 3}
    c = r["capacity_kv4_over_fp16"]  # median 1490 / median 1000, not a mean or the best round
    assert c["value"] == 1.49 and c["pass"] is False and c["round_ratios"] == [1.49, 1.455, 1.556]
    cap[1]["load"]["tok_s"] = 1510
    assert bench_tm.compute_ratios({"capacity": {"runs": cap}})["capacity_kv4_over_fp16"]["pass"] is True
    for rec in cap:
        if rec["config"] == "awq-kv4":
            rec["load"]["errors"] = 3  # runs with failed requests give no ratio
    assert "capacity_kv4_over_fp16" not in bench_tm.compute_ratios({"capacity": {"runs": cap}})


class FakeBench(bench_tm.Bench):
    """The stage logic without servers: each run's tok/s comes from `speed(settings)`."""

    def __init__(self, args, speed) -> None:
        super().__init__(args)
        self.speed, self.order, self.kit_servers = speed, [], []

    def serve(self, label, argv, port, work, kit=True):
        self.order.append(label)
        self.kit_servers.append(label) if kit else None
        mp = int(argv[argv.index("--max-prefill-token-num") + 1]) if "--max-prefill-token-num" in argv else None
        return {"argv": argv, "ready_s": 1.0, "load": {"tok_s": self.speed(label, mp), "errors": 0}, "batch1": {"decode_tok_s": 1.0}}


def test_capacity_alternates_rounds_and_sweep_adopts_the_fastest_prefill_budget(tmp_path) -> None:
    argv = ["--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "w"), "--stages", "sweep,capacity,pairs"]
    argv += ["--sweep-prefill", "8192,16384,32768", "--adopt", "--pairs", "1"]
    args = bench_tm.build_parser().parse_args(argv)
    bench_tm.normalize(args)
    # 32768 wins: not the settings' default, so only adoption can put it into the later servers' argv
    bench = FakeBench(args, lambda label, mp: {8192: 100.0, 16384: 120.0, 32768: 130.0}.get(mp, 50.0))
    bench.write_settings()
    for name in ("sweep", "capacity", "pairs"):
        getattr(bench, f"stage_{name}")()
    assert bench.results["sweep"]["best"] == 32768
    assert bench.order == ["sweep-8192", "sweep-16384", "sweep-32768", "fp16-0", "awq-kv4-0", "awq-kv8-0"] + [
        "awq-kv4-1", "fp16-1", "fp16-2", "awq-kv4-2", "kit-0", "bare-0"]  # fmt: skip
    kit, bare = bench.results["pairs"]["kit_argv"], bench.results["pairs"]["bare_argv"]
    for cmd in (kit, bare, *(r["argv"] for r in bench.results["capacity"]["runs"])):
        assert cmd[cmd.index("--max-prefill-token-num") + 1] == "32768"  # the adopted value reaches every later server


def test_parse_budget_reads_turbomind_line() -> None:
    log = "Loading...\n[TM][INFO][x][turbomind.cc:338] Object cache budget: 110868.10 MB from free 138585.12 MB and ratio 0.800\n"
    assert bench_tm.parse_budget(log) == {"budget_mb": 110868.1, "free_mb": 138585.12, "ratio": 0.8}
    assert bench_tm.parse_budget("no budget here") is None


def test_a_sweep_of_any_setting_is_adopted_by_the_kit_and_the_bare_server_alike(tmp_path) -> None:
    argv = ["--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "w"), "--stages", "sweep,capacity,pairs"]
    argv += ["--sweep", "serving.enable_metrics=true,false", "--adopt", "--pairs", "1", "--cap-rounds", "1", "--configs", "awq-kv4"]
    args = bench_tm.build_parser().parse_args(argv)
    bench_tm.normalize(args)
    bench = FakeBench(args, lambda label, mp: 90.0 if label == "sweep-True" else 100.0)
    bench.write_settings()
    for name in ("sweep", "capacity", "pairs"):
        getattr(bench, f"stage_{name}")()
    sweep = bench.results["sweep"]
    assert (sweep["key"], [r["value"] for r in sweep["runs"]], sweep["best"]) == ("serving.enable_metrics", [True, False], False)
    assert "--disable-metrics" not in sweep["runs"][0]["argv"] and "--disable-metrics" in sweep["runs"][1]["argv"]
    pairs = bench.results["pairs"]
    for cmd in (pairs["kit_argv"], pairs["bare_argv"], bench.results["capacity"]["runs"][0]["argv"]):
        assert "--disable-metrics" in cmd  # adopted: every later server, bare included (same engine config)
    assert "bare-0" in bench.order and "bare-0" not in bench.kit_servers and "kit-0" in bench.kit_servers


FIXTURES = Path(__file__).parent / "fixtures"


def test_inflight_counts_the_sequences_the_engine_held_from_a_recorded_log() -> None:
    """Admission and finish lines of two servers of the 2026-12-01 H200 run (docs/benchmarks/turbomind, round 0):
    1600 streams offered; the KV int4 server had room for ~2,100 but never held half of them."""
    kv4 = bench_tm.inflight(gzip.open(FIXTURES / "tm-server-awq-kv4-0.sched.log.gz", "rt").read(), min_output_tokens=1024)
    fp16 = bench_tm.inflight(gzip.open(FIXTURES / "tm-server-fp16-0.sched.log.gz", "rt").read(), min_output_tokens=1024)
    assert {k: kv4[k] for k in ("requests", "peak", "median", "all_admitted_s", "span_s")} == {
        "requests": 1600, "peak": 771, "median": 375, "all_admitted_s": 54.0, "span_s": 63.3}  # fmt: skip
    assert (fp16["peak"], fp16["median"], fp16["all_admitted_s"]) == (811, 756, 74.3)
    # lmdeploy's own counters agree: KV int4 never waited on its cache (32 % used), fp16 did (98 %)
    assert kv4["engine_stats"] == {"samples": 7, "routed_peak": 772, "running_median": 360, "waiting_median": 0, "kv_cache_peak_pct": 32.2}
    assert fp16["engine_stats"] == {
        "samples": 9,
        "routed_peak": 1018,
        "running_median": 670,
        "waiting_median": 39,
        "kv_cache_peak_pct": 98.4,
    }


def test_inflight_skips_warmup_requests_and_unfinished_ones() -> None:
    log = "\n".join([
        "[TM][INFO][1201.04:00:00.000000][scheduler.cc:1488] req 1 (uid 1) resume [0,0) 0 blk | computed [0,84) 84 tok",
        "2026-12-01 04:00:00,500 - lmdeploy - INFO - async_engine.py:781 - session 1 finished, reason \"length\", input_tokens 84, output_tokens 16",
        "[TM][INFO][1201.04:00:01.000000][scheduler.cc:1488] req 2 (uid 2) resume [0,0) 0 blk | computed [0,1044) 1044 tok",
        "[TM][INFO][1201.04:00:02.000000][scheduler.cc:1488] req 3 (uid 3) resume [0,0) 0 blk | computed [0,1044) 1044 tok",
        "[TM][INFO][1201.04:00:02.500000][scheduler.cc:1488] req 3 (uid 4) resume [0,0) 0 blk | computed [0,1044) 1044 tok",
        "[TM][INFO][1201.04:00:03.000000][scheduler.cc:1488] req 4 (uid 5) resume [0,0) 0 blk | computed [0,1044) 1044 tok",
        "2026-12-01 04:00:04,000 - lmdeploy - INFO - async_engine.py:781 - session 2 finished, reason \"length\", input_tokens 1044, output_tokens 64",
        "2026-12-01 04:00:05,000 - lmdeploy - INFO - async_engine.py:781 - session 3 finished, reason \"length\", input_tokens 1044, output_tokens 64",
    ])  # fmt: skip
    got = bench_tm.inflight(log, min_output_tokens=64)
    assert got == {"requests": 2, "peak": 2, "median": 1, "all_admitted_s": 1.0, "span_s": 4.0}  # 0.5 s samples over [1 s, 5 s]
    stats = "[2026-12-01 04:00:0{} DP0] Avg thr (in/out): 1.0 / 2.0 tokens/s, Server (succeeded/failed/routed/waiting): 0 / 0 / {} / 0, Engine (running/waiting): {} / {}, KV cache: {}%, "
    log += "\n" + "\n".join(stats.format(*x) for x in [(1, 0, 0, 0, 0.0), (2, 2, 1, 1, 40.5), (3, 3, 2, 0, 55.0), (4, 3, 2, 0, 50.0)])
    assert bench_tm.inflight(log, 64)["engine_stats"] == {  # the idle sample (nothing running) is left out
        "samples": 3, "routed_peak": 3, "running_median": 2, "waiting_median": 0, "kv_cache_peak_pct": 55.0}  # fmt: skip
    assert bench_tm.inflight("no scheduler lines", 64) is None


def test_reparse_recomputes_inflight_from_the_logs_beside_the_results(tmp_path) -> None:
    import io
    import json
    import tarfile

    log = gzip.open(FIXTURES / "tm-server-awq-kv4-0.sched.log.gz", "rb").read()
    with tarfile.open(tmp_path / "logs.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("logs/server-awq-kv4-0.log")
        info.size = len(log)
        tar.addfile(info, io.BytesIO(log))
    load = {"max_tokens": 1024}
    results = {"capacity": {"load": load, "runs": [{"config": "awq-kv4", "round": 0}, {"config": "fp16", "round": 0}]}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert bench_tm.main(["--reparse", str(tmp_path / "results.json")]) == 0
    runs = json.loads((tmp_path / "results.json").read_text())["capacity"]["runs"]
    assert runs[0]["inflight"]["peak"] == 771 and "inflight" not in runs[1]  # no log for fp16-0: left as it was
