"""`LLMService.spec`: what the user asks for.

Every field carries a description because the CRD is generated from these models and
`kubectl explain llms.spec...` shows them. Cross-field rules live twice, as CEL (`cel_rules`)
and as a model validator with the same message; see `base.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from slotune.api.base import ApiModel, CelRule, rule_error
from slotune.api.durations import Duration, parse_duration

ShortString = Annotated[str, Field(min_length=1, max_length=253)]
Quantity = Annotated[
    str,
    Field(
        pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$",
        max_length=32,
        description="A Kubernetes quantity, for example 8, 500m, 64Gi.",
    ),
]
Percentile = Annotated[
    float,
    Field(
        ge=50,
        le=99.9,
        description="Which percentile of requests must meet the target, from 50 to 99.9.",
    ),
]

# Flags slotune sets from the spec and the tuner. Passing them in extraArgs would fight the
# tuner (or be silently overridden), so they are rejected up front. The render adapters test
# that they set every flag listed here.
RESERVED_ENGINE_FLAGS: dict[str, tuple[str, ...]] = {
    "vllm": (
        "--model",
        "--served-model-name",
        "--host",
        "--port",
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--tensor-parallel-size",
        "-tp",
        "--pipeline-parallel-size",
        "-pp",
        "--max-model-len",
        "--quantization",
        "-q",
    ),
    "sglang": (
        "--model-path",
        "--served-model-name",
        "--host",
        "--port",
        "--max-running-requests",
        "--chunked-prefill-size",
        "--tp-size",
        "--context-length",
        "--quantization",
        "--enable-metrics",
    ),
}

GPU_PRODUCTS: dict[str, str] = {
    # The value NVIDIA GPU feature discovery puts on the `nvidia.com/gpu.product` node label.
    "nvidia-h100-80gb": "NVIDIA-H100-80GB-HBM3",
    "nvidia-h200-141gb": "NVIDIA-H200",
    "nvidia-a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "nvidia-a100-40gb": "NVIDIA-A100-SXM4-40GB",
    "nvidia-l40s": "NVIDIA-L40S",
    "nvidia-l4": "NVIDIA-L4",
    "nvidia-b200": "NVIDIA-B200",
}
GpuType = Literal[
    "nvidia-h100-80gb",
    "nvidia-h200-141gb",
    "nvidia-a100-80gb",
    "nvidia-a100-40gb",
    "nvidia-l40s",
    "nvidia-l4",
    "nvidia-b200",
]


class SecretKeyRef(ApiModel):
    """A key of a Secret in the LLMService's namespace."""

    name: ShortString = Field(description="Name of the Secret.")
    key: ShortString = Field(default="token", description="Key within the Secret.")


class ValueFrom(ApiModel):
    """Where an environment variable's value comes from."""

    secret_key_ref: SecretKeyRef = Field(description="Take the value from a Secret's key.")


class EnvVar(ApiModel):
    """An environment variable of the model-server container."""

    cel_rules = (
        CelRule(
            "has(self.value) != has(self.valueFrom)",
            "set exactly one of value and valueFrom",
        ),
    )

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=128)] = Field(
        description="Variable name."
    )
    value: Annotated[str, Field(max_length=4096)] | None = Field(
        default=None, description="Literal value."
    )
    value_from: ValueFrom | None = Field(
        default=None, description="Take the value from a Secret instead of a literal."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.value_from is None):
            raise rule_error(self.cel_rules[0])
        return self


class ModelSpec(ApiModel):
    """The model to serve."""

    name: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        description=(
            "Model id, for example meta-llama/Meta-Llama-3-8B-Instruct. Also the name clients "
            "send in the OpenAI API unless servedModelName is set."
        )
    )
    source: Annotated[str, Field(pattern=r"^((hf|pvc)://.+)?$", max_length=512)] = Field(
        default="",
        description=(
            "Where the weights come from: hf://ORG/NAME (Hugging Face hub) or "
            "pvc://CLAIM/PATH (a PersistentVolumeClaim mounted read-only). "
            "Empty: hf://<name>."
        ),
    )
    served_model_name: Annotated[str, Field(min_length=1, max_length=253)] | None = Field(
        default=None, description="Name clients use in API requests; defaults to name."
    )
    quantization: Literal[
        "none", "fp8", "awq", "gptq", "bitsandbytes", "compressed-tensors", "modelopt"
    ] = Field(default="none", description="Weight quantization method; none serves the dtype.")
    max_model_len: Annotated[int, Field(ge=128, le=1_048_576)] | None = Field(
        default=None,
        description="Longest context (prompt + output tokens) accepted; empty: the model's own.",
    )
    hub_token_secret: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding a Hugging Face token, exposed to the server as HF_TOKEN.",
    )


