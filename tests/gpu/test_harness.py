"""CPU tests of the GPU benchmark harness: argv from settings, engine-log parsing, ratios and
targets, the results file, servers started and stopped, the PyTorch benchmark's loads (openai_load)
and the recording proxy against a local streaming server, its load records read by clients/report."""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clients.report.render import context, num
from kit.render import serve_args
from tests.gpu import bench, bench_loads
from tests.gpu import openai_load as ol
from tests.gpu.bench_harness import TIMEOUT_RC, run_to_log
from tests.gpu.fake_server import FakeServer
from tests.gpu.server import kv_capacity, parse_cache_configs, python_argv
from tests.support.net import free_port
from tests.support.replay import Recorder

# As lmdeploy 0.18's PyTorch engine logs it at INFO (pytorch/engine/executor/base.py).
ENGINE_LOG = (
    """\
2026-11-20 10:00:00,001 - lmdeploy - INFO - async_engine.py:120 - input backend=pytorch
2026-11-20 10:00:41,523 - lmdeploy - INFO - base.py:439 - Building CacheEngine with config:"""
    + " \n"
    + """CacheConfig(max_batches=1024, block_size=64, num_cpu_blocks=512, num_gpu_blocks=34932, kernel_block_size=64, window_size=-1, cache_max_entry_count=0.4, max_prefill_token_num=8192, cudagraph_capture_batch_sizes=[1, 2, 4, 8], enable_prefix_caching=False, quant_policy=<QuantPolicy.INT4: 4>, device_type='cuda', num_state_caches=None, prefix_cache_state_budget=0, prefix_cache_decode_state_interval=0, states_shapes=[], num_reserved_gpu_blocks=0, role=<EngineRole.Hybrid: 1>, migration_backend=<MigrationBackend.DLSlime: 1>, kv_transfer_config=None).
2026-11-20 10:01:02,000 - lmdeploy - INFO - api_server.py:500 - Uvicorn running on http://0.0.0.0:23333
"""
)


@pytest.fixture
def fake():
    server = FakeServer()
    url = server.start()
    yield server, url
    server.stop()


@pytest.fixture
def bench_obj(tmp_path: Path) -> bench.Bench:
    args = bench.build_parser().parse_args(["--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work")])
    args.stages, args.skip, args.duration = bench.STAGES, [], 20.0
    b = bench.Bench(args)
    b.write_settings()
    return b


def test_cache_config_line_is_parsed_into_blocks_and_tokens() -> None:
    caches = parse_cache_configs(ENGINE_LOG)
    assert len(caches) == 1
    assert caches[0]["num_gpu_blocks"] == 34932 and caches[0]["block_size"] == 64
    assert caches[0]["cache_max_entry_count"] == 0.4
    assert caches[0]["raw"].startswith("CacheConfig(max_batches=1024") and caches[0]["raw"].endswith("kv_transfer_config=None)")
    assert kv_capacity(caches[0]) == {"num_gpu_blocks": 34932, "block_size": 64, "tokens": 34932 * 64}
    assert parse_cache_configs("no engine here") == [] and kv_capacity(None) is None


def test_kit_servers_use_exactly_the_rendered_args(bench_obj: bench.Bench) -> None:
    for name, (_profile, qp, kit) in bench.SERVER_STAGES.items():
        argv, s = bench_obj.server_argv(name)
        assert s.serving.backend == "pytorch" and s.serving.cache_max_entry_count == 0.4 and s.serving.quant_policy == qp
        assert argv[argv.index("--quant-policy") + 1] == str(qp)
        if kit:
            assert argv == serve_args(s)
        else:  # the hand-typed baseline: minimal, same engine config as awq-kv4
            assert "--model-name" not in argv and "--tool-call-parser" not in argv
            assert argv[3] == s.serve_path == s.quantized_path
    fp16, s16 = bench_obj.server_argv("fp16")
    assert fp16[3] == s16.fp16_path and "--model-format" not in fp16  # the pytorch backend rejects hf
    kv4, _ = bench_obj.server_argv("awq-kv4")
    assert kv4[kv4.index("--model-format") + 1] == "awq"
    assert python_argv(kv4)[1:3] == ["-m", "lmdeploy"]


