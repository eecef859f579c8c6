"""The planner's formula on the published shapes of three architectures (CPU only)."""

from __future__ import annotations

import json

import pytest

from kit.plan import (
    GIB,
    SHAPES_DIR,
    ModelShape,
    PlanInputs,
    gpu_from_name,
    kv_block_bytes,
    kv_bytes_per_token,
    plan,
    shape_findings,
    weight_bytes,
)


def shape(name: str) -> ModelShape:
    return ModelShape.from_config(json.loads((SHAPES_DIR / f"{name}.json").read_text()), name)


INTERNLM, LLAMA, QWEN = "internlm2_5-1_8b-chat", "Meta-Llama-3-8B-Instruct", "Qwen2.5-7B-Instruct"


@pytest.mark.parametrize(
    ("name", "params"),
    [(INTERNLM, 1_889_110_016), (LLAMA, 8_030_261_248), (QWEN, 7_615_616_512)],
)
def test_parameter_count_matches_the_published_model_size(name: str, params: int) -> None:
    # Published sizes: 1.89 B (field notes), Llama-3-8B 8.03 B, Qwen2.5-7B 7.61 B.
    assert shape(name).params == params


def test_weight_bytes_fp16_and_awq_match_the_field_notes() -> None:
    s = shape(INTERNLM)
    assert weight_bytes(s, None) == pytest.approx(3.78e9, rel=0.002)  # "fp16 weights 3.78 GB"
    assert weight_bytes(s, 128) == pytest.approx(1.5e9, rel=0.05)  # "W4A16 ≈ 1.5 GB"
    # AWQ: 4 bits + fp16 scale and 4-bit zero per 128 weights on the linear layers; embeddings stay 16 bit.
    assert weight_bytes(s, 128) - 2 * s.other_params == pytest.approx(s.linear_params * (0.5 + 2.5 / 128), abs=1)
    assert weight_bytes(s, 64) > weight_bytes(s, 128)


@pytest.mark.parametrize(
    ("name", "fp16", "int8", "int4"),
    [
        # layers * 2 (k, v) * kv_heads * per-head bytes: 2*head_dim, head_dim + 4, head_dim/2 + 4
        (INTERNLM, 24 * 2 * 8 * 256, 24 * 2 * 8 * 132, 24 * 2 * 8 * 68),
        (LLAMA, 32 * 2 * 8 * 256, 32 * 2 * 8 * 132, 32 * 2 * 8 * 68),
        (QWEN, 28 * 2 * 4 * 256, 28 * 2 * 4 * 132, 28 * 2 * 4 * 68),
    ],
)
def test_kv_bytes_per_token(name: str, fp16: int, int8: int, int4: int) -> None:
    s = shape(name)
    assert (kv_bytes_per_token(s, 0), kv_bytes_per_token(s, 8), kv_bytes_per_token(s, 4)) == (fp16, int8, int4)
    # A block is 64 tokens of that (these shapes are already 256-byte aligned).
    assert kv_block_bytes(s, 8) == 64 * int8


def test_field_notes_kv_sizes_per_token() -> None:
    s = shape(INTERNLM)
    assert kv_bytes_per_token(s, 0) == 98_304  # "≈ 98 KB fp16"
    # int8/int4 are ~49/24.5 KB of values plus 1.5 KiB of fp16 scales/zeros per token.
    assert kv_bytes_per_token(s, 8) == 49_152 + 1_536
    assert kv_bytes_per_token(s, 4) == 24_576 + 1_536


def test_pytorch_aligns_each_cache_tensor_to_256_bytes_and_turbomind_does_not() -> None:
    odd = ModelShape("odd", "llama", 2, 192, 3, 1, 64, 256, 1000, 4096)
    # int4 v: 1 head * 64 dims / 2 * block 4 = 128 bytes -> 256 on PyTorch; scales 4*1*4 = 16 -> 256.
    assert kv_block_bytes(odd, 4, block_size=4, backend="turbomind") == 2 * (128 + 128 + 16 + 16)
    assert kv_block_bytes(odd, 4, block_size=4, backend="pytorch") == 2 * 4 * 256


def test_tensor_parallel_splits_kv_heads_and_weights() -> None:
    s = shape(LLAMA)
    h100 = gpu_from_name("h100")
    one = plan(s, h100, PlanInputs(cache_max_entry_count=0.5))
    two = plan(s, h100, PlanInputs(cache_max_entry_count=0.5, tp=2))
    assert two.policy(0).block_bytes * 2 == one.policy(0).block_bytes
    assert two.weights_bytes == pytest.approx(one.weights_bytes / 2, abs=1)
    assert two.policy(0).num_gpu_blocks > 2 * one.policy(0).num_gpu_blocks  # half the heads, and more free memory


