"""`make demo`: slotune holding an SLO through a traffic surge, on a laptop.

Brings the sandbox up (a real control plane with fake GPU nodes, a real Prometheus, one
emulated vLLM server per pod), installs the CRD, starts the operator, applies
``examples/demo-llama-3-8b-h100.yaml`` and drives steady load, a 3x surge and steady load again
for about five minutes while a table shows what the operator sees and does. Then it writes a
report (markdown and a PNG plot) into ``out/demo/`` and tears everything down, by PID.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slotune.sandbox.loadgen import (
    Arrival,
    LoadGenerator,
    Phase,
    Result,
    Run,
    Scenario,
    percentile,
)
from slotune.sandbox.report import DemoReport, Sample, write_report

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "demo-llama-3-8b-h100.yaml"
GROUP, VERSION, PLURAL = "slotune.dev", "v1alpha1", "llmservices"


@dataclass(frozen=True)
class DemoPlan:
    steady_rps: float = 4.0
    surge_factor: float = 3.0
    before_s: float = 75.0
    surge_s: float = 120.0
    after_s: float = 105.0
    sample_every_s: float = 5.0
    seed: int = 42

    def scenario(self) -> Scenario:
        return Scenario(
            (
                Phase(self.before_s, self.steady_rps, "steady"),
                Phase(self.surge_s, self.steady_rps * self.surge_factor, "surge"),
                Phase(self.after_s, self.steady_rps, "after"),
            ),
            prompt_tokens=(256, 1024),
            output_tokens=(200, 600),
        )


def _say(message: str) -> None:
    print(f"slotune demo: {message}", flush=True)


def _ms(value: float | None) -> str:
    return "    -" if value is None else f"{value * 1000:5.0f}"


def _mark(value: float | None, target: float) -> str:
    if value is None:
        return " "
    return "ok" if value <= target else "!!"


class _Watcher:
    """Samples the LLMService status and the client's view every few seconds."""

    def __init__(self, api: Any, namespace: str, name: str) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.name = name

    def status(self) -> dict[str, Any]:
        obj: Any = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )
        status: dict[str, Any] = obj.get("status") or {}
        return status


def _client_window(
    arrivals: list[Arrival], results: list[Result], now_s: float, span_s: float
) -> tuple[float, float | None]:
    """(requests/s sent, p95 client TTFT of those finished) over the last ``span_s``."""
    sent = sum(1 for a in arrivals if now_s - span_s <= a.at_s < now_s)
    ttfts = [
        r.ttft_s for r in results if now_s - span_s <= r.sent_s < now_s and r.ttft_s is not None
    ]
    return sent / span_s, percentile(ttfts, 95)


