"""The README's GPU table and docs/benchmarks/turbomind/README.md are generated from the results JSON
(drift test, like the settings table), and every ratio carries its verdict."""

from __future__ import annotations

import copy
import json

from kit.render import serve_args
from kit.settings import load_settings
from tests.gpu import bench_docs, bench_docs_capacity


def test_generated_docs_match_the_committed_results() -> None:
    assert bench_docs.main(["--check"]) == 0, "run: python -m tests.gpu.bench_docs"


def test_a_changed_result_changes_the_table_and_its_verdict() -> None:
    tm = json.loads(bench_docs.TM_RESULTS.read_text())
    pt = json.loads(bench_docs.PT_RESULTS.read_text())
    before = bench_docs.render_readme_section(tm, pt)
    worse = copy.deepcopy(tm)
    worse["ratios"]["throughput_kit_over_bare"].update(value=0.86, **{"pass": False})
    after = bench_docs.render_readme_section(worse, pt)
    row = next(line for line in after.splitlines() if line.startswith("| kit-rendered / bare"))
    assert "| 0.860 (pairs" in row and row.endswith("| FAIL |") and before != after


def test_every_ratio_has_a_verdict_in_the_benchmark_readme() -> None:
    tm = json.loads(bench_docs.TM_RESULTS.read_text())
    md = bench_docs.render_tm(tm)
    for key, r in tm["ratios"].items():
        verdict = f"{r['target']} | {'PASS' if r['pass'] else 'FAIL'}" if "target" in r else "– | info"
        assert f"| {key} | {r['value']:.3f} | {verdict} |" in md


def test_the_published_run_used_todays_default_engine_settings() -> None:
    """A changed default (cache ratio, batch, prefill budget) makes the published figures stale: re-run make bench."""
    tm = json.loads(bench_docs.TM_RESULTS.read_text())
    today = bench_docs.engine_flags(serve_args(load_settings("default")))
    assert bench_docs.engine_flags(tm["pairs"]["kit_argv"]) == today, "docs/benchmarks/turbomind was measured with other defaults"
    long = json.loads(bench_docs.TM_LONG.read_text())
    for run in long["capacity"]["runs"]:  # the long-context load too (its quant policy differs per config by design)
        assert bench_docs.engine_flags(run["argv"], bench_docs.ENGINE_FLAGS[:-1]) == bench_docs.engine_flags(
            serve_args(load_settings("default")), bench_docs.ENGINE_FLAGS[:-1]
        )


def test_what_bound_a_server_is_read_from_lmdeploys_counters() -> None:
    """KV-bound (full cache, sequences waiting) vs bound in front of the engine (streams never routed, cache not full)."""
    tm = json.loads(bench_docs.TM_RESULTS.read_text())
    note = "\n".join(bench_docs_capacity.bound_note(tm))
    assert "- fp16 (3 runs): 659 sequences running (median), bound by its KV cache: 98.4 % full" in note
    assert (
        "- awq-kv4 (3 runs): 360 sequences running (median), bound in front of the engine: the api_server handed it at most 826 of the 1,600"
        in note
    )
    everyone_routed = copy.deepcopy(tm)
    for run in everyone_routed["capacity"]["runs"]:
        stats = run["inflight"]["engine_stats"]
        stats.update(routed_peak=1600, waiting_median=0)
    note = "\n".join(bench_docs_capacity.bound_note(everyone_routed))
    assert "awq-kv4 (3 runs): 360 sequences running (median), held all 1,600 streams" in note
    assert "bound by its KV cache" not in note  # nothing waited
    assert bench_docs_capacity.bound_note({"capacity": {"load": {"requests": 1}, "runs": [{"config": "fp16"}]}}) == []


def test_the_front_end_table_names_the_event_loop_from_the_kit_site() -> None:
    runs = [json.loads(f.read_text()) for f in bench_docs.TM_FRONTEND]
    table = "\n".join(bench_docs_capacity.render_frontend(runs))
    assert table.count("| asyncio + h11 |") == 2 and table.count("| uvloop + httptools |") == 2
    runs[1]["environment"]["kit_site"] = []
    assert "uvloop" not in "\n".join(bench_docs_capacity.render_frontend(runs)).split("| --- |")[-1]
