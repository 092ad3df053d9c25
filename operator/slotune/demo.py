"""`make demo` for now: validate the bundled examples and show what one of them turns into.

The live demo (local control plane, emulated GPUs, a traffic surge) replaces this once the
sandbox lands; until then this walks a new user through the API and the rendered objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from slotune.api.resource import SpecError, parse_llmservice
from slotune.render.render import render_children

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _describe(manifest: dict[str, Any]) -> str:
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    if kind != "Deployment":
        return f"  {kind:<20} {name}"
    pod = manifest["spec"]["template"]["spec"]
    server = pod["containers"][0]
    gpus = server["resources"]["limits"]["nvidia.com/gpu"]
    knobs = [a for a in server["args"] if a.startswith(("--max-num", "--max-running", "--chunked"))]
    return (
        f"  {kind:<20} {name}: {manifest['spec'].get('replicas', 'HPA-owned')} replica(s) x "
        f"{gpus} GPU, image {server['image']}\n"
        f"  {'':<20} batch knobs slotune tunes: {' '.join(knobs)}\n"
        f"  {'':<20} node selector {pod['nodeSelector'] or '(any GPU node)'}"
    )


def run_demo(examples: Path = EXAMPLES) -> int:
    files = sorted(examples.glob("*.yaml"))
    print(f"slotune demo: {len(files)} example LLMServices in {examples}\n")
    failures = 0
    for path in files:
        try:
            service = parse_llmservice(yaml.safe_load(path.read_text(encoding="utf-8")))
        except SpecError as error:
            print(f"{path.name}: INVALID: {error}")
            failures += 1
            continue
        slo = service.spec.slo
        print(
            f"{path.name}: {service.metadata.name} serves {service.spec.model.name} on "
            f"{service.spec.engine.kind}; SLO p{slo.ttft.percentile:g} TTFT <= {slo.ttft.target}, "
            f"p{slo.itl.percentile:g} ITL <= {slo.itl.target}"
        )
        for manifest in render_children(service):
            print(_describe(manifest))
        print()
    print(
        "Next: `slotune render -f examples/<file>.yaml` prints the full objects; "
        "`slotune crd | kubectl apply -f -` installs the API in a cluster."
    )
    return 1 if failures else 0
