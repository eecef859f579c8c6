"""The TurboMind benchmark's parts on the CPU: the openai-SDK load generator against a local streaming
server (whole-run tokens, TTFT, several processes), the ratios with their verdicts, TurboMind's budget line."""

from __future__ import annotations

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


def test_ratios_use_medians_of_alternating_runs_and_carry_verdicts() -> None:
    runs = [run("kit", 0, 100), run("bare", 0, 100), run("bare", 1, 110), run("kit", 1, 90), run("kit", 2, 95), run("bare", 2, 100)]
    cap = {"fp16": {"load": {"tok_s": 1000, "errors": 0}}, "awq-kv4": {"load": {"tok_s": 1490, "errors": 0}}}
    r = bench_tm.compute_ratios({"pairs": {"runs": runs}, "capacity": {"configs": cap}})
    t = r["throughput_kit_over_bare"]
    assert t["value"] == 0.95 and t["pass"] is True and t["pair_ratios"] == [1.0, 0.818, 0.95]
    assert t["kit_tok_s"] == {"median": 95, "min": 90, "max": 100, "n": 3}
    assert r["capacity_kv4_over_fp16"]["value"] == 1.49 and r["capacity_kv4_over_fp16"]["pass"] is False
    cap["awq-kv4"]["load"]["errors"] = 3  # a run with failed requests gives no ratio
    assert "capacity_kv4_over_fp16" not in bench_tm.compute_ratios({"capacity": {"configs": cap}})


def test_parse_budget_reads_turbomind_line() -> None:
    log = "Loading...\n[TM][INFO][x][turbomind.cc:338] Object cache budget: 110868.10 MB from free 138585.12 MB and ratio 0.800\n"
    assert bench_tm.parse_budget(log) == {"budget_mb": 110868.1, "free_mb": 138585.12, "ratio": 0.8}
    assert bench_tm.parse_budget("no budget here") is None