class EngineSpec(ApiModel):
    """The model server that runs the model."""

    cel_rules = tuple(
        CelRule(
            f"self.kind != '{kind}' || !has(self.extraArgs) || "
            f"self.extraArgs.all(a, !{list(flags)!r}.exists(f, a == f || a.startsWith(f + '=')))",
            f"extraArgs must not set a flag slotune manages for {kind}: "
            + ", ".join(flags)
            + " (use the matching spec field instead)",
            ".extraArgs",
        )
        for kind, flags in RESERVED_ENGINE_FLAGS.items()
    )

    kind: Literal["vllm", "sglang"] = Field(
        default="vllm", description="Engine: vllm (vllm serve) or sglang (sglang.launch_server)."
    )
    image: Annotated[str, Field(max_length=512)] = Field(
        default="",
        description="Container image; empty: the engine's default image for this slotune release.",
    )
    extra_args: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=64)] = (
        Field(
            default_factory=list,
            description=(
                "More command-line flags for the engine, appended verbatim. Flags slotune "
                "manages (batch size, parallelism, port, model) are rejected."
            ),
        )
    )
    env: Annotated[list[EnvVar], Field(max_length=64)] = Field(
        default_factory=list, description="Environment variables of the server container."
    )

    @model_validator(mode="after")
    def _no_reserved_flags(self) -> EngineSpec:
        reserved = RESERVED_ENGINE_FLAGS[self.kind]
        for arg in self.extra_args:
            if arg.split("=", 1)[0] in reserved:
                raise rule_error(self.cel_rules[list(RESERVED_ENGINE_FLAGS).index(self.kind)])
        return self


class Toleration(ApiModel):
    """A Kubernetes toleration for the server pods (as in a Pod spec)."""

    key: Annotated[str, Field(max_length=253)] | None = Field(
        default=None, description="Taint key; empty with operator Exists matches every taint."
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: Annotated[str, Field(max_length=63)] | None = Field(
        default=None, description="Taint value, for operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty: all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )


class ResourcesSpec(ApiModel):
    """GPUs and placement of each replica."""

    cel_rules = (
        CelRule(
            "self.gpusPerReplica % self.tensorParallel == 0",
            "tensorParallel must divide gpusPerReplica (the rest becomes pipeline parallel)",
            ".tensorParallel",
        ),
    )

    gpus_per_replica: Annotated[int, Field(ge=1, le=16)] = Field(
        default=1, description="GPUs (nvidia.com/gpu) each replica requests."
    )
    gpu_type: GpuType | None = Field(
        default=None,
        description=(
            "GPU model to schedule on; sets a node selector on the nvidia.com/gpu.product label "
            "and picks the performance profile. Empty: any GPU node."
        ),
    )
    tensor_parallel: Annotated[int, Field(ge=1, le=16)] = Field(
        default=1, description="Tensor-parallel size; must divide gpusPerReplica."
    )
    cpu: Quantity | None = Field(default=None, description="CPU request of the server container.")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit of the server container."
    )
    shared_memory: Quantity = Field(
        default="16Gi", description="Size of the in-memory /dev/shm (NCCL and workers need it)."
    )
    node_selector: Annotated[
        dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=32)
    ] = Field(default_factory=dict, description="Extra node labels the pods must match.")
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(
        default_factory=list,
        description="Tolerations beyond the default one for the nvidia.com/gpu taint.",
    )

    @model_validator(mode="after")
    def _tp_divides_gpus(self) -> ResourcesSpec:
        if self.gpus_per_replica % self.tensor_parallel:
            raise rule_error(self.cel_rules[0])
        return self


