"""The planner against lmdeploy's own `num_gpu_blocks`, one test per fixture run (tests/plan/fixtures/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kit.plan import check_engine_logs, parse_cache_config

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("engine_logs_*.json"))


def test_there_is_at_least_one_fixture() -> None:
    assert FIXTURES, "tests/plan/fixtures/engine_logs_*.json is missing"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_planner_predicts_logged_blocks_within_tolerance(path: Path) -> None:
    fixture = json.loads(path.read_text())
    checks = check_engine_logs(fixture)
    assert len(checks) == len(fixture["runs"])
    assert fixture.get("tolerance", 0.05) <= 0.05
    bad = [f"{c.label}: predicted {c.predicted_blocks}, logged {c.logged_blocks} ({c.relative_error:+.2%})" for c in checks if not c.ok]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_settings_agree_with_the_logged_config(path: Path) -> None:
    for run in json.loads(path.read_text())["runs"]:
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
