"""The pure parts of the control-plane build and of kwok's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slotune.sandbox import build, kwok

K8S_GO_MOD = """\
module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tgo.etcd.io/etcd/server/v3 v3.6.4 // indirect
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
\tk8s.io/kube-openapi v0.0.0-20250710124328-f3f2b991d03b
\tk8s.io/utils v0.0.0-20250604170112-4c0f3b243397
)

require k8s.io/cri-api v0.0.0 // indirect

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def test_only_staging_modules_are_replaced() -> None:
    # Pseudo-versions (v0.0.0-<date>-<sha>) are real published modules, not staging ones.
    assert build.staging_replacements(K8S_GO_MOD, "v1.34.4") == {
        "k8s.io/api": "v0.34.4",
        "k8s.io/client-go": "v0.34.4",
        "k8s.io/cri-api": "v0.34.4",
    }


def test_wrapper_go_mod_requires_and_replaces() -> None:
    text = build._wrapper_go_mod(
        "kubernetes",
        build._go_directive(K8S_GO_MOD),
        {"k8s.io/kubernetes": "v1.34.4"},
        build.staging_replacements(K8S_GO_MOD, "v1.34.4"),
    )
    assert "go 1.24.0\ngodebug default=go1.24\n" in text
    assert "\tk8s.io/kubernetes v1.34.4\n" in text
    assert "\tk8s.io/api => k8s.io/api v0.34.4\n" in text
    assert "./staging" not in text


def test_etcd_version_comes_from_kubernetes_go_mod() -> None:
    assert build.required_version(K8S_GO_MOD, "go.etcd.io/etcd/server/v3") == "v3.6.4"


def test_kubernetes_version_is_stamped_for_both_version_packages() -> None:
    flags = build._k8s_ldflags("v1.34.4")
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion=v1.34.4" in flags
        assert f"-X {pkg}.gitMajor=1" in flags
        assert f"-X {pkg}.gitMinor=34" in flags


def test_helm_assumes_the_kubernetes_of_its_client_go() -> None:
    flags = build._helm_ldflags("require (\n\tk8s.io/client-go v0.37.0\n)\n", "v3.22.0")
    assert "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1" in flags
    assert "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37" in flags
    assert "-X helm.sh/helm/v3/internal/version.version=v3.22.0" in flags


def test_bin_dir_follows_slotune_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLOTUNE_CACHE", str(tmp_path))
    assert build.bin_dir("v1.34.4") == tmp_path / "bin" / "v1.34.4"
    assert build.missing_binaries(build.bin_dir()) == list(build.ALL_BINARIES)


def test_kwok_stages_delay_readiness_per_pod() -> None:
    docs = list(yaml.safe_load_all(kwok.stages_yaml(0.0, 2.5)))
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert {"node-initialize", "pod-start", "pod-ready", "pod-delete"} <= set(by_name)
    delay = by_name["pod-ready"]["spec"]["delay"]
    assert delay["durationMilliseconds"] == 2500
    assert kwok.READY_DELAY_ANNOTATION in delay["durationFrom"]["expressionFrom"]
    assert "delay" not in by_name["pod-start"]["spec"]


def test_gpu_node_advertises_gpus_and_is_managed_by_kwok() -> None:
    node = kwok.gpu_node("n-0", 8, internal_ip="10.15.0.1")
    assert node["metadata"]["annotations"][kwok.KWOK_NODE_ANNOTATION] == "fake"
    assert node["metadata"]["labels"][kwok.GPU_PRODUCT_LABEL] == kwok.DEFAULT_GPU_PRODUCT
    assert node["status"]["allocatable"][kwok.GPU_RESOURCE] == "8"
    assert node["status"]["capacity"][kwok.GPU_RESOURCE] == "8"
