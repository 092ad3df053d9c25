"""PrometheusRules into the sandbox's Prometheus, as the Prometheus operator would load them.

The sandbox's cluster runs no Prometheus operator. The sandbox installs a minimal
PrometheusRule CRD of its own (`PROMETHEUS_RULE_CRD`, only where the cluster has none), so
slotune applies each LLMService's SLO rules for real; this module, run as its own process
(``python -m slotune.sandbox.rules``), lists and watches the PrometheusRules of every namespace,
writes each one's ``spec.groups`` to ``<namespace>.<name>.yaml`` in the directory Prometheus'
``rule_files`` reads, and reloads Prometheus (``POST /-/reload``) after a change.

Like the operator's admission webhook, it keeps a rule file Prometheus would refuse out: each
new content is checked with ``promtool check rules`` first (when promtool is installed), and a
rejected one is logged and not written, so one bad object never stops the others from loading.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("slotune.sandbox.rules")

GROUP, VERSION, PLURAL, KIND = "monitoring.coreos.com", "v1", "prometheusrules", "PrometheusRule"
RULE_FILE_GLOB = "*.yaml"

_STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
_RULE: dict[str, Any] = {
    "type": "object",
    "required": ["expr"],
    # Fields slotune does not write (keep_firing_for, ...) are kept, not pruned.
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "record": {"type": "string"},
        "alert": {"type": "string"},
        "expr": {"x-kubernetes-int-or-string": True},
        "for": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
# The fields the real CRD types the same way (name, rules, labels and annotations as strings),
# so a manifest a real cluster would refuse for its types is refused here too.
PROMETHEUS_RULE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {
        "name": f"{PLURAL}.{GROUP}",
        "annotations": {"slotune.dev/note": "minimal stand-in installed by the slotune sandbox"},
    },
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "kind": KIND,
            "listKind": f"{KIND}List",
            "plural": PLURAL,
            "singular": "prometheusrule",
            "shortNames": ["promrule"],
            "categories": ["prometheus-operator"],
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "spec": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                                "properties": {
                                    "groups": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["name"],
                                            "x-kubernetes-preserve-unknown-fields": True,
                                            "properties": {
                                                "name": {"type": "string", "minLength": 1},
                                                "interval": {"type": "string"},
                                                "rules": {"type": "array", "items": _RULE},
                                            },
                                        },
                                    }
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


def rule_file_name(namespace: str, name: str) -> str:
    # A namespace is a DNS label (no dots), so the first dot ends it: names never collide.
    return f"{namespace}.{name}.yaml"


def rule_files(objects: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The rule file each PrometheusRule becomes: its file name and YAML text."""
    out: dict[str, str] = {}
    for obj in objects:
        meta = obj.get("metadata") or {}
        groups = (obj.get("spec") or {}).get("groups") or []
        text = yaml.safe_dump({"groups": groups}, sort_keys=False, allow_unicode=True)
        header = f"# PrometheusRule {meta.get('namespace')}/{meta.get('name')}\n"
        out[rule_file_name(str(meta.get("namespace")), str(meta.get("name")))] = header + text
    return out


Checker = Callable[[Path], str | None]


