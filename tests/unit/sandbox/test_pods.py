"""The pod bridge's pure part: reading pods and turning their vLLM flags into emulator flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from slotune.api.resource import parse_llmservice
from slotune.emulator.cli import add_arguments
from slotune.render.render import render_children
from slotune.sandbox.pods import (
    emulator_flags,
    go_duration_s,
    model_profile,
    pod_view,
    ready_delay_s,
    translate_args,
)

ROOT = Path(__file__).resolve().parents[3]


def _flags() -> tuple[set[str], set[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return emulator_flags(parser)


def _pod_from_example(name: str, **status: Any) -> dict[str, Any]:
    service = parse_llmservice(yaml.safe_load((ROOT / "examples" / name).read_text()))
    deployment = next(m for m in render_children(service) if m["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    return {
        "metadata": {
            "name": "chat-abc",
            "namespace": "default",
            "uid": "u1",
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
        "status": status,
    }


def test_rendered_vllm_args_become_emulator_args() -> None:
    pod = pod_view(_pod_from_example("llama-3-8b-h100.yaml"))
    assert pod is not None and pod.is_vllm
    kept, dropped = translate_args(pod.args, *_flags())
    assert kept[0] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert "--max-num-seqs=128" in kept and "--max-num-batched-tokens=8192" in kept
    assert "--enable-prefix-caching" in kept
    assert not any(a.startswith(("--host", "--port")) for a in kept)
    assert dropped == []
    # The emulator accepts every flag kept.
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    assert parser.parse_args(kept).max_num_seqs == 128


def test_unknown_flags_are_dropped_with_their_values() -> None:
    kept, dropped = translate_args(
        ["m", "--max-num-seqs", "8", "--lora-modules", "a=b", "--port", "8000", "--x=1"],
        *_flags(),
    )
    assert kept == ["m", "--max-num-seqs", "8"]
    assert dropped == ["--lora-modules", "a=b", "--x=1"]


def test_pod_view_follows_kwok_stages() -> None:
    pending = pod_view(_pod_from_example("demo-llama-3-8b-h100.yaml"))
    assert pending is not None and not pending.serving
    running = pod_view(
        _pod_from_example(
            "demo-llama-3-8b-h100.yaml",
            phase="Running",
            conditions=[{"type": "Ready", "status": "False"}],
            containerStatuses=[
                {"name": "server", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
            ],
        )
    )
    assert running is not None and running.serving and not running.ready
    assert running.started_at == 1767225600.0
    assert running.llmservice == "chat" and running.gpu_product == "NVIDIA-H100-80GB-HBM3"


def test_model_profiles_and_ready_delay() -> None:
    h100 = pod_view(_pod_from_example("llama-3-8b-h100.yaml"))
    fp8 = pod_view(_pod_from_example("llama-3-70b-fp8-h100x4.yaml"))
    assert h100 is not None and fp8 is not None
    assert model_profile(h100) == "llama-3-8b-h100"
    assert model_profile(fp8) == "llama-3-70b-h100x4-fp8"
    assert ready_delay_s(h100, 7.0) == 7.0
    assert go_duration_s("1m30s") == 90.0 and go_duration_s("500ms") == 0.5
    assert go_duration_s("soon") is None
