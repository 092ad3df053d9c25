"""`slotune sandbox` without a sandbox: clear answers, no tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from slotune.cli import main


def test_status_and_down_when_nothing_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sandbox", "--work-dir", str(tmp_path), "status"]) == 1
    assert "not running" in capsys.readouterr().out
    assert main(["sandbox", "--work-dir", str(tmp_path), "down"]) == 0


def test_load_needs_a_running_sandbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandbox", "--work-dir", str(tmp_path), "load", "chat"]) == 2
    assert "no sandbox runs" in capsys.readouterr().err


def test_emulate_refuses_a_non_loopback_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulate", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "loopback only" in capsys.readouterr().err