def test_bench_settings_point_every_kit_tool_at_the_workdir(bench_obj: bench.Bench, tmp_path: Path) -> None:
    s = bench_obj.settings("seed")
    assert s.fp16_path.startswith(str(tmp_path / "work" / "models"))
    assert (s.quantization.calib_samples, s.quantization.calib_seqlen, s.quantization.w_group_size) == (128, 2048, 128)
    env = bench_obj.kit_env("seed")
    assert env["KIT_SETTINGS"] == str(bench_obj.settings_file) and env["PROFILE"] == "seed"


def sample_results() -> dict:
    def cfg(blocks: int, steady: float, cap: float | None = None) -> dict:
        c = {"kv": {"num_gpu_blocks": blocks, "block_size": 64, "tokens": blocks * 64}, "streams64": {"steady_tok_s": steady, "errors": 0}}
        if cap:
            c["capacity"] = {"total_tok_s": cap, "errors": 0}
        return c

    return {
        "quantize": {"kit": {"rc": 0, "seconds": 101.0}, "bare": {"rc": 0, "seconds": 100.0}, "rerun": {"rc": 0, "seconds": 1.2}},
        "configs": {
            "fp16": cfg(4800, 5000, cap=1000),
            "awq-kv0": cfg(5200, 4000),
            "awq-kv8": cfg(10300, 4100),
            "awq-kv4": cfg(20000, 4200, cap=1800),
            "bare": cfg(20000, 4300),
        },
    }


def test_ratios_compare_against_the_issue_targets() -> None:
    r = bench.compute_ratios(sample_results())
    assert r["quantize_kit_over_bare"] == {"value": 1.01, "target": "<= 1.05", "pass": True, "basis": r["quantize_kit_over_bare"]["basis"]}
    assert r["quantize_rerun_s"]["pass"] is True
    assert r["throughput_kit_over_bare"]["value"] == round(4200 / 4300, 3) and r["throughput_kit_over_bare"]["pass"] is True
    assert r["kv8_tokens_over_unquantized"]["value"] == round(10300 / 5200, 3) and r["kv8_tokens_over_unquantized"]["pass"] is True
    assert "awq-kv0" in r["kv8_tokens_over_unquantized"]["basis"]
    assert r["kv4_tokens_over_unquantized"]["pass"] is True  # 3.85
    assert r["capacity_load_kv4_over_fp16"]["value"] == 1.8 and r["capacity_load_errors"]["pass"] is True

    bad = sample_results()
    bad["quantize"]["kit"]["seconds"] = 130.0
    bad["configs"]["awq-kv4"]["streams64"]["errors"] = 3  # a run with errors yields no throughput ratio
    bad["configs"]["awq-kv4"]["capacity"]["errors"] = 2
    r = bench.compute_ratios(bad)
    assert r["quantize_kit_over_bare"]["pass"] is False
    assert "throughput_kit_over_bare" not in r
    assert r["capacity_load_errors"] == {"value": 2, "target": "== 0", "pass": False}
    assert bench.compute_ratios({}) == {}


def test_results_file_is_written_after_every_stage_even_when_one_fails(bench_obj: bench.Bench) -> None:
    bench_obj.results.update(sample_results())
    bench_obj.results["configs"]["awq-kv4"]["cache_config_raw"] = "CacheConfig(num_gpu_blocks=20000)"

    def boom() -> None:
        raise RuntimeError("engine died")

    bench_obj.stage("awq-kv8", boom)
    out = json.loads((bench_obj.out / "results.json").read_text())
    assert out["schema"] == bench.SCHEMA_VERSION
    assert out["stages"]["awq-kv8"]["status"] == "failed" and "engine died" in out["stages"]["awq-kv8"]["error"]
    assert out["ratios"]["throughput_kit_over_bare"]["pass"] is True
    assert "CacheConfig(num_gpu_blocks=20000)" in (bench_obj.out / "cache-configs.log").read_text()
    assert (bench_obj.out / "logs.tgz").stat().st_size > 0
    assert (bench_obj.logs / "stage-awq-kv8.traceback.txt").exists()


