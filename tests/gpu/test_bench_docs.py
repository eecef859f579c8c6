"""The README's GPU table and docs/benchmarks/turbomind/README.md are generated from the results JSON
(drift test, like the settings table), and every ratio carries its verdict."""

from __future__ import annotations

import copy
import json

from kit.render import serve_args
from kit.settings import load_settings
from tests.gpu import bench_docs


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