@pytest.mark.parametrize(("name", "tp", "bad"), [(QWEN, 8, True), (QWEN, 4, False), (LLAMA, 8, False), (INTERNLM, 3, True)])
def test_tp_must_divide_kv_heads(name: str, tp: int, bad: bool) -> None:
    codes = [f.code for f in shape_findings(shape(name), tp, None)]
    assert ("tp-kv-heads" in codes) is bad


def test_session_len_against_model_context_counts_rope_scaling() -> None:
    assert not shape_findings(shape(INTERNLM), 1, 65_536)  # 32768 x dynamic rope factor 2
    assert [f.code for f in shape_findings(shape(INTERNLM), 1, 70_000)] == ["session-len-model"]
    assert [f.code for f in shape_findings(shape(LLAMA), 1, 16_384)] == ["session-len-model"]


def test_gpu_too_small_for_fp16_weights_but_fine_with_awq() -> None:
    s = shape(LLAMA)
    small = gpu_from_name("a10")
    small = type(small)(small.name, 12 * GIB)
    fp16 = plan(s, small, PlanInputs(session_len=4096))
    assert [f.code for f in fp16.errors] == ["weights-too-big"]
    awq = plan(s, small, PlanInputs(session_len=4096, awq=True))
    assert awq.errors == [] and awq.policy(0).num_gpu_blocks > 0


def test_cache_ratio_close_to_one_warns_about_headroom() -> None:
    s = shape(INTERNLM)
    ok = plan(s, gpu_from_name("h100"), PlanInputs(cache_max_entry_count=0.8))
    tight = plan(s, gpu_from_name("h100"), PlanInputs(cache_max_entry_count=0.99))
    assert not [f for f in ok.findings if f.code == "low-headroom"]
    assert {f.policy for f in tight.findings if f.code == "low-headroom"} == {0, 8, 4}
    assert all(f.level == "warning" for f in tight.findings)


def test_session_that_cannot_fit_is_an_error_only_for_the_configured_policy() -> None:
    s = shape(LLAMA)
    gpu = gpu_from_name("a10")
    r = plan(s, gpu, PlanInputs(awq=True, cache_max_entry_count=0.05, session_len=8192, quant_policy=4))
    by_policy = {f.policy for f in r.findings if f.code == "session-does-not-fit"}
    assert 0 in by_policy and 4 not in by_policy
    assert r.errors == []  # the configured int4 cache holds one 8k session
    r0 = plan(s, gpu, PlanInputs(awq=True, cache_max_entry_count=0.05, session_len=8192, quant_policy=0))
    assert [f.code for f in r0.errors] == ["session-does-not-fit"]


def test_concurrency_is_blocks_over_blocks_per_sequence_capped_by_batch() -> None:
    r = plan(shape(INTERNLM), gpu_from_name("h200"), PlanInputs(cache_max_entry_count=0.4, context=4096, max_batch_size=256))
    for p in r.policies:
        assert p.blocks_per_sequence == 64
        assert p.kv_limited_sequences == (p.num_gpu_blocks - 1) // 64
        assert p.max_concurrent_sequences == min(p.kv_limited_sequences, 256)
        assert p.kv_tokens == 64 * p.num_gpu_blocks


def test_default_max_batch_follows_lmdeploy_per_gpu() -> None:
    s = shape(INTERNLM)
    assert plan(s, gpu_from_name("h100"), PlanInputs()).max_batch_size == 1024
    assert plan(s, gpu_from_name("a100-80g"), PlanInputs()).max_batch_size == 384
    assert plan(s, gpu_from_name("l40s"), PlanInputs()).max_batch_size == 128


def test_recommendation_is_the_least_lossy_policy_at_the_smallest_ratio() -> None:
    s = shape(INTERNLM)
    gpu = gpu_from_name("h100")
    r = plan(s, gpu, PlanInputs(awq=True, context=4096, backend="pytorch"), target_sessions=64)
    rec = r.recommendation
    assert rec is not None and rec.quant_policy == 0
    assert rec.per_policy[4] < rec.per_policy[8] < rec.per_policy[0]
    for policy, ratio in rec.per_policy.items():
        at = plan(s, gpu, PlanInputs(awq=True, context=4096, cache_max_entry_count=ratio, quant_policy=policy))
        below = plan(s, gpu, PlanInputs(awq=True, context=4096, cache_max_entry_count=round(ratio - 0.01, 2), quant_policy=policy))
        assert at.policy(policy).kv_limited_sequences >= 64 > below.policy(policy).kv_limited_sequences


def test_recommendation_falls_back_to_quantized_kv_on_a_small_gpu() -> None:
    r = plan(shape(LLAMA), gpu_from_name("a10"), PlanInputs(awq=True, context=8192), target_sessions=16)
    assert r.recommendation is not None
    assert r.recommendation.per_policy[0] is None
    assert r.recommendation.quant_policy in (8, 4)
    impossible = plan(shape(LLAMA), gpu_from_name("a10"), PlanInputs(awq=True, context=8192), target_sessions=10_000)
    assert impossible.recommendation is not None and impossible.recommendation.quant_policy is None
