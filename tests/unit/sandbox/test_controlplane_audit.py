"""Reading the apiserver's audit log while other components' events are being written."""

from __future__ import annotations

import json
from pathlib import Path

from slotune.sandbox.controlplane import ControlPlane


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path / "bin", tmp_path / "work")
    cp.audit_log.parent.mkdir(parents=True)
    first = {"verb": "create", "requestReceivedTimestamp": "2026-12-04T21:00:00.000000Z"}
    second = {"verb": "update", "requestReceivedTimestamp": "2026-12-04T21:00:01.000000Z"}
    written = json.dumps(first) + "\n" + json.dumps(second) + "\n"
    cp.audit_log.write_text(written + '{"verb":"create","user":{"username":"system:serv')
    assert [e["verb"] for e in cp.audit_events()] == ["create", "update"]
    cp.audit_log.write_text(written)
    assert [e["verb"] for e in cp.audit_events()] == ["create", "update"]
