"""Analytic performance model of a transformer model server, calibrated on measurements.

The model prices one engine iteration (a batch of decode tokens plus prefill chunks, as vLLM
builds them with chunked prefill) from first principles -- bytes moved over HBM, FLOPs on the
tensor cores, bytes over the tensor-parallel interconnect -- divided by a few efficiency
factors, plus the serving runtime's CPU overheads. Every term is per GPU: tensor parallelism
shards heads and the MLP, and adds two all-reduces per layer.

Terms of one iteration with ``N`` tokens from ``S`` sequences (``B`` of them decoding):

* linear layers (QKV, O, gate/up, down): for each GEMM a smooth roofline
  ``(t_mem**2 + t_compute**2) ** 0.5 + kernel_latency`` where ``t_mem`` streams the weights
  and activations at ``weight_bandwidth * HBM`` and ``t_compute = 2*N*K*M`` FLOPs at
  ``gemm_compute * peak``. The smooth maximum stands for the imperfect overlap of loading and
  computing near the ridge point, where tiles are too few to fill the GPU;
* element-wise kernels (2 norms, rope, activation, 2 residual adds, the embedding): a launch
  latency each plus their activation traffic at ``elementwise_bandwidth * HBM``;
* attention: decode streams every running sequence's KV cache at
  ``attention_bandwidth * HBM``; a prefill chunk of ``n`` tokens after ``k`` cached ones does
  ``4 * heads * head_dim * n * (k + n/2)`` causal FLOPs at ``attention_compute * peak``;
  each costs a fixed ``attention_latency`` per layer;
* the LM head for the ``S`` sampled positions, as one more GEMM;
* two all-reduces of ``N * hidden`` activations per layer: ``2 (tp-1)/tp`` of the message over
  the link's NCCL bus bandwidth, plus the runtime's launch latency and the link's latency per
  ring hop;
* the runtime: a fixed CPU cost per iteration (scheduling, input preparation, launch) and a
  cost per scheduled sequence (sampling, detokenisation, output processing).

Calibration -- done once by coordinate descent on the mean absolute log error, each data
source weighted equally; the numbers, rounded, live in :mod:`slotune.sim.profiles`:

* ``weight_bandwidth``, ``gemm_compute``, ``elementwise_bandwidth``, ``kernel_latency`` per
  GPU type from every row of Vidur's per-operator profiles of the linear layers
  (``vidur_linear_ops_per_iteration.csv``: Llama-2-7B, Llama-3-8B, Llama-2-70B; TP 1-8; 1 to
  32k tokens; median error 2-7 % per group), jointly with the end-to-end rows below. On H100
  Vidur's kernels alone reach ~0.70 of peak while Splitwise's prefills imply less; the joint
  fit settles at 0.64.
* ``attention_bandwidth`` and ``attention_latency`` from Vidur's A100 decode-attention
  profile of Llama-2-70B at TP2 (its least-squares line is within 4 % of ours). The prefill
  rows of that old profile are two times slower than what the end-to-end data imply and are
  not used; ``attention_compute`` comes from the end-to-end prefills (Splitwise, SageServe)
  and is low on H100 because 2023 attention kernels (before FlashAttention-3) used Hopper
  poorly.
* the runtimes and links from the end-to-end measurements of each serving stack: Splitwise's
  Llama2-70B on A100/H100 at TP2, and SageServe's vLLM V0 with Llama-3.1-8B on A100 at TP2
  and TP4. SageServe's TP4 prefills are slower than its TP2 ones, which only a PCIe hop in
  the TP4 ring explains; its TP2 rows fit A100 PCIe cards (1.94 TB/s, 300 W: compute-bound
  kernels at 0.79 of the SXM speed) joined in pairs by NVLink bridges.

Against the 32 reference points of ``../shared/perf/README.md`` the median error is 2.7 % and
the worst 17.7 % (``tests/unit/sim/test_perf_accuracy.py`` prints the table). Known misses,
printed there too: Splitwise's TP4/TP8 rows (its stack stops scaling past TP2; we predict
them 12-34 % too fast at the median), SageServe's two rows with an 8192-token prompt whose
decode is twice as slow as every other row, and its 128-token prompts, whose ~12 ms of
client-side overhead is not part of an engine iteration.

The profiles shipped for simulation (``llama-3-8b-h100`` ...) run the vLLM V1 runtime, whose
overheads (CUDA graphs for decode, custom all-reduce, asynchronous scheduling) are much lower
than those of the 2023-2024 stacks behind the measurements; see ``profiles.VLLM_V1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Dtype = Literal["bf16", "fp8"]

DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp8": 1}
ACTIVATION_BYTES = 2  # activations stay in bf16 even with fp8 weights
KV_BLOCK_TOKENS = 16  # vLLM's default block size

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class ModelArchitecture:
    """The shape of a dense decoder-only transformer (Llama family)."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool = False

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer (norm weights are negligible and left out)."""
        d = self.hidden_size
        qkv = d * (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim
        o = self.num_attention_heads * self.head_dim * d
        mlp = 3 * d * self.intermediate_size
        return qkv + o + mlp

    @property
    def params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tied_embeddings else embeddings
        return self.num_layers * self.layer_params + embeddings + lm_head


@dataclass(frozen=True, slots=True)
class Interconnect:
    """The GPU-to-GPU link that carries tensor-parallel all-reduces.

    ``bus_bandwidth`` is NCCL's "busbw" for large all-reduces (bytes/s), so a message of
    ``S`` bytes over ``n`` GPUs takes ``S * 2(n-1)/n / bus_bandwidth``; ``hop_latency_s``
    is the latency of one of the ``2(n-1)`` ring steps.
    """

    name: str
    bus_bandwidth: float
    hop_latency_s: float


@dataclass(frozen=True, slots=True)
class GpuEfficiency:
    """Fractions of the datasheet peaks that kernels reach, calibrated per GPU type."""

    weight_bandwidth: float
    gemm_compute: float
    elementwise_bandwidth: float
    attention_bandwidth: float
    attention_compute: float
    kernel_latency_s: float
    # Paged/flash attention kernels carry a larger fixed cost (split-KV reduction, block
    # tables) than a plain GEMM launch: Vidur's decode attention at batch 1 is flat ~15 us.
    attention_latency_s: float


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """Datasheet figures of one GPU type plus its calibrated efficiencies."""

    name: str
    memory_bytes: int
    hbm_bandwidth: float  # bytes/s
    bf16_flops: float  # dense, FLOP/s
    fp8_flops: float | None  # dense, FLOP/s; None where the GPU has no fp8 tensor cores
    interconnect: Interconnect
    efficiency: GpuEfficiency


@dataclass(frozen=True, slots=True)
class ServingRuntime:
    """CPU-side and collective costs of a serving stack, independent of the GPU math."""

    name: str
    step_overhead_s: float
    per_sequence_overhead_s: float
    collective_latency_s: float  # fixed cost of launching one all-reduce
    # Stacks that ship per-sequence inputs to every tensor-parallel worker each step (vLLM V0)
    # pay this per sequence and per extra worker.
    per_sequence_per_worker_s: float = 0.0
    # Memory vLLM keeps outside the KV cache besides weights: CUDA context, NCCL buffers,
    # CUDA graphs, and the activation peak of a max_num_batched_tokens forward pass.
    non_kv_reserved_bytes: int = int(1.5 * GIB)


@dataclass(frozen=True, slots=True)
class PerfProfile:
    """A deployable configuration: one model on ``tensor_parallel`` GPUs of one type."""

    name: str
    model: ModelArchitecture
    gpu: GpuSpec
    runtime: ServingRuntime
    tensor_parallel: int = 1
    weight_dtype: Dtype = "bf16"
    kv_cache_dtype: Dtype = "bf16"
    interconnect: Interconnect | None = None  # None: the GPU's own (NVLink)
    gpu_memory_utilization: float = 0.92

    def __post_init__(self) -> None:
        if self.tensor_parallel < 1:
            raise ValueError(f"tensor_parallel must be >= 1, got {self.tensor_parallel}")
        if self.model.num_attention_heads % self.tensor_parallel:
            raise ValueError(
                f"{self.model.name}: {self.model.num_attention_heads} attention heads do not "
                f"split over tensor_parallel={self.tensor_parallel}"
            )
        if self.weight_dtype == "fp8" and self.gpu.fp8_flops is None:
            raise ValueError(f"{self.gpu.name} has no fp8 tensor cores")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")

    @property
    def link(self) -> Interconnect:
        return self.interconnect if self.interconnect is not None else self.gpu.interconnect

    @property
    def num_gpus(self) -> int:
        return self.tensor_parallel


@dataclass(frozen=True, slots=True)
class KvCacheCapacity:
    """What vLLM would report at start-up as "GPU KV cache size"."""

    tokens: int
    blocks: int
    bytes_per_token: int  # summed over the tensor-parallel group
    available_bytes: int  # summed over the tensor-parallel group


@dataclass(frozen=True, slots=True)
class _Gemm:
    rows: int  # K: input features per GPU
    cols: int  # M: output features per GPU


class PerformanceModel:
    """Iteration times and KV capacity of one :class:`PerfProfile`.

    All times are seconds. Methods are cheap (a few float operations plus a cache lookup)
    because the engine simulator calls :meth:`iteration_time` once per simulated iteration.
    """

    # The exponent of the smooth roofline maximum; 2 fits Vidur's GEMMs on both GPUs.
    ROOFLINE_SHARPNESS = 2.0

    def __init__(self, profile: PerfProfile) -> None:
        self.profile = profile
        m, g, tp = profile.model, profile.gpu, profile.tensor_parallel
        eff = g.efficiency
        self._layers = m.num_layers
        self._tp = tp
        weight_bytes = DTYPE_BYTES[profile.weight_dtype]
        peak = g.fp8_flops if profile.weight_dtype == "fp8" and g.fp8_flops else g.bf16_flops
        self._weight_bw = eff.weight_bandwidth * g.hbm_bandwidth
        self._gemm_flops = eff.gemm_compute * peak
        self._weight_bytes_per_param = weight_bytes
        self._kernel_latency = eff.kernel_latency_s

        heads = m.num_attention_heads // tp
        # With more GPUs than KV heads each GPU keeps a replica of one KV head.
        kv_heads = max(1, m.num_kv_heads // tp)
        self._heads_per_gpu = heads
        self._kv_heads_per_gpu = kv_heads
        d, hd, inter = m.hidden_size, m.head_dim, m.intermediate_size // tp
        self._gemms = (
            _Gemm(d, (heads + 2 * kv_heads) * hd),
            _Gemm(heads * hd, d),
            _Gemm(d, 2 * inter),
            _Gemm(inter, d),
        )
        self._lm_head = _Gemm(d, math.ceil(m.vocab_size / tp))
        # Activation bytes per token per layer moved by the element-wise kernels:
        # 2 RMSNorms (read+write d), rope (q and k in place), SiLU*mul (read 2I, write I),
        # 2 residual adds (read 2d, write d).
        ew_bytes = 2 * 2 * d + 2 * (heads + kv_heads) * hd + 3 * inter + 2 * 3 * d
        self._elementwise_kernels_per_layer = 6
        self._elementwise_s_per_token = (
            ew_bytes * ACTIVATION_BYTES / (eff.elementwise_bandwidth * g.hbm_bandwidth)
        )
        # The embedding lookup reads and writes one row of ``d`` per token, in one kernel.
        self._embedding_s_per_token = (
            2 * d * ACTIVATION_BYTES / (eff.elementwise_bandwidth * g.hbm_bandwidth)
        )

        kv_dtype_bytes = DTYPE_BYTES[profile.kv_cache_dtype]
        self._kv_bytes_per_token_layer_gpu = 2 * kv_heads * hd * kv_dtype_bytes
        self._attn_bw = eff.attention_bandwidth * g.hbm_bandwidth
        self._attn_flops = eff.attention_compute * g.bf16_flops
        self._attn_flops_per_pair = 4 * heads * hd  # per (query, key) pair, per layer
        self._attn_latency = eff.attention_latency_s

        link = profile.link
        runtime = profile.runtime
        if tp > 1:
            self._allreduce_fixed = runtime.collective_latency_s + 2 * (tp - 1) * (
                link.hop_latency_s
            )
            self._allreduce_s_per_token = (
                d * ACTIVATION_BYTES * 2 * (tp - 1) / tp / link.bus_bandwidth
            )
        else:
            self._allreduce_fixed = 0.0
            self._allreduce_s_per_token = 0.0
        self._step_overhead = runtime.step_overhead_s
        self._per_seq_overhead = (
            runtime.per_sequence_overhead_s + (tp - 1) * runtime.per_sequence_per_worker_s
        )
        self._dense_cache: dict[int, float] = {}
        self._lm_head_cache: dict[int, float] = {}
        self._decode_cache: dict[int, tuple[float, float]] = {}

    # ----------------------------------------------------------------- building blocks

    def _gemm_time(self, gemm: _Gemm, tokens: int) -> float:
        weight = gemm.rows * gemm.cols * self._weight_bytes_per_param
        activations = tokens * (gemm.rows + gemm.cols) * ACTIVATION_BYTES
        t_mem = (weight + activations) / self._weight_bw
        t_compute = 2.0 * tokens * gemm.rows * gemm.cols / self._gemm_flops
        p = self.ROOFLINE_SHARPNESS
        return float((t_mem**p + t_compute**p) ** (1.0 / p)) + self._kernel_latency

    def linear_layers_time(self, num_tokens: int) -> float:
        """GEMMs and element-wise kernels of all decoder layers for ``num_tokens`` tokens.

        This is what Vidur's ``linear_ops`` measure: no attention kernel, no all-reduce, no LM
        head, no CPU overhead.
        """
        if num_tokens <= 0:
            return 0.0
        per_layer = sum(self._gemm_time(g, num_tokens) for g in self._gemms)
        per_layer += (
            self._elementwise_kernels_per_layer * self._kernel_latency
            + num_tokens * self._elementwise_s_per_token
        )
        return self._layers * per_layer

    def allreduce_time(self, num_tokens: int) -> float:
        """The two all-reduces per layer of a tensor-parallel forward pass."""
        if num_tokens <= 0 or self._tp == 1:
            return 0.0
        per_collective = self._allreduce_fixed + num_tokens * self._allreduce_s_per_token
        return 2 * self._layers * per_collective

    def lm_head_time(self, num_sampled: int) -> float:
        if num_sampled <= 0:
            return 0.0
        cached = self._lm_head_cache.get(num_sampled)
        if cached is None:
            cached = self._gemm_time(self._lm_head, num_sampled)
            self._lm_head_cache[num_sampled] = cached
        return cached

    def _dense_time(self, num_tokens: int) -> float:
        """Everything whose cost depends on the token count only (memoised)."""
        cached = self._dense_cache.get(num_tokens)
        if cached is None:
            cached = (
                self.linear_layers_time(num_tokens)
                + self.allreduce_time(num_tokens)
                + self._kernel_latency
                + num_tokens * self._embedding_s_per_token
            )
            self._dense_cache[num_tokens] = cached
        return cached

    def decode_attention_time(self, num_seqs: int, context_tokens: int) -> float:
        """Paged attention of ``num_seqs`` decoding sequences that hold ``context_tokens``."""
        if num_seqs <= 0:
            return 0.0
        kv_bytes = context_tokens * self._kv_bytes_per_token_layer_gpu
        return self._layers * (self._attn_latency + kv_bytes / self._attn_bw)

    def prefill_attention_time(self, attention_pairs: float, context_tokens: int = 0) -> float:
        """Attention of prefill chunks.

        ``attention_pairs`` is ``sum(n_i * (k_i + n_i / 2))`` over chunks of ``n_i`` new
        tokens after ``k_i`` cached ones (the causal query-key pairs); ``context_tokens`` is
        ``sum(k_i + n_i)``, the KV the chunks read, which bounds short chunks over long
        contexts from below.
        """
        if attention_pairs <= 0:
            return 0.0
        compute = attention_pairs * self._attn_flops_per_pair / self._attn_flops
        memory = context_tokens * self._kv_bytes_per_token_layer_gpu / self._attn_bw
        return self._layers * (self._attn_latency + max(compute, memory))

    # ------------------------------------------------------------------ public prices

    def iteration_time(
        self,
        *,
        decode_seqs: int,
        decode_context_tokens: int,
        prefill_tokens: int = 0,
        prefill_seqs: int = 0,
        prefill_attention_pairs: float = 0.0,
        prefill_context_tokens: int = 0,
    ) -> float:
        """One engine iteration: ``decode_seqs`` decode tokens plus prefill chunks.

        ``decode_context_tokens`` is the sum over decoding sequences of the tokens they attend
        to (their KV length including the new token). Prefill chunks are summarised by their
        token count, their number (each samples one position) and the attention sums described
        in :meth:`prefill_attention_time`.
        """
        num_tokens = decode_seqs + prefill_tokens
        if num_tokens <= 0:
            return 0.0
        num_seqs = decode_seqs + prefill_seqs
        t = self._dense_time(num_tokens) + self.lm_head_time(num_seqs)
        if decode_seqs:
            t += self.decode_attention_time(decode_seqs, decode_context_tokens)
        if prefill_tokens:
            t += self.prefill_attention_time(prefill_attention_pairs, prefill_context_tokens)
            if decode_seqs:
                # A mixed batch runs one varlen attention kernel per layer, not two.
                t -= self._layers * self._attn_latency
        return t + self._step_overhead + self._per_seq_overhead * num_seqs

    def decode_coefficients(self, batch_size: int) -> tuple[float, float]:
        """``(fixed, per_context_token)``: a decode-only iteration of ``batch_size`` sequences
        attending to ``c`` tokens takes ``fixed + per_context_token * c`` seconds.

        The same sum as :meth:`iteration_time`, split so that the engine can price a long
        run of decode iterations (whose context grows by ``batch_size`` each) with two
        float operations per iteration.
        """
        cached = self._decode_cache.get(batch_size)
        if cached is None:
            fixed = (
                self._dense_time(batch_size)
                + self.lm_head_time(batch_size)
                + self._layers * self._attn_latency
                + self._step_overhead
                + self._per_seq_overhead * batch_size
            )
            slope = self._layers * self._kv_bytes_per_token_layer_gpu / self._attn_bw
            cached = self._decode_cache[batch_size] = (fixed, slope)
        return cached

    def decode_step_time(self, batch_size: int, context_tokens: int) -> float:
        """A decode-only iteration of ``batch_size`` sequences holding ``context_tokens``."""
        return self.iteration_time(decode_seqs=batch_size, decode_context_tokens=context_tokens)

    def prefill_time(self, chunk_tokens: int, context_tokens: int = 0) -> float:
        """A prefill-only iteration: one chunk of ``chunk_tokens`` after ``context_tokens``."""
        return self.iteration_time(
            decode_seqs=0,
            decode_context_tokens=0,
            prefill_tokens=chunk_tokens,
            prefill_seqs=1,
            prefill_attention_pairs=chunk_tokens * (context_tokens + chunk_tokens / 2),
            prefill_context_tokens=context_tokens + chunk_tokens,
        )

    def full_prefill_time(self, prompt_tokens: int, chunk_size: int) -> float:
        """A whole prompt prefilled alone in chunks of at most ``chunk_size`` tokens."""
        done, total = 0, 0.0
        while done < prompt_tokens:
            n = min(chunk_size, prompt_tokens - done)
            total += self.prefill_time(n, done)
            done += n
        return total

    # ---------------------------------------------------------------------- memory

    @property
    def weight_bytes_per_gpu(self) -> int:
        m = self.profile.model
        return math.ceil(m.params * DTYPE_BYTES[self.profile.weight_dtype] / self._tp)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes one token occupies across the whole tensor-parallel group."""
        return self._layers * self._kv_bytes_per_token_layer_gpu * self._tp

    def activation_peak_bytes(self, max_num_batched_tokens: int) -> int:
        """Per-GPU activation memory of the largest forward pass vLLM profiles at start-up.

        The MLP of a full token budget dominates: gate/up output (2 I/tp), the SiLU product
        (I/tp) and a few hidden-size buffers per token.
        """
        m = self.profile.model
        per_token = 3 * m.intermediate_size // self._tp + 4 * m.hidden_size
        return max_num_batched_tokens * per_token * ACTIVATION_BYTES

    def kv_cache_capacity(self, max_num_batched_tokens: int = 8192) -> KvCacheCapacity:
        """Tokens of KV cache left after weights and reserves, as vLLM sizes it at start-up.

        ``memory * gpu_memory_utilization - weights - runtime reserve - activation peak`` per
        GPU, rounded down to whole blocks of :data:`KV_BLOCK_TOKENS`.
        """
        p = self.profile
        per_gpu = (
            p.gpu.memory_bytes * p.gpu_memory_utilization
            - self.weight_bytes_per_gpu
            - p.runtime.non_kv_reserved_bytes
            - self.activation_peak_bytes(max_num_batched_tokens)
        )
        if per_gpu <= 0:
            raise ValueError(
                f"{p.name}: weights ({self.weight_bytes_per_gpu / GIB:.1f} GiB per GPU) and "
                f"activations do not fit in {p.gpu.memory_bytes / GIB:.0f} GiB at utilisation "
                f"{p.gpu_memory_utilization}"
            )
        per_token_gpu = self._layers * self._kv_bytes_per_token_layer_gpu
        blocks = int(per_gpu // (per_token_gpu * KV_BLOCK_TOKENS))
        return KvCacheCapacity(
            tokens=blocks * KV_BLOCK_TOKENS,
            blocks=blocks,
            bytes_per_token=self.kv_bytes_per_token,
            available_bytes=int(per_gpu) * self._tp,
        )


@dataclass(frozen=True, slots=True)
class IterationShape:
    """A convenience value for callers that build iterations by hand (tests, reports)."""

    decode_seqs: int = 0
    decode_context_tokens: int = 0
    prefill_chunks: tuple[tuple[int, int], ...] = field(default=())  # (new tokens, cached)

    def price(self, model: PerformanceModel) -> float:
        pairs = sum(n * (k + n / 2) for n, k in self.prefill_chunks)
        return model.iteration_time(
            decode_seqs=self.decode_seqs,
            decode_context_tokens=self.decode_context_tokens,
            prefill_tokens=sum(n for n, _ in self.prefill_chunks),
            prefill_seqs=len(self.prefill_chunks),
            prefill_attention_pairs=pairs,
            prefill_context_tokens=sum(n + k for n, k in self.prefill_chunks),
        )