def promtool_checker() -> Checker | None:
    """`promtool check rules FILE`, returning what it said on failure; None without promtool."""
    exe = shutil.which("promtool")
    if exe is None:
        return None

    def check(path: Path) -> str | None:
        result = subprocess.run(
            [exe, "check", "rules", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return None if result.returncode == 0 else (result.stdout + result.stderr).strip()

    return check


@dataclass
class RuleFiles:
    """The rule directory, made to hold exactly the wanted files (written atomically)."""

    directory: Path
    check: Checker | None = None
    # Contents (by digest) the checker refused, not checked again until they change.
    rejected: dict[str, str] = field(default_factory=dict)

    def sync(self, wanted: Mapping[str, str]) -> bool:
        """Write what differs, remove what is no longer wanted; True if Prometheus must reload."""
        self.directory.mkdir(parents=True, exist_ok=True)
        changed = False
        for name, text in sorted(wanted.items()):
            path = self.directory / name
            if path.exists() and path.read_text() == text:
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            if self.rejected.get(name) == digest:
                continue
            # Hidden and not *.yaml: Prometheus' glob never loads a half-written or refused file.
            tmp = self.directory / f".{name}.tmp"
            tmp.write_text(text)
            problem = self.check(tmp) if self.check is not None else None
            if problem is not None:
                tmp.unlink()
                self.rejected[name] = digest
                log.error("%s: refused by promtool, not loaded: %s", name, problem)
                continue
            os.replace(tmp, path)
            self.rejected.pop(name, None)
            log.info("%s: written", name)
            changed = True
        for path in sorted(self.directory.glob(RULE_FILE_GLOB)):
            if path.name not in wanted:
                path.unlink()
                log.info("%s: removed", path.name)
                changed = True
        for name in set(self.rejected) - set(wanted):
            del self.rejected[name]
        return changed


def reload_prometheus(url: str, timeout: float = 10.0) -> None:
    """`POST /-/reload` (Prometheus runs with --web.enable-lifecycle); raises on failure."""
    request = urllib.request.Request(f"{url.rstrip('/')}/-/reload", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


class RuleSync:
    """List, then watch, every PrometheusRule; after each change write the files and reload.

    A watch that ends (every 30 s, or on an error) is followed by a fresh list, which also
    retries a reload that failed (Prometheus restarting reads the files by itself anyway).
    """

    def __init__(
        self,
        kubeconfig: Path,
        files: RuleFiles,
        prometheus_url: str,
        reload: Callable[[str], None] = reload_prometheus,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.files = files
        self.prometheus_url = prometheus_url
        self.reload = reload
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.reload_pending = False
        self.stop = threading.Event()

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) into the known objects."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if kind == "DELETED":
            self.objects.pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            self.objects[key] = obj

    def sync(self) -> None:
        if self.files.sync(rule_files(self.objects.values())):
            self.reload_pending = True
        if self.reload_pending:
            try:
                self.reload(self.prometheus_url)
            except OSError as error:
                log.warning("reloading Prometheus at %s: %s", self.prometheus_url, error)
                return
            self.reload_pending = False
            log.info("Prometheus reloaded: %d rule file(s)", len(self.objects))

    def run(self) -> None:
        from kubernetes import client, config, watch

        api = config.new_client_from_config(config_file=str(self.kubeconfig))
        custom = client.CustomObjectsApi(api)
        try:
            while not self.stop.is_set():
                try:
                    listed: Any = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                    self.objects = {}
                    for item in listed.get("items") or []:
                        self.apply("ADDED", item)
                    self.sync()
                    stream = watch.Watch().stream(
                        custom.list_cluster_custom_object,
                        GROUP,
                        VERSION,
                        PLURAL,
                        resource_version=(listed.get("metadata") or {}).get("resourceVersion"),
                        timeout_seconds=30,
                    )
                    for event in stream:
                        if self.stop.is_set():
                            return
                        if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                            break
                        self.apply(str(event["type"]), event["object"])
                        self.sync()
                except Exception as error:  # the apiserver went away, no CRD yet: list again
                    if self.stop.is_set():
                        return
                    log.warning("PrometheusRule watch: %s; listing again", error)
                    time.sleep(2.0)
        finally:
            api.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m slotune.sandbox.rules")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--rules-dir", type=Path, required=True)
    parser.add_argument("--prometheus-url", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    checker = promtool_checker()
    if checker is None:
        log.warning("promtool not found: rule files are loaded unchecked")
    sync = RuleSync(args.kubeconfig, RuleFiles(args.rules_dir, checker), args.prometheus_url)
    log.info("syncing PrometheusRules into %s for %s", args.rules_dir, args.prometheus_url)
    try:
        sync.run()
    except KeyboardInterrupt:
        sync.stop.set()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