def test_cli_refuses_unknown_stages_and_machines_without_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bench.main(["--stages", "model,warp-drive", "--out", str(tmp_path)]) == 2
    if shutil.which("nvidia-smi") is None:
        monkeypatch.setattr(bench, "gpu_memory", lambda: {})
        assert bench.main(["--quick", "--out", str(tmp_path)]) == 2


def test_timed_load_stops_at_its_duration_and_counts_tokens_ttft_and_errors(fake) -> None:
    server, url = fake
    spec = ol.LoadSpec(2000, 8, 40, 20, stream=True, duration_s=1.0)  # 2000 requests would take ~15 s
    stats = ol.run_load(url + "/v1", "fake-model", spec)
    assert stats.errors == 0 and stats.concurrency == 8 and 8 < stats.requests < 2000  # closed loop, cut at the deadline
    assert stats.wall_s < 3.0 and stats.output_tokens == 20 * stats.requests
    assert stats.ttft_p50_s is not None and 0.015 <= stats.ttft_p50_s < 1.0 and stats.ttft_p95_s >= stats.ttft_p50_s
    prompts = [r["json"]["messages"][0]["content"] for r in server.requests if r["path"] == "/v1/chat/completions"]
    assert len(prompts) == stats.requests and len(set(prompts)) == len(prompts)  # unique: no prefix-cache effects
    sent = server.requests[-1]["json"]
    assert sent["ignore_eos"] is True and sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    server.fail_every = 3
    stats = ol.run_load(url + "/v1", "fake-model", ol.LoadSpec(2000, 4, 5, 5, stream=True, duration_s=0.5))
    assert stats.errors > 0 and any("500" in e for e in stats.first_errors)


def test_batch1_medians_and_a_dead_server_is_an_error_not_a_crash(fake) -> None:
    _, url = fake
    res = ol.batch1(url + "/v1", "fake-model", 3, 30, 40)
    assert res["errors"] == 0 and len(res["decode_tok_s_all"]) == 3 and res["decode_tok_s"] > 0 and res["ttft_s"] >= 0.015
    dead = ol.run_load("http://127.0.0.1:9/v1", "m", ol.LoadSpec(1, 1, 4, 4, stream=True, timeout_s=2))
    assert dead.errors == 1 and dead.first_errors
    assert bench.calibrate_chars("http://127.0.0.1:9/v1", "m", 4096) == (2048, None)


def test_prompt_length_is_calibrated_with_the_servers_token_count(fake) -> None:
    _, url = fake
    chars, measured = bench.calibrate_chars(url + "/v1", "fake-model", 4096)
    assert measured is not None and abs(measured - 4096) <= 64 and chars == 4096 - 10  # the fake: one token a byte + 10


def test_the_benchs_load_records_are_what_the_report_reads(fake) -> None:
    """Producer (bench_loads against a streaming server) -> consumer (clients/report's tables)."""
    _, url = fake
    s64 = bench_loads.streams64(url + "/v1", "fake-model", 3, 20, 0.5)
    cap = bench_loads.capacity_load(url + "/v1", "fake-model", 8, 300, 10, 0.5)
    b1 = ol.batch1(url + "/v1", "fake-model", 3, 30, 40)
    assert s64["total_tok_s"] > 0 and cap["total_tok_s"] > 0 and cap["prompt_tokens_measured"] == 300
    ctx = context({"configs": {"fp16": {"quant_policy": 0, "batch1": b1, "streams64": s64, "capacity": cap}}}, [], None)
    row = ctx["serving_rows"][0]
    assert row[6:10] == [
        num(b1["decode_tok_s"]),
        num(b1["ttft_s"], 3),
        num(s64["total_tok_s"]),
        f"{num(s64['ttft_p50_s'], 3)} / {num(s64['ttft_p95_s'], 3)}",
    ]
    assert ctx["capacity"]["rows"][0][2:] == [
        num(cap["total_tok_s"]),
        f"{num(cap['ttft_p50_s'], 2)} / {num(cap['ttft_p95_s'], 2)}",
        cap["requests"],
        0,
    ]
    assert ctx["capacity"]["prompt"] == num(300) and not ctx["failures"]


