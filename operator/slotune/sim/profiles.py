"""Named performance profiles: model architectures, GPUs, links, serving runtimes.

Datasheet figures are the vendors' dense (no sparsity) numbers. Efficiency factors and
runtime overheads were calibrated once against ``../shared/perf`` (see the module docstring
of :mod:`slotune.sim.perf`); they are rounded here and must not be tuned per data point.

Two kinds of profiles:

* simulation profiles (``llama-3-8b-h100``, ``llama-3-8b-a100``, ``llama-3-70b-h100x4``,
  ``llama-3-70b-h100x4-fp8``) run the vLLM V1 runtime that slotune deploys;
* reference profiles (``ref-*``) reproduce the setups behind the measurements -- their GPUs,
  links and serving stacks -- so that the accuracy test compares like with like.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from slotune.sim.perf import (
    GIB,
    GpuEfficiency,
    GpuSpec,
    Interconnect,
    ModelArchitecture,
    PerfProfile,
    ServingRuntime,
)

# ------------------------------------------------------------------------ architectures

LLAMA_2_7B: Final = ModelArchitecture(
    name="Llama-2-7B",
    num_layers=32,
    hidden_size=4096,
    num_attention_heads=32,
    num_kv_heads=32,
    head_dim=128,
    intermediate_size=11008,
    vocab_size=32000,
)
LLAMA_3_8B: Final = ModelArchitecture(
    name="Llama-3-8B",
    num_layers=32,
    hidden_size=4096,
    num_attention_heads=32,
    num_kv_heads=8,
    head_dim=128,
    intermediate_size=14336,
    vocab_size=128256,
)
# Llama 3.1 changed the RoPE scaling and context length, not the shapes.
LLAMA_3_1_8B: Final = ModelArchitecture(
    name="Llama-3.1-8B",
    num_layers=32,
    hidden_size=4096,
    num_attention_heads=32,
    num_kv_heads=8,
    head_dim=128,
    intermediate_size=14336,
    vocab_size=128256,
)
LLAMA_2_70B: Final = ModelArchitecture(
    name="Llama-2-70B",
    num_layers=80,
    hidden_size=8192,
    num_attention_heads=64,
    num_kv_heads=8,
    head_dim=128,
    intermediate_size=28672,
    vocab_size=32000,
)
LLAMA_3_70B: Final = ModelArchitecture(
    name="Llama-3-70B",
    num_layers=80,
    hidden_size=8192,
    num_attention_heads=64,
    num_kv_heads=8,
    head_dim=128,
    intermediate_size=28672,
    vocab_size=128256,
)

# ---------------------------------------------------------------------------- links

# NCCL all-reduce bus bandwidth as measured by nccl-tests on DGX-class machines.
NVLINK3: Final = Interconnect("nvlink3", bus_bandwidth=230e9, hop_latency_s=2e-6)
NVLINK4: Final = Interconnect("nvlink4", bus_bandwidth=360e9, hop_latency_s=2e-6)
# A100 PCIe cards joined in pairs by an NVLink bridge (calibrated on SageServe TP2) ...
NVLINK_BRIDGE: Final = Interconnect("nvlink-bridge", bus_bandwidth=160e9, hop_latency_s=2e-6)
# ... and a ring over four of them, which crosses PCIe 4.0 (calibrated on SageServe TP4).
PCIE4: Final = Interconnect("pcie4", bus_bandwidth=16.5e9, hop_latency_s=3e-6)

# ----------------------------------------------------------------------------- GPUs

# Calibrated on Vidur's A100 linear-layer and attention profiles, Splitwise and SageServe.
_A100_EFFICIENCY: Final = GpuEfficiency(
    weight_bandwidth=0.77,
    gemm_compute=0.705,
    elementwise_bandwidth=0.62,
    attention_bandwidth=0.77,
    attention_compute=0.30,
    kernel_latency_s=3.6e-6,
    attention_latency_s=17e-6,
)

A100_SXM_80GB: Final = GpuSpec(
    name="nvidia-a100-80gb",
    memory_bytes=80 * GIB,
    hbm_bandwidth=2.039e12,
    bf16_flops=312e12,
    fp8_flops=None,
    interconnect=NVLINK3,
    efficiency=_A100_EFFICIENCY,
)

# The PCIe card has less bandwidth and, at 300 W instead of 400 W, cannot hold its boost
# clock under tensor-core load: compute-bound kernels reach 0.79 of the SXM part's speed.
_PCIE_SUSTAINED_CLOCK = 0.79
A100_PCIE_80GB: Final = GpuSpec(
    name="nvidia-a100-80gb-pcie",
    memory_bytes=80 * GIB,
    hbm_bandwidth=1.935e12,
    bf16_flops=312e12,
    fp8_flops=None,
    interconnect=NVLINK_BRIDGE,
    efficiency=GpuEfficiency(
        weight_bandwidth=_A100_EFFICIENCY.weight_bandwidth,
        gemm_compute=_A100_EFFICIENCY.gemm_compute * _PCIE_SUSTAINED_CLOCK,
        elementwise_bandwidth=_A100_EFFICIENCY.elementwise_bandwidth,
        attention_bandwidth=_A100_EFFICIENCY.attention_bandwidth,
        attention_compute=_A100_EFFICIENCY.attention_compute * _PCIE_SUSTAINED_CLOCK,
        kernel_latency_s=_A100_EFFICIENCY.kernel_latency_s,
        attention_latency_s=_A100_EFFICIENCY.attention_latency_s,
    ),
)

# Calibrated on Vidur's H100 linear-layer profiles and Splitwise's H100 runs. The GEMM
# factor is a compromise: Vidur's kernels alone reach ~0.70 of peak, Splitwise's end-to-end
# prefills imply less. Attention reuses the A100 bandwidth factor; its compute factor is
# low because the 2023 kernels behind the data (pre-FlashAttention-3) used Hopper poorly.
H100_SXM_80GB: Final = GpuSpec(
    name="nvidia-h100-80gb",
    memory_bytes=int(79.6 * GIB),
    hbm_bandwidth=3.35e12,
    bf16_flops=989e12,
    fp8_flops=1979e12,
    interconnect=NVLINK4,
    efficiency=GpuEfficiency(
        weight_bandwidth=0.88,
        gemm_compute=0.64,
        elementwise_bandwidth=0.87,
        attention_bandwidth=0.77,
        attention_compute=0.15,
        kernel_latency_s=3.8e-6,
        attention_latency_s=17e-6,
    ),
)

GPUS: Final = MappingProxyType({g.name: g for g in (A100_SXM_80GB, A100_PCIE_80GB, H100_SXM_80GB)})

# ------------------------------------------------------------------------- runtimes

# Kernels alone: what Vidur's operator profiles measure.
KERNELS_ONLY: Final = ServingRuntime(
    "kernels-only", step_overhead_s=0.0, per_sequence_overhead_s=0.0, collective_latency_s=0.0
)
# The stack behind Splitwise's Llama2-70B measurements (2023), calibrated on its TP2 rows.
SPLITWISE_2023: Final = ServingRuntime(
    "splitwise-2023",
    step_overhead_s=2.65e-3,
    per_sequence_overhead_s=0.0,
    collective_latency_s=40e-6,
)
# vLLM V0 as SageServe ran it (2024): per-sequence Python work in the scheduler, sampler and
# output processing, and per-sequence inputs broadcast to every tensor-parallel worker.
VLLM_V0_SAGESERVE: Final = ServingRuntime(
    "vllm-v0-sageserve",
    step_overhead_s=0.28e-3,
    per_sequence_overhead_s=127e-6,
    collective_latency_s=16e-6,
    per_sequence_per_worker_s=75e-6,
)
# vLLM V1 (the engine slotune deploys). Not calibrated here -- no V1 measurement is at hand --
# but set from its design: decode runs as CUDA graphs, the scheduler and output processing
# overlap the GPU (async scheduling), all-reduces use the custom one-shot kernel.
VLLM_V1: Final = ServingRuntime(
    "vllm-v1",
    step_overhead_s=0.5e-3,
    per_sequence_overhead_s=5e-6,
    collective_latency_s=8e-6,
)

# ------------------------------------------------------------------------- profiles

_SIMULATION = (
    PerfProfile("llama-3-8b-h100", LLAMA_3_8B, H100_SXM_80GB, VLLM_V1),
    PerfProfile("llama-3-8b-a100", LLAMA_3_8B, A100_SXM_80GB, VLLM_V1),
    PerfProfile("llama-3-70b-h100x4", LLAMA_3_70B, H100_SXM_80GB, VLLM_V1, tensor_parallel=4),
    PerfProfile(
        "llama-3-70b-h100x4-fp8",
        LLAMA_3_70B,
        H100_SXM_80GB,
        VLLM_V1,
        tensor_parallel=4,
        weight_dtype="fp8",
    ),
)

_REFERENCE = (
    PerfProfile("ref-vidur-llama-2-7b-h100", LLAMA_2_7B, H100_SXM_80GB, KERNELS_ONLY),
    PerfProfile("ref-vidur-llama-2-7b-a100", LLAMA_2_7B, A100_SXM_80GB, KERNELS_ONLY),
    PerfProfile("ref-vidur-llama-3-8b-a100", LLAMA_3_8B, A100_SXM_80GB, KERNELS_ONLY),
    PerfProfile(
        "ref-vidur-llama-2-70b-a100-tp2",
        LLAMA_2_70B,
        A100_SXM_80GB,
        KERNELS_ONLY,
        tensor_parallel=2,
    ),
    PerfProfile(
        "ref-sageserve-llama-3.1-8b-a100-tp2",
        LLAMA_3_1_8B,
        A100_PCIE_80GB,
        VLLM_V0_SAGESERVE,
        tensor_parallel=2,
    ),
    PerfProfile(
        "ref-sageserve-llama-3.1-8b-a100-tp4",
        LLAMA_3_1_8B,
        A100_PCIE_80GB,
        VLLM_V0_SAGESERVE,
        tensor_parallel=4,
        interconnect=PCIE4,
    ),
    *(
        PerfProfile(
            f"ref-splitwise-llama-2-70b-{gpu_tag}-tp{tp}",
            LLAMA_2_70B,
            gpu,
            SPLITWISE_2023,
            tensor_parallel=tp,
        )
        for gpu_tag, gpu in (("a100", A100_SXM_80GB), ("h100", H100_SXM_80GB))
        for tp in (2, 4, 8)
    ),
)

PROFILES: Final = MappingProxyType({p.name: p for p in (*_SIMULATION, *_REFERENCE)})
SIMULATION_PROFILES: Final = tuple(p.name for p in _SIMULATION)


def get_profile(name: str) -> PerfProfile:
    """The profile called ``name``; the error lists the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise KeyError(f"unknown performance profile {name!r}; known: {known}") from None
