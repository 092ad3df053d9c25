"""A page alert going pending and firing in a real Prometheus (Debian's), from scraped vLLM
histograms, with the rules `slo_alerts` renders for an LLMService.

Not the whole sandbox: the exposition comes from prometheus-client histograms with vLLM's names
and buckets (vLLM's own exporter library, so `le="1.0"` is spelled as vLLM spells it), and the
scrape config adds the `namespace` and `llmservice` labels the PodMonitor's relabelings add.
The burn-rate windows are shortened from hours to seconds (30s and 10s, `for: 3s`) so the page
shows within a minute; the thresholds, expressions and labels are the shipped ones.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from sandbox_fixtures import eventually, prometheus_alerts, prometheus_api, promql

from slotune.api.resource import parse_llmservice
from slotune.render.alerts import BurnRateAlert, alert_name, slo_alerts
from slotune.sim import vllm_metrics

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FAST_TIERS = (BurnRateAlert("critical", "30s", "10s", 14.4, "3s"),)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """vLLM's three latency histograms on /metrics; `slow` decides every request's TTFT."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        self.ttft = Histogram(
            vllm_metrics.TIME_TO_FIRST_TOKEN,
            "ttft",
            labels,
            buckets=vllm_metrics.TTFT_BUCKETS,
            registry=self.registry,
        )
        self.slow = False
        self.port = _free_port()
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.stop = threading.Event()

    def _traffic(self) -> None:
        child = self.ttft.labels(model_name="llama", engine="0")
        while not self.stop.wait(0.05):  # 20 requests a second
            child.observe(2.0 if self.slow else 0.1)

    def __enter__(self) -> Server:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        threading.Thread(target=self._traffic, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    exe = shutil.which("prometheus")
    assert exe, "prometheus is required (`make tools` installs Debian's package)"
    obj = yaml.safe_load((ROOT / "examples" / "llama-3-8b-h100.yaml").read_text())
    obj["spec"]["slo"]["ttft"] = {"target": "1s", "percentile": 95}  # le="1.0" in vLLM's spelling
    service = parse_llmservice(obj)
    groups = slo_alerts(service, burn_rates=FAST_TIERS).rule_groups
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    with Server() as server:
        port = _free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yaml")],
            "scrape_configs": [
                {
                    "job_name": "llm-servers",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{server.port}"],
                            # What the PodMonitor's relabelings put on every series.
                            "labels": {
                                "namespace": service.metadata.namespace,
                                "llmservice": service.metadata.name,
                                "pod": "llama-0",
                            },
                        }
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (tmp_path / "prometheus.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    exe,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            eventually(lambda: _ready(url), 60, "Prometheus to be ready", every=0.5)
            yield server, url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _ttft_alerts(url: str) -> list[dict[str, Any]]:
    return prometheus_alerts(url, alert_name("ttft"))


def test_the_page_goes_pending_then_firing_when_ttft_burns(prometheus: tuple[Server, str]) -> None:
    server, url = prometheus
    over = "slotune:ttft_over_target:ratio_rate10s"
    # Healthy traffic first: the ratio is recorded (the `le` matcher found vLLM's "1.0") and 0.
    value = eventually(
        lambda: promql(url, over), 60, "the over-target ratio to be recorded", every=0.5
    )
    assert float(value[0]["value"][1]) == 0.0
    assert _ttft_alerts(url) == []
    rules = prometheus_api(url, "rules")["groups"][0]["rules"]
    assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]

    server.slow = True  # every request now takes 2 s to its first token: a 20x burn
    pending = eventually(lambda: _ttft_alerts(url), 60, "the page to go pending", every=0.5)
    assert pending[0]["labels"]["severity"] == "critical"
    firing = eventually(
        lambda: [a for a in _ttft_alerts(url) if a["state"] == "firing"],
        30,
        "the page to fire",
        every=0.5,
    )
    assert firing[0]["labels"]["llmservice"] == "llama-3-8b-chat"
    assert "of requests waited longer than 1s" in firing[0]["annotations"]["description"]