def test_capacity_sizes_its_streams_from_the_fp16_kv_cache() -> None:
    kv4 = {"num_gpu_blocks": 20000, "block_size": 64}
    assert bench_loads.seqs_fit(kv4, {"num_gpu_blocks": 4800}, 4, 4096 + 256) == (4800 // 68, 20000 // 68)
    assert bench_loads.seqs_fit(kv4, {}, 4, 4352) == (5000 // 68, 294)  # fp16 not served: a quarter of the int4 blocks
    assert bench_loads.seqs_fit({}, {}, 0, 4352) == (32, None)


def test_percentiles_are_nearest_rank() -> None:
    assert ol.percentile([5, 1, 3, 2, 4], 50) == 3 and ol.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95) == 10
    assert ol.percentile([], 50) is None


def test_recording_proxy_saves_real_exchanges_and_passes_streams_through(fake, tmp_path: Path) -> None:
    _, url = fake
    with Recorder(url, tmp_path / "rec") as proxy:
        stats = ol.run_load(proxy.root_url + "/v1", "fake-model", ol.LoadSpec(1, 1, 5, 5, stream=True))
        with urllib.request.urlopen(proxy.root_url + "/v1/models", timeout=10) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == "fake-model"
    assert stats.errors == 0 and stats.output_tokens == 5 and stats.ttft_p50_s is not None
    files = sorted((tmp_path / "rec").glob("*.json"))
    assert [f.name.split("-", 1)[1] for f in files] == ["post-v1-chat-completions-200.json", "get-v1-models-200.json"]
    chat = json.loads(files[0].read_text())
    assert chat["request"]["body"]["messages"][0]["content"] == ol.prompt(0, 5)
    assert chat["response"]["status"] == 200 and len(chat["response"]["events"]) == 7


# /health answers 503 for its first two probes, then 200 (as lmdeploy while its engine loads).
HEALTH_SERVER = """
import http.server, sys
hits = []
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        hits.append(1)
        self.send_response(200 if len(hits) > 2 else 503)
        self.end_headers()
    def log_message(self, *a):
        print("probe", len(hits), flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_a_server_is_waited_for_through_503s_and_stopped_after_its_work(bench_obj: bench.Bench) -> None:
    port = free_port()
    rec: dict = {}
    argv = [sys.executable, "-c", HEALTH_SERVER, str(port)]
    with bench_obj.api_server("health", argv, port, rec, ready_timeout=60, release_key="released_s") as srv:
        assert srv.ready_s is not None and srv.proc.poll() is None
    assert rec["ready_s"] == srv.ready_s and rec["released_s"] == 0.0 and srv.proc.poll() is not None  # stopped
    assert "probe 3" in (bench_obj.logs / "server-health.log").read_text()

    rec = {}
    with bench_obj.api_server("dies", [sys.executable, "-c", "raise SystemExit(3)"], port, rec, 60, "released_s") as srv:
        assert srv.ready_s is None and "exited with 3" in srv.error
    assert rec["ready_s"] is None


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    sleeper = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    sleeper += "; print(c.pid, flush=True); time.sleep(60)"
    t0 = time.perf_counter()
    done = run_to_log([sys.executable, "-c", sleeper], tmp_path / "cmd.log", {}, timeout=1)
    assert done.rc == TIMEOUT_RC and done.seconds < 10 and time.perf_counter() - t0 < 10
    child = Path(f"/proc/{done.text.split()[0]}/stat")
    assert not child.exists() or child.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # the grandchild is gone too
    ok = run_to_log([sys.executable, "-c", "print('fine')"], tmp_path / "ok.log", {}, timeout=30)
    assert (ok.rc, ok.text.strip(), ok.peak_gpu_used_mib) == (0, "fine", None)


@pytest.mark.slow
def test_bare_awq_wrapper_runs_lmdeploys_cli_offline_on_a_tiny_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.models import build_llama

    model = build_llama(tmp_path / "tiny")
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "awq"
    argv = ["lmdeploy", "lite", "auto_awq", str(model), "--work-dir", str(out), "--calib-samples", "4", "--calib-seqlen", "64"]
    argv += ["--w-bits", "4", "--w-group-size", "128", "--batch-size", "1", "--device", "cpu", "--dtype", "float16"]
    cp = subprocess.run([sys.executable, "-m", "tests.gpu.bare_awq", str(calib), *argv], capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert "offline calibration: 4 x 64 tokens" in cp.stdout
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    bad = subprocess.run([sys.executable, "-m", "tests.gpu.bare_awq", str(tmp_path / "nope.txt"), *argv], capture_output=True, text=True)
    assert bad.returncode == 2 and "not found" in bad.stderr


@pytest.mark.slow
def test_clients_step_runs_the_real_clients_through_the_recording_proxy(fake, tmp_path: Path) -> None:
    pytest.importorskip("openai")
    import os

    from tests.gpu.clients_run import run_clients

    _, url = fake
    (tmp_path / "logs").mkdir()
    out = run_clients(url, tmp_path / "rec", tmp_path / "logs", dict(os.environ), "fake-model")
    assert out["chat"]["rc"] == 0
    assert out["funcall"]["json"]["tool_choice"] == "required" and out["funcall"]["json"]["verdict"] == "no_tool_call"
    assert any(f.endswith("-post-v1-chat-completions-200.json") for f in out["recorded_files"])
    assert (tmp_path / "logs" / "client-chat.log").read_text().startswith("$ ")


def _replay_process(paths: list[Path], port: int, api_key: str):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.replay", "serve", *map(str, paths), "--port", str(port), "--api-key", api_key],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert "replaying on" in proc.stderr.readline()
    return proc


@pytest.mark.slow
def test_webui_live_check_passes_on_the_h100_recording_and_fails_when_the_chat_breaks(tmp_path: Path) -> None:
    """tests/gpu/webui_live.py against the exchanges it recorded from the H100 api_server (tests/fixtures/webui_live)."""
    pytest.importorskip("gradio_client")
    from tests.gpu import webui_live

    recorded = Path(__file__).resolve().parents[1] / "fixtures" / "webui_live"
    port = free_port()
    proc = _replay_process([recorded], port, "live-key")
    try:
        rc = webui_live.run(f"http://127.0.0.1:{port}", "live-key", tmp_path / "ok", server_pid=proc.pid)
    finally:
        proc.kill()
        proc.wait()
    verdict = json.loads((tmp_path / "ok" / "webui-live.json").read_text())
    assert rc == 0 and verdict["pass"], [c for c in verdict["checks"] if not c["pass"]]
    assert len(verdict["checks"]) == 10 and verdict["reply"].startswith("&lt;filler_")

    # The same check against recordings with no answer for its prompt: the chat checks fail, rc 1.
    session = Path(__file__).resolve().parents[1] / "fixtures" / "recorded" / "session"
    port = free_port()
    proc = _replay_process([session], port, "live-key")
    try:
        rc = webui_live.run(f"http://127.0.0.1:{port}", "live-key", tmp_path / "bad", server_pid=None)
    finally:
        proc.kill()
        proc.wait()
    failed = {c["check"] for c in json.loads((tmp_path / "bad" / "webui-live.json").read_text())["checks"] if not c["pass"]}
    assert rc == 1 and "chat streams from the server" in failed and "page served" not in failed
