"""Hypothesis strategies shared by the test suites: valid LLMService objects, and broken ones
paired with the field path their error must name."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from slotune.api.spec import GPU_PRODUCTS

Obj = dict[str, Any]

names = st.from_regex(r"\A[a-z][a-z0-9-]{0,40}[a-z0-9]\Z", fullmatch=True)
# Model ids and other free text are data: include YAML and Jinja metacharacters on purpose.
free_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=60,
)


def _duration(low_ms: int, high_ms: int) -> st.SearchStrategy[str]:
    def fmt(ms: int) -> str:
        if ms % 60_000 == 0:
            return f"{ms // 60_000}m"
        if ms % 1000 == 0:
            return f"{ms // 1000}s"
        return f"{ms}ms"

    return st.integers(low_ms, high_ms).map(fmt)


percentiles = st.one_of(st.sampled_from([50, 90, 95, 99, 99.9]), st.floats(50, 99.9))


@st.composite
def knob_range(draw: st.DrawFn, low: int, high: int) -> Obj:
    values = sorted(draw(st.lists(st.integers(low, high), min_size=3, max_size=3)))
    return {"min": values[0], "initial": values[1], "max": values[2]}


@st.composite
def specs(draw: st.DrawFn) -> Obj:
    """A valid `spec` with a random subset of optional fields present."""
    kind = draw(st.sampled_from(["vllm", "sglang"]))
    gpus = draw(st.sampled_from([1, 2, 4, 8]))
    tp = (
        gpus
        if kind == "sglang"
        else draw(st.sampled_from([d for d in (1, 2, 4, 8) if gpus % d == 0]))
    )
    seqs = draw(knob_range(1, 2048))
    tokens = draw(knob_range(max(seqs["initial"], 64), 65536))
    ttft_ms = draw(st.integers(1, 30_000))
    min_replicas = draw(st.integers(1, 10))
    spec: Obj = {
        "model": {"name": draw(free_text)},
        "slo": {
            "ttft": {"target": f"{ttft_ms}ms", "percentile": draw(percentiles)},
            "itl": {"target": draw(_duration(1, 2000))},
        },
        "engine": {"kind": kind},
        "resources": {"gpusPerReplica": gpus, "tensorParallel": tp},
        "scaling": {
            "minReplicas": min_replicas,
            "maxReplicas": draw(st.integers(min_replicas, 200)),
        },
        "batching": {"maxNumSeqs": seqs, "maxBatchedTokens": tokens},
    }
    if draw(st.booleans()):
        spec["slo"]["e2e"] = {"target": f"{ttft_ms + draw(st.integers(1, 600_000))}ms"}
    if draw(st.booleans()):
        spec["slo"]["window"] = draw(_duration(60_000, 3_600_000))
    if draw(st.booleans()):
        spec["resources"]["gpuType"] = draw(st.sampled_from(sorted(GPU_PRODUCTS)))
    if draw(st.booleans()):
        spec["model"]["maxModelLen"] = draw(st.integers(128, 131072))
        spec["model"]["quantization"] = draw(st.sampled_from(["none", "fp8", "awq"]))
        spec["model"]["servedModelName"] = draw(free_text)
    if draw(st.booleans()):
        spec["model"]["source"] = draw(
            st.sampled_from(["hf://org/model", "pvc://weights/llama/8b", ""])
        )
        spec["model"]["hubTokenSecret"] = {"name": draw(names)}
    if draw(st.booleans()):
        positional = draw(st.lists(free_text.filter(lambda a: not a.startswith("-")), max_size=3))
        spec["engine"]["extraArgs"] = [*positional, "--enable-prefix-caching"]
        spec["engine"]["env"] = [
            {"name": "LOG_LEVEL", "value": draw(free_text)},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": draw(names), "key": "k"}}},
        ]
    if draw(st.booleans()):
        spec["resources"]["tolerations"] = [
            {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
        ]
        spec["resources"]["nodeSelector"] = {"pool": draw(names)}
        spec["resources"]["cpu"] = "8"
        spec["resources"]["memory"] = "64Gi"
    if draw(st.booleans()):
        spec["scaling"]["mode"] = draw(st.sampled_from(["auto", "external"]))
        spec["scaling"]["gpuBudget"] = min_replicas * gpus + draw(st.integers(0, 64))
    if draw(st.booleans()):
        spec["tuning"] = {
            "mode": draw(st.sampled_from(["auto", "advise", "off"])),
            "interval": draw(_duration(10_000, 600_000)),
        }
    if draw(st.booleans()):
        spec["metrics"] = {"prometheusUrl": "http://prometheus.monitoring:9090"}
    return spec


@st.composite
def llmservices(draw: st.DrawFn) -> Obj:
    return {
        "apiVersion": "slotune.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {
            "name": draw(names),
            "namespace": draw(names),
            "uid": "0b6f2a8e-8c57-4d2e-9a41-5f0f3c1e2d7a",
        },
        "spec": draw(specs()),
    }


def _set(obj: Obj, path: str, value: Any) -> Obj:
    broken = copy.deepcopy(obj)
    *parents, leaf = path.split(".")
    node = broken
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return broken


def _mutations(obj: Obj) -> list[tuple[Obj, str]]:
    """Ways to break a valid object, each with the field path the error must start with."""
    spec = obj["spec"]
    seqs = spec["batching"]["maxNumSeqs"]
    gpus = spec["resources"]["gpusPerReplica"]
    return [
        (_set(obj, "spec.slo.ttft.target", "5 minutes"), "spec.slo.ttft.target"),
        (_set(obj, "spec.slo.ttft.percentile", 30), "spec.slo.ttft.percentile"),
        (_set(obj, "spec.slo.itl.percentile", 99.95), "spec.slo.itl.percentile"),
        (_set(obj, "spec.slo.window", "10s"), "spec.slo"),
        (_set(obj, "spec.slo.e2e", {"target": "0s"}), "spec.slo.e2e"),
        (_set(obj, "spec.scaling.minReplicas", spec["scaling"]["maxReplicas"] + 1), "spec.scaling"),
        (_set(obj, "spec.scaling.maxReplicas", 0), "spec.scaling.maxReplicas"),
        (
            _set(obj, "spec.batching.maxNumSeqs.min", seqs["initial"] + 1),
            "spec.batching.maxNumSeqs",
        ),
        (
            _set(obj, "spec.batching.maxNumSeqs.max", seqs["initial"] - 1),
            "spec.batching.maxNumSeqs",
        ),
        (
            _set(
                obj,
                "spec.batching",
                {
                    "maxNumSeqs": {"initial": 512, "min": 8, "max": 512},
                    "maxBatchedTokens": {"initial": 256, "min": 256, "max": 256},
                },
            ),
            "spec.batching",
        ),
        (_set(obj, "spec.resources.tensorParallel", 3), "spec.resources"),
        (_set(obj, "spec.resources.gpusPerReplica", 0), "spec.resources.gpusPerReplica"),
        (_set(obj, "spec.resources.gpuType", "nvidia-k80"), "spec.resources.gpuType"),
        (_set(obj, "spec.engine.kind", "tgi"), "spec.engine.kind"),
        (_set(obj, "spec.engine.extraArgs", ["--max-num-seqs=4", "--port", "1"]), "spec.engine"),
        (_set(obj, "spec.engine.extraArgs", ["--max-running-requests=4"]), "spec.engine"),
        (_set(obj, "spec.engine.env", [{"name": "A"}]), "spec.engine.env[0]"),
        (_set(obj, "spec.model.name", ""), "spec.model.name"),
        (_set(obj, "spec.model.source", "ftp://x"), "spec.model.source"),
        (_set(obj, "spec.model.maxModelLen", "long"), "spec.model.maxModelLen"),
        (_set(obj, "spec.tuning.interval", "1s"), "spec.tuning"),
        (_set(obj, "spec.tuning.mode", "yolo"), "spec.tuning.mode"),
        (_set(obj, "spec.metrics.prometheusUrl", "prometheus:9090"), "spec.metrics.prometheusUrl"),
        (_set(obj, "spec.slo.ttftTarget", "1s"), "spec.slo.ttftTarget"),
        (_set(obj, "spec.scaling.gpuBudget", gpus * spec["scaling"]["minReplicas"] - 1), "spec"),
        (_set(obj, "metadata.name", "Bad_Name"), "metadata.name"),
    ]


@st.composite
def broken_llmservices(draw: st.DrawFn) -> tuple[Obj, str]:
    """An invalid LLMService and the path prefix its first error must name."""
    obj = draw(llmservices())
    candidates = _mutations(obj)
    broken, path = draw(st.sampled_from(candidates))
    # Cross-field mutations must really break the rule for this draw.
    if path == "spec.engine" and broken["spec"]["engine"]["kind"] == "vllm":
        broken["spec"]["engine"]["extraArgs"] = ["--max-num-seqs=4"]
    if path == "spec.engine" and broken["spec"]["engine"]["kind"] == "sglang":
        broken["spec"]["engine"]["extraArgs"] = ["--max-running-requests=4"]
    return broken, path