class LatencyTarget(ApiModel):
    """A latency objective: `percentile` percent of requests within `target`."""

    cel_rules = (
        CelRule(
            "duration(self.target) > duration('0s') && duration(self.target) <= duration('1h')",
            "target must be above 0 and at most 1h",
            ".target",
        ),
    )

    target: Duration = Field(description="Latency bound, for example 500ms or 2s.")
    percentile: Percentile = 95.0

    @property
    def seconds(self) -> float:
        return parse_duration(self.target)

    @model_validator(mode="after")
    def _positive(self) -> LatencyTarget:
        if not 0 < self.seconds <= 3600:
            raise rule_error(self.cel_rules[0])
        return self


class SLOSpec(ApiModel):
    """The latency objectives slotune keeps, measured over a sliding window."""

    cel_rules = (
        CelRule(
            "duration(self.window) >= duration('1m') && duration(self.window) <= duration('1h')",
            "window must be between 1m and 1h",
            ".window",
        ),
        CelRule(
            "!has(self.e2e) || duration(self.e2e.target) > duration(self.ttft.target)",
            "e2e.target must be greater than ttft.target (a request ends after its first token)",
            ".e2e.target",
        ),
    )

    ttft: LatencyTarget = Field(
        description="Time to first token, measured from arrival (includes queueing)."
    )
    itl: LatencyTarget = Field(description="Inter-token latency: time between streamed tokens.")
    e2e: LatencyTarget | None = Field(
        default=None, description="End-to-end request latency; optional."
    )
    window: Duration = Field(
        default="5m",
        description="Window over which percentiles are evaluated, from 1m to 1h.",
    )

    @model_validator(mode="after")
    def _rules(self) -> SLOSpec:
        if not 60 <= parse_duration(self.window) <= 3600:
            raise rule_error(self.cel_rules[0])
        if self.e2e is not None and self.e2e.seconds <= self.ttft.seconds:
            raise rule_error(self.cel_rules[1])
        return self


class ScalingSpec(ApiModel):
    """How the replica count may move."""

    cel_rules = (
        CelRule(
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must be less than or equal to maxReplicas",
            ".minReplicas",
        ),
    )

    mode: Literal["auto", "external"] = Field(
        default="auto",
        description=(
            "auto: slotune sets the replica count. external: an HPA, KEDA or a person owns "
            "replicas; slotune never writes them but still tunes batching and reports the SLO."
        ),
    )
    min_replicas: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=1, description="Fewest replicas slotune keeps."
    )
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=8, description="Most replicas slotune runs."
    )
    scale_up_stabilization: Duration = Field(
        default="0s", description="How long a need to scale up must persist before acting."
    )
    scale_down_stabilization: Duration = Field(
        default="5m", description="How long a surplus must persist before removing replicas."
    )
    gpu_budget: Annotated[int, Field(ge=1, le=16000)] | None = Field(
        default=None,
        description=(
            "Most GPUs this service may hold in total (replicas x gpusPerReplica); "
            "empty: only maxReplicas limits it."
        ),
    )

    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise rule_error(self.cel_rules[0])
        return self


class _KnobRange(ApiModel):
    """A knob's start value and the bounds the tuner keeps it in."""

    cel_rules = (
        CelRule("self.min <= self.initial", "min must be less than or equal to initial", ".min"),
        CelRule(
            "self.initial <= self.max", "initial must be less than or equal to max", ".initial"
        ),
    )
    initial: int
    min: int
    max: int

    @model_validator(mode="after")
    def _ordered(self) -> _KnobRange:
        if self.min > self.initial:
            raise rule_error(self.cel_rules[0])
        if self.initial > self.max:
            raise rule_error(self.cel_rules[1])
        return self


class MaxNumSeqsRange(_KnobRange):
    """Bounds of the engine's concurrent-sequence limit (vLLM --max-num-seqs)."""

    initial: Annotated[int, Field(ge=1, le=8192)] = Field(
        default=128, description="Value at creation."
    )
    min: Annotated[int, Field(ge=1, le=8192)] = Field(default=8, description="Lowest allowed.")
    max: Annotated[int, Field(ge=1, le=8192)] = Field(default=512, description="Highest allowed.")


class MaxBatchedTokensRange(_KnobRange):
    """Bounds of the per-step token budget (vLLM --max-num-batched-tokens)."""

    initial: Annotated[int, Field(ge=64, le=1_048_576)] = Field(
        default=8192, description="Value at creation."
    )
    min: Annotated[int, Field(ge=64, le=1_048_576)] = Field(
        default=256,
        description=(
            "Lowest allowed. Small budgets split long prompts into short prefill chunks, so "
            "a prefill stalls the running decodes for less than the ITL target."
        ),
    )
    max: Annotated[int, Field(ge=64, le=1_048_576)] = Field(
        default=16384, description="Highest allowed."
    )


