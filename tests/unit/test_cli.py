"""The command line as a user meets it: clear one-line errors, exit code 2, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slotune import __version__
from slotune.api.crd import crd_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "llama-3-8b-h100.yaml"


def slotune(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slotune.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = slotune("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_crd_prints_the_generated_crd() -> None:
    result = slotune("crd")
    assert result.returncode == 0
    assert result.stdout == crd_yaml()


def test_render_prints_all_children_with_knob_overrides() -> None:
    result = slotune("render", "-f", str(EXAMPLE), "--replicas", "3", "--max-num-seqs", "64")
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in docs] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PodMonitor",
    ]
    assert docs[0]["spec"]["replicas"] == 3
    assert "--max-num-seqs=64" in docs[0]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_render_reads_stdin() -> None:
    result = slotune("render", "-f", "-", stdin=EXAMPLE.read_text())
    assert result.returncode == 0 and "kind: Deployment" in result.stdout


def broken(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("spec: [unclosed", "not valid YAML (line 1"),
        ("", "no LLMService found"),
        (
            EXAMPLE.read_text().replace("maxReplicas: 8", "maxReplicas: 8\n    maxReplica: 9"),
            "spec.scaling.maxReplica: unknown field",
        ),
        (
            EXAMPLE.read_text().replace("percentile: 95}\n    itl", "percentile: 101}\n    itl"),
            "spec.slo.ttft.percentile: Input should be less than or equal to 99.9",
        ),
        (
            EXAMPLE.read_text().replace("maxReplicas: 8", "maxReplicas: 0"),
            "spec.scaling.maxReplicas",
        ),
        (
            EXAMPLE.read_text().replace("min: 8, max: 512", "min: 256, max: 512"),
            "spec.batching.maxNumSeqs: min must be less than or equal to initial",
        ),
        (
            EXAMPLE.read_text().replace(
                "gpusPerReplica: 1", "gpusPerReplica: 2\n    tensorParallel: 3"
            ),
            "spec.resources: tensorParallel must divide gpusPerReplica",
        ),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path: Path, text: str, says: str) -> None:
    result = slotune("render", "-f", str(broken(tmp_path, text)))
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_missing_file_and_out_of_bounds_knobs(tmp_path: Path) -> None:
    missing = slotune("render", "-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    too_many = slotune("render", "-f", str(EXAMPLE), "--replicas", "99")
    assert (
        too_many.returncode == 2
        and "--replicas=99 is outside the spec's bounds [1, 8]" in too_many.stderr
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--alert-speedup", "0.5"], {}), ([], {"SLOTUNE_ALERT_SPEEDUP": "fast"})],
)
def test_run_refuses_an_alert_speedup_below_one(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slotune.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )
    assert result.returncode == 2, result.stderr
    assert "SLOTUNE_ALERT_SPEEDUP=" in result.stderr and "Traceback" not in result.stderr
