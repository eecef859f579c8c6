"""The planner against what lmdeploy logged (PyTorch `num_gpu_blocks`, TurboMind's object cache budget and
slab lines), one test per fixture (tests/plan/fixtures/), and the fitted constants against a refit from
the logs that fitted them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kit.plan import ENGINE_OVERHEAD_BYTES, TURBOMIND_OVERHEAD_BYTES, check_engine_logs, fitted_overheads, parse_cache_config
from kit.plan.engine_logs import check_slabs, parse_turbomind_budget

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("engine_logs_*.json"))


def test_there_is_at_least_one_fixture() -> None:
    assert FIXTURES, "tests/plan/fixtures/engine_logs_*.json is missing"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_planner_predicts_logged_blocks_within_tolerance(path: Path) -> None:
    fixture = json.loads(path.read_text())
    checks = check_engine_logs(fixture)
    assert len(checks) == len(fixture["runs"])
    assert fixture.get("tolerance", 0.01) <= 0.01
    bad = [
        f"{c.label}: predicted {c.predicted:.0f} {c.quantity}, logged {c.logged:.0f} ({c.relative_error:+.3%})" for c in checks if not c.ok
    ]
    assert not bad, "\n".join(bad)


def test_fitted_constants_match_a_refit_from_their_logs() -> None:
    """Each constant within 5 % of what its `role: fit` runs give: a 10 % change to one fails here
    (the block and budget checks alone would not notice: 140 MB of overhead is 0.1 % of an H200)."""
    fitted = fitted_overheads([json.loads(p.read_text()) for p in FIXTURES])
    constants = {
        "pytorch": ENGINE_OVERHEAD_BYTES,
        "turbomind-fp16": TURBOMIND_OVERHEAD_BYTES["fp16"],
        "turbomind-awq": TURBOMIND_OVERHEAD_BYTES["awq"],
    }
    assert set(fitted) == set(constants)
    off = {k: f"{constants[k] / fitted[k] - 1:+.1%}" for k in constants if abs(constants[k] / fitted[k] - 1) > 0.05}
    assert not off, f"constants drifted from their fit: {off}"


def test_every_backend_has_runs_the_fit_never_saw() -> None:
    roles: dict[str, set[str]] = {}
    for p in FIXTURES:
        for run in json.loads(p.read_text())["runs"]:
            roles.setdefault(run.get("backend", "pytorch"), set()).add(run["role"])
    assert roles == {"pytorch": {"fit", "validate"}, "turbomind": {"fit", "validate"}}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_turbomind_slab_lines_match_the_block_layout(path: Path) -> None:
    for label, predicted, logged in check_slabs(json.loads(path.read_text())):
        assert predicted == logged, f"{label}: (slab, block, blocks per slab) predicted {predicted}, logged {logged}"


def test_parse_turbomind_budget_reads_the_last_line_and_slabs() -> None:
    text = (
        "[TM][INFO][turbomind.cc:338] Object cache budget: 1.00 MB from free 2.50 MB and ratio 0.400\n"
        "[TM][WARN][slab.h:136] slab_size 33554432, object_size 1671168, object_count 20, ratio 0.99609375\n"
        "[TM][INFO][turbomind.cc:338] Object cache budget: 110868.10 MB from free 138585.12 MB and ratio 0.800\n"
    )
    b = parse_turbomind_budget(text)
    assert b is not None
    assert (b.budget_bytes, b.free_bytes, b.ratio) == (round(110868.10 * 2**20), round(138585.12 * 2**20), 0.8)
    assert b.slabs == ((33554432, 1671168, 20),)
    assert parse_turbomind_budget("Building CacheEngine") is None


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_settings_agree_with_the_logged_config(path: Path) -> None:
    for run in json.loads(path.read_text())["runs"]:
        if run.get("backend") == "turbomind":
            logged_tm = parse_turbomind_budget(run["log"])
            assert logged_tm is not None and logged_tm.ratio == run["cache_max_entry_count"], run["label"]
            continue
        logged = parse_cache_config(run["log"])
        assert logged is not None, run["label"]
        assert logged.quant_policy == run["quant_policy"]
        assert logged.cache_max_entry_count == run["cache_max_entry_count"]


def test_parse_cache_config_reads_lmdeploy_repr() -> None:
    text = (
        "2025-01-01 10:00:00,000 - lmdeploy - INFO - executor/base.py:412 - Building CacheEngine with config: \n"
        "CacheConfig(max_batches=1024, block_size=64, num_cpu_blocks=0, num_gpu_blocks=17995, kernel_block_size=64, "
        "window_size=-1, cache_max_entry_count=0.4, max_prefill_token_num=8192, cudagraph_capture_batch_sizes=[1, 2, 4], "
        "enable_prefix_caching=False, quant_policy=<QuantPolicy.INT8: 8>, device_type='cuda', num_state_caches=None, "
        "states_shapes=[], role=<EngineRole.Hybrid: 1>, kv_transfer_config=None).\n"
        "2025-01-01 10:00:01,000 - lmdeploy - INFO - Warming up model."
    )
    c = parse_cache_config(text)
    assert c is not None
    assert (c.num_gpu_blocks, c.block_size, c.cache_max_entry_count, c.quant_policy) == (17995, 64, 0.4, 8)
    assert (c.max_batches, c.max_prefill_token_num) == (1024, 8192)
    assert c.fields["device_type"] == "cuda" and c.fields["enable_prefix_caching"] is False and c.fields["window_size"] == -1


def test_parse_cache_config_takes_the_last_config_and_none_without_one() -> None:
    assert parse_cache_config("INFO Warming up model.") is None
    two = "CacheConfig(num_gpu_blocks=1, block_size=64)\nCacheConfig(num_gpu_blocks=2, block_size=32)"
    c = parse_cache_config(two)
    assert c is not None and (c.num_gpu_blocks, c.block_size) == (2, 32)