async def _drive(
    url: str,
    model: str,
    plan: DemoPlan,
    watcher: _Watcher,
    ttft_target: float,
    itl_target: float,
    on_sample: Callable[[Sample], None],
) -> Run:
    scenario = plan.scenario()
    generator = LoadGenerator(url, model, max_in_flight=600, request_timeout_s=120)
    results: list[Result] = []
    arrivals = scenario.arrivals(plan.seed)
    load = asyncio.create_task(
        generator.run(
            arrivals,
            max_requests=20_000,
            max_duration_s=scenario.duration_s + 60,
            on_result=results.append,
        )
    )
    origin = time.monotonic()
    header = (
        f"{'time':>5} {'phase':<7} {'req/s':>5}  {'p95 TTFT ms':>11}  {'p95 ITL ms':>10}  "
        f"{'replicas':>8} {'max-num-seqs':>12}  last decision"
    )
    print(
        f"\n{header}\n{'':>5} {'':<7} {'':>5}  {'(<= ' + _ms(ttft_target).strip() + ')':>11}"
        f"  {'(<= ' + _ms(itl_target).strip() + ')':>10}"
    )
    next_at = origin + plan.sample_every_s
    while not load.done():
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        next_at += plan.sample_every_s
        now_s = time.monotonic() - origin
        if now_s > scenario.duration_s + 5:
            break
        rate, client_ttft = _client_window(arrivals, results, now_s, 10.0)
        try:
            status = await asyncio.to_thread(watcher.status)
        except Exception:  # the apiserver hiccuped: skip one row
            continue
        observed = status.get("observed") or {}
        tuned = status.get("tuned") or {}
        decision = status.get("lastDecision") or {}
        sample = Sample(
            t=now_s,
            phase=scenario.phase_at(now_s).label,
            offered_rps=rate,
            client_ttft_p95=client_ttft,
            ttft_p95=observed.get("ttft"),
            itl_p95=observed.get("itl"),
            observed_rps=observed.get("requestRate"),
            replicas=int(tuned.get("replicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            max_num_seqs=int(tuned.get("maxNumSeqs") or 0),
            decision=f"{decision.get('action', '-')} ({decision.get('reason', '-')})",
            decision_time=decision.get("time"),
        )
        on_sample(sample)
        minutes, seconds = divmod(int(now_s), 60)
        rps = rate
        print(
            f"{minutes:2d}:{seconds:02d} {sample.phase:<7} {rps:5.1f}  "
            f"{_ms(sample.ttft_p95):>8} {_mark(sample.ttft_p95, ttft_target):>2}  "
            f"{_ms(sample.itl_p95):>7} {_mark(sample.itl_p95, itl_target):>2}  "
            f"{sample.ready:>3}/{sample.replicas:<4} {sample.max_num_seqs:>12}  {sample.decision}",
            flush=True,
        )
    return await load


def _events(api: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    from kubernetes import client

    listed = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=LLMService"
    )
    out = []
    for event in listed.items:
        when = event.last_timestamp or event.event_time or event.first_timestamp
        out.append(
            {
                "time": when.timestamp() if when else 0.0,
                "type": event.type,
                "reason": event.reason,
                "message": event.message,
            }
        )
    return sorted(out, key=lambda e: e["time"])


def run_demo(
    out_dir: Path = ROOT / "out" / "demo",
    work_dir: Path | None = None,
    plan: DemoPlan | None = None,
) -> int:
    from kubernetes import client

    from slotune.api.durations import parse_duration
    from slotune.api.resource import parse_llmservice
    from slotune.sandbox.build import cache_root
    from slotune.sandbox.sandbox import Sandbox, SandboxConfig

    plan = plan or DemoPlan()
    # Not `slotune sandbox`'s work dir: a sandbox left up by hand keeps running beside the demo.
    work_dir = work_dir or cache_root() / "demo"
    manifest = yaml.safe_load(EXAMPLE.read_text())
    service = parse_llmservice(manifest)
    namespace, name = service.metadata.namespace, service.metadata.name
    slo = service.spec.slo
    ttft_target, itl_target = slo.ttft.seconds, slo.itl.seconds
    model = service.spec.model.served_model_name or service.spec.model.name

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the sandbox is stopped by PID.
    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    samples: list[Sample] = []
    _say("bringing the sandbox up (the first run builds the control plane: many minutes)")
    with Sandbox(
        work_dir, SandboxConfig(ready_delay_s=10.0, scrape_interval_s=5.0), progress=_say
    ) as sandbox:
        sandbox.install_crd()
        sandbox.start_operator(resync_seconds=5.0)
        _say(f"operator started (log: {sandbox.work_dir / 'logs' / 'operator.log'})")
        api = sandbox.control_plane.api_client() if sandbox.control_plane else None
        assert api is not None
        try:
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, manifest
            )
            _say(
                f"applied {EXAMPLE.relative_to(ROOT)}: SLO p95 TTFT <= {slo.ttft.target}, "
                f"p95 ITL <= {slo.itl.target}; tuning every {service.spec.tuning.interval}"
            )
            _say(f"watch alongside: KUBECONFIG={sandbox.kubeconfig} {sandbox.kubectl} get llms -w")
            url = sandbox.balancer_url(namespace, name, timeout=180)
            _say(
                f"first replica Ready; its load balancer is {url}. Driving "
                f"{plan.steady_rps:g} req/s for {plan.before_s:.0f}s, "
                f"{plan.steady_rps * plan.surge_factor:g} req/s for {plan.surge_s:.0f}s, "
                f"{plan.steady_rps:g} req/s for {plan.after_s:.0f}s"
            )
            load_started = time.time()
            watcher = _Watcher(api, namespace, name)
            run = asyncio.run(
                _drive(url, model, plan, watcher, ttft_target, itl_target, samples.append)
            )
            events = _events(api, namespace, name)
        finally:
            api.close()
        report = DemoReport(
            plan_phases=[(p.label, p.duration_s, p.rate_per_s) for p in plan.scenario().phases],
            ttft_target_s=ttft_target,
            itl_target_s=itl_target,
            samples=samples,
            run=run,
            events=[{**e, "t": e["time"] - load_started} for e in events],
            ready_delay_s=sandbox.config.ready_delay_s,
            scrape_interval_s=sandbox.config.scrape_interval_s,
            tuning_interval_s=parse_duration(service.spec.tuning.interval),
        )
        paths = write_report(report, out_dir)
        _say("tearing the sandbox down")
    print()
    print(report.summary())
    _say(f"report: {paths[0]}, plot: {paths[1]} ({time.monotonic() - started:.0f}s in all)")
    return 0
