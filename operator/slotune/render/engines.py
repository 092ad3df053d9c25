"""Engine adapters: how each model server is started, probed and measured.

An adapter turns the spec and the tuned knobs into the server's command line, and names the
metrics the operator and the alerts read. Flag and metric names come from the engines' sources
(see DESIGN.md, "Engine facts"); `api.spec.RESERVED_ENGINE_FLAGS` lists the flags set here so
users cannot pass them twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from slotune.api.spec import LLMServiceSpec
from slotune.api.status import Knobs


@dataclass(frozen=True)
class MetricNames:
    """The Prometheus series an engine exports for each quantity slotune reads."""

    ttft_histogram: str
    itl_histogram: str
    e2e_histogram: str
    queue_time_histogram: str
    running_gauge: str
    waiting_gauge: str
    kv_usage_gauge: str
    prompt_tokens_counter: str
    generation_tokens_counter: str
    # From a request's first scheduling to its first token; None where the engine has none.
    prefill_time_histogram: str | None = None


@dataclass(frozen=True)
class Probes:
    """HTTP paths the kubelet probes."""

    startup: str
    readiness: str
    liveness: str


class EngineAdapter(Protocol):
    # Read-only members, so frozen dataclasses satisfy the protocol.
    @property
    def kind(self) -> str: ...
    @property
    def default_image(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def metrics(self) -> MetricNames: ...
    @property
    def probes(self) -> Probes: ...

    def command(self) -> list[str]: ...

    def args(self, spec: LLMServiceSpec, knobs: Knobs, model_path: str) -> list[str]: ...


def served_name(spec: LLMServiceSpec) -> str:
    return spec.model.served_model_name or spec.model.name


def pipeline_parallel(spec: LLMServiceSpec) -> int:
    return spec.resources.gpus_per_replica // spec.resources.tensor_parallel


@dataclass(frozen=True)
class VllmAdapter:
    kind: str = "vllm"
    default_image: str = "vllm/vllm-openai:v0.11.0"
    port: int = 8000
    metrics: MetricNames = MetricNames(
        ttft_histogram="vllm:time_to_first_token_seconds",
        itl_histogram="vllm:inter_token_latency_seconds",
        e2e_histogram="vllm:e2e_request_latency_seconds",
        queue_time_histogram="vllm:request_queue_time_seconds",
        running_gauge="vllm:num_requests_running",
        waiting_gauge="vllm:num_requests_waiting",
        kv_usage_gauge="vllm:kv_cache_usage_perc",
        prompt_tokens_counter="vllm:prompt_tokens_total",
        generation_tokens_counter="vllm:generation_tokens_total",
        prefill_time_histogram="vllm:request_prefill_time_seconds",
    )
    probes: Probes = Probes(startup="/health", readiness="/health", liveness="/health")

    def command(self) -> list[str]:
        return ["vllm", "serve"]

    def args(self, spec: LLMServiceSpec, knobs: Knobs, model_path: str) -> list[str]:
        args = [
            model_path,
            f"--served-model-name={served_name(spec)}",
            "--host=0.0.0.0",
            f"--port={self.port}",
            f"--max-num-seqs={knobs.max_num_seqs}",
            f"--max-num-batched-tokens={knobs.max_batched_tokens}",
            f"--tensor-parallel-size={spec.resources.tensor_parallel}",
        ]
        if pipeline_parallel(spec) > 1:
            args.append(f"--pipeline-parallel-size={pipeline_parallel(spec)}")
        if spec.model.max_model_len is not None:
            args.append(f"--max-model-len={spec.model.max_model_len}")
        if spec.model.quantization != "none":
            args.append(f"--quantization={spec.model.quantization}")
        return args + list(spec.engine.extra_args)


@dataclass(frozen=True)
class SglangAdapter:
    kind: str = "sglang"
    default_image: str = "lmsysorg/sglang:v0.5.3-cu129"
    port: int = 30000
    metrics: MetricNames = MetricNames(
        ttft_histogram="sglang:time_to_first_token_seconds",
        itl_histogram="sglang:inter_token_latency_seconds",
        e2e_histogram="sglang:e2e_request_latency_seconds",
        queue_time_histogram="sglang:queue_time_seconds",
        running_gauge="sglang:num_running_reqs",
        waiting_gauge="sglang:num_queue_reqs",
        kv_usage_gauge="sglang:token_usage",
        prompt_tokens_counter="sglang:prompt_tokens_total",
        generation_tokens_counter="sglang:generation_tokens_total",
        # SGLang's documented metrics have no per-request prefill time: the policy then
        # prices prefill tokens from the ITL histogram alone.
    )
    # /health runs a one-token generation on SGLang: too heavy for a frequent liveness probe.
    probes: Probes = Probes(startup="/ready", readiness="/ready", liveness="/ping")

    def command(self) -> list[str]:
        return ["python3", "-m", "sglang.launch_server"]

    def args(self, spec: LLMServiceSpec, knobs: Knobs, model_path: str) -> list[str]:
        if pipeline_parallel(spec) > 1:
            # SGLang's pipeline parallelism is not exposed here; validate() reports it.
            raise ValueError("sglang: tensorParallel must equal gpusPerReplica")
        args = [
            f"--model-path={model_path}",
            f"--served-model-name={served_name(spec)}",
            "--host=0.0.0.0",
            f"--port={self.port}",
            "--enable-metrics",
            f"--max-running-requests={knobs.max_num_seqs}",
            f"--chunked-prefill-size={knobs.max_batched_tokens}",
            f"--tp-size={spec.resources.tensor_parallel}",
        ]
        if spec.model.max_model_len is not None:
            args.append(f"--context-length={spec.model.max_model_len}")
        if spec.model.quantization != "none":
            args.append(f"--quantization={spec.model.quantization}")
        return args + list(spec.engine.extra_args)


ADAPTERS: dict[str, EngineAdapter] = {"vllm": VllmAdapter(), "sglang": SglangAdapter()}


def adapter_for(spec: LLMServiceSpec) -> EngineAdapter:
    return ADAPTERS[spec.engine.kind]
