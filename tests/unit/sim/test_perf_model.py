"""Physical sanity of the performance model beyond the calibration points."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slotune.sim.perf import GIB, IterationShape, PerformanceModel, PerfProfile
from slotune.sim.profiles import (
    A100_SXM_80GB,
    LLAMA_3_8B,
    LLAMA_3_70B,
    PROFILES,
    SIMULATION_PROFILES,
    VLLM_V1,
    get_profile,
)

H100_8B = PerformanceModel(get_profile("llama-3-8b-h100"))


def test_the_issue_profiles_exist() -> None:
    for name in ("llama-3-8b-h100", "llama-3-8b-a100", "llama-3-70b-h100x4"):
        assert name in SIMULATION_PROFILES
    with pytest.raises(KeyError, match="known: "):
        get_profile("llama-9-1t")


@given(st.integers(1, 512), st.integers(1, 512), st.integers(0, 8192))
def test_decode_time_grows_with_batch_and_context(b1: int, b2: int, ctx: int) -> None:
    lo, hi = sorted((b1, b2))
    assert H100_8B.decode_step_time(lo, lo * ctx) <= H100_8B.decode_step_time(hi, hi * ctx)
    assert H100_8B.decode_step_time(lo, lo * ctx) <= H100_8B.decode_step_time(lo, lo * (ctx + 64))


@given(st.integers(1, 8192), st.integers(1, 8192), st.integers(0, 16384))
def test_prefill_time_grows_with_chunk_and_context(n1: int, n2: int, ctx: int) -> None:
    lo, hi = sorted((n1, n2))
    assert H100_8B.prefill_time(lo, ctx) <= H100_8B.prefill_time(hi, ctx)
    assert H100_8B.prefill_time(lo, ctx) <= H100_8B.prefill_time(lo, ctx + 1024)


def test_decode_is_memory_bound_and_cheap_per_sequence() -> None:
    one = H100_8B.decode_step_time(1, 1000)
    # Weights stream once per step: 64 sequences cost far less than 64 single steps.
    assert H100_8B.decode_step_time(64, 64 * 1000) < 2 * one
    # Order of magnitude of published vLLM numbers for 8B on H100 at batch 1.
    assert 0.005 < one < 0.012


def test_mixed_iteration_costs_less_than_its_parts() -> None:
    mixed = IterationShape(
        decode_seqs=32, decode_context_tokens=32 * 800, prefill_chunks=((1024, 0),)
    )
    apart = H100_8B.decode_step_time(32, 32 * 800) + H100_8B.prefill_time(1024)
    assert H100_8B.decode_step_time(32, 32 * 800) < mixed.price(H100_8B) < apart


def test_kv_capacity_matches_the_readme_estimate() -> None:
    capacity = H100_8B.kv_cache_capacity(8192)
    assert capacity.bytes_per_token == 131072  # Llama-3-8B: 128 KiB per token
    # README: (72 - 16) GB / 128 KiB ~ 430k tokens at utilisation 0.9; we use 0.92.
    assert 400_000 < capacity.tokens < 480_000
    assert capacity.tokens % 16 == 0
    assert H100_8B.kv_cache_capacity(16384).tokens < capacity.tokens


def test_tensor_parallel_shards_weights_and_kv() -> None:
    tp4 = PerformanceModel(get_profile("llama-3-70b-h100x4"))
    assert tp4.weight_bytes_per_gpu == pytest.approx(70.6e9 * 2 / 4, rel=0.02)
    assert tp4.kv_bytes_per_token == 327680  # README: Llama-3-70B 320 KiB per token
    assert tp4.kv_cache_capacity().tokens > 100_000


def test_fp8_weights_speed_up_decode_and_free_memory() -> None:
    bf16 = PerformanceModel(get_profile("llama-3-70b-h100x4"))
    fp8 = PerformanceModel(get_profile("llama-3-70b-h100x4-fp8"))
    assert fp8.decode_step_time(8, 8000) < 0.8 * bf16.decode_step_time(8, 8000)
    assert fp8.kv_cache_capacity().tokens > bf16.kv_cache_capacity().tokens


def test_impossible_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="no fp8"):
        PerfProfile("x", LLAMA_3_8B, A100_SXM_80GB, VLLM_V1, weight_dtype="fp8")
    with pytest.raises(ValueError, match="do not split"):
        PerfProfile("x", LLAMA_3_8B, A100_SXM_80GB, VLLM_V1, tensor_parallel=3)
    one_gpu_70b = PerformanceModel(PerfProfile("x", LLAMA_3_70B, A100_SXM_80GB, VLLM_V1))
    with pytest.raises(ValueError, match="do not fit"):
        one_gpu_70b.kv_cache_capacity()


def test_profiles_are_frozen_values() -> None:
    profile = PROFILES["llama-3-8b-a100"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.tensor_parallel = 2  # type: ignore[misc]
    assert profile.gpu.memory_bytes == 80 * GIB
