"""A real Prometheus (Debian's package) as a plain process on loopback, scraping the emulators.

Targets come from file-based service discovery: the pod bridge writes the file, with the
``namespace``, ``pod`` and ``llmservice`` labels a PodMonitor's relabelings would give. Rules
come from ``rules_dir/*.yaml``, which the rule sync (``slotune.sandbox.rules``) fills from the
cluster's PrometheusRules and reloads through ``POST /-/reload`` (``--web.enable-lifecycle``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from slotune.sandbox import processes
from slotune.sandbox.controlplane import LOOPBACK
from slotune.sandbox.rules import RULE_FILE_GLOB

JOB = "llm-servers"


class PrometheusError(RuntimeError):
    pass


def find_prometheus() -> str:
    exe = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if exe is None:
        raise PrometheusError(
            "prometheus is not installed: `make tools` installs Debian's package "
            "(apt-get install prometheus)"
        )
    return exe


def config(
    targets_file: Path, scrape_interval_s: float, rules_dir: Path | None = None
) -> dict[str, Any]:
    interval = f"{scrape_interval_s:g}s"
    rule_files = {"rule_files": [str(rules_dir / RULE_FILE_GLOB)]} if rules_dir else {}
    return {
        # Rules are evaluated as often as targets are scraped.
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        **rule_files,
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": interval,
                "scrape_timeout": f"{min(scrape_interval_s, 5.0):g}s",
                "metrics_path": "/metrics",
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}],
            }
        ],
    }


class Prometheus:
    """Start, stop and start again (same port, same data: the e2e outage test does this)."""

    def __init__(
        self,
        work_dir: Path,
        targets_file: Path,
        *,
        scrape_interval_s: float = 5.0,
        rules_dir: Path | None = None,
    ):
        self.work_dir = work_dir
        self.targets_file = targets_file
        self.scrape_interval_s = scrape_interval_s
        self.rules_dir = rules_dir
        self.port = processes.free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.config_path = work_dir / "prometheus.yml"
        self.proc: processes.ManagedProcess | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            self.targets_file.write_text("[]")
        if self.rules_dir is not None:
            self.rules_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            yaml.safe_dump(
                config(self.targets_file, self.scrape_interval_s, self.rules_dir), sort_keys=False
            )
        )
        self.proc = processes.start(
            "prometheus",
            [
                find_prometheus(),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.work_dir / 'data'}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--web.enable-lifecycle",  # POST /-/reload after the rule files change
                "--log.level=warn",
            ],
            self.work_dir / "prometheus.log",
        )
        processes.wait_http_ok(f"{self.url}/-/ready", self.proc, timeout)

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop_all([self.proc])
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running()
