"""Child processes of the sandbox: started in their own session, logged to a file, stopped by PID.

The control plane's process wrapper is reused, so every child here also dies with the thread
that started it (PR_SET_PDEATHSIG) if Python goes away without stopping it.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from slotune.sandbox.controlplane import LOOPBACK, _Process

ManagedProcess = _Process


def free_port() -> int:
    """A port the kernel considers free on loopback (the race until it is bound is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def slotune_command(*args: str) -> list[str]:
    """`slotune ARGS` with this interpreter, so a venv need not be on PATH."""
    return [sys.executable, "-m", "slotune.cli", *args]


def python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def start(
    name: str, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> ManagedProcess:
    proc = ManagedProcess(name, list(args), log_path, env)
    proc.start()
    return proc


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_http_ok(url: str, proc: ManagedProcess, timeout: float) -> None:
    """Wait until ``url`` answers 200; fail at once if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.tail()}")
        if http_ok(url):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name}: {url} not ready within {timeout:.0f}s:\n{proc.tail()}")


def stop_all(processes: Sequence[ManagedProcess], grace: float = 10.0) -> None:
    """SIGTERM them all, then wait, then SIGKILL what is left: by PID, nothing else."""
    import signal

    for proc in processes:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in processes:
        if not proc.wait(deadline - time.monotonic()):
            with contextlib.suppress(Exception):
                proc.signal(signal.SIGKILL)
            proc.wait(5.0)