class BatchingSpec(ApiModel):
    """The engine batch knobs slotune retunes, and their bounds."""

    cel_rules = (
        CelRule(
            "self.maxBatchedTokens.initial >= self.maxNumSeqs.initial",
            "maxBatchedTokens.initial must be at least maxNumSeqs.initial "
            "(the engine refuses a token budget below its sequence limit; slotune keeps "
            "every later pair so)",
            ".maxBatchedTokens.initial",
        ),
    )

    max_num_seqs: MaxNumSeqsRange = Field(
        default_factory=MaxNumSeqsRange,
        description="Most sequences in one batch. Lower: faster tokens; higher: more throughput.",
    )
    max_batched_tokens: MaxBatchedTokensRange = Field(
        default_factory=MaxBatchedTokensRange,
        description="Most tokens processed in one engine step (prefill chunks plus decodes).",
    )

    @model_validator(mode="after")
    def _budget_covers_seqs(self) -> BatchingSpec:
        if self.max_batched_tokens.initial < self.max_num_seqs.initial:
            raise rule_error(self.cel_rules[0])
        return self


class TuningSpec(ApiModel):
    """Whether and how often slotune retunes."""

    cel_rules = (
        CelRule(
            "duration(self.interval) >= duration('10s') "
            "&& duration(self.interval) <= duration('10m')",
            "interval must be between 10s and 10m",
            ".interval",
        ),
    )

    mode: Literal["auto", "advise", "off"] = Field(
        default="auto",
        description=(
            "auto: decide and apply. advise: decide and report in status and Events, "
            "apply nothing. off: neither; the initial values stay."
        ),
    )
    interval: Duration = Field(default="30s", description="Time between tuning decisions.")

    @model_validator(mode="after")
    def _interval(self) -> TuningSpec:
        if not 10 <= parse_duration(self.interval) <= 600:
            raise rule_error(self.cel_rules[0])
        return self


class MetricsSpec(ApiModel):
    """Where the servers' latency metrics are read."""

    prometheus_url: Annotated[str, Field(pattern=r"^(https?://\S+)?$", max_length=512)] = Field(
        default="",
        description="Prometheus base URL for this service; empty: the operator-wide default.",
    )


class LLMServiceSpec(ApiModel):
    """An LLM served on GPUs and kept on a latency SLO."""

    cel_rules = (
        CelRule(
            "!has(self.scaling.gpuBudget) || "
            "self.scaling.gpuBudget >= self.scaling.minReplicas * self.resources.gpusPerReplica",
            "scaling.gpuBudget must cover minReplicas x resources.gpusPerReplica GPUs",
            ".scaling.gpuBudget",
        ),
        CelRule(
            "self.engine.kind != 'sglang' || "
            "self.resources.tensorParallel == self.resources.gpusPerReplica",
            "with engine.kind sglang, resources.tensorParallel must equal gpusPerReplica "
            "(slotune does not configure SGLang pipeline parallelism)",
            ".resources.tensorParallel",
        ),
    )

    model: ModelSpec = Field(description="The model to serve.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="The model server.")
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="GPUs and placement of each replica."
    )
    slo: SLOSpec = Field(description="Latency objectives.")
    scaling: ScalingSpec = Field(
        default_factory=ScalingSpec, description="Replica bounds and stabilisation."
    )
    batching: BatchingSpec = Field(
        default_factory=BatchingSpec, description="Batch knobs and their bounds."
    )
    tuning: TuningSpec = Field(default_factory=TuningSpec, description="Tuning mode and interval.")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Metrics source.")

    @model_validator(mode="after")
    def _cross_section(self) -> LLMServiceSpec:
        budget = self.scaling.gpu_budget
        gpus = self.resources.gpus_per_replica
        if budget is not None and budget < self.scaling.min_replicas * gpus:
            raise rule_error(self.cel_rules[0])
        if self.engine.kind == "sglang" and self.resources.tensor_parallel != gpus:
            raise rule_error(self.cel_rules[1])
        return self
