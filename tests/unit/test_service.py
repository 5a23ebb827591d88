"""Service plumbing in-process: sd_notify datagrams on a real socket, reload keeping or swapping config."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from amzguard.adapter import Runtime
from amzguard.config import load_config
from amzguard.metrics import ReloadResult
from amzguard.policy import Mode
from amzguard.service import notify, reload_config, restart_only_changes


def test_notify_sends_one_datagram(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(5)
        assert notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": str(path)}) is True
        assert listener.recv(4096) == b"READY=1\nSTATUS=ok"


def test_notify_abstract_namespace() -> None:
    name = f"amzguard-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(5)
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert listener.recv(64) == b"READY=1"


def test_notify_outside_systemd_and_on_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1"}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False
    assert "cannot notify systemd" in caplog.text


def test_reload_swaps_good_and_keeps_running_config_on_broken(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "amzguard.yml"
    path.write_text("mode: enforce\n")
    runtime = Runtime(load_config(path))
    first = runtime.snapshot
    path.write_text("mode: monitor\nmilter: {timeout: 30}\n")
    with caplog.at_level(logging.INFO, logger="amzguard"):
        assert reload_config(runtime, path) is True
    assert runtime.snapshot is not first and runtime.snapshot.policy.settings.mode is Mode.MONITOR
    assert "milter.timeout changed; that takes effect only after a restart" in caplog.text
    good = runtime.snapshot
    path.write_text("mode: [\n")
    assert reload_config(runtime, path) is False
    assert runtime.snapshot is good
    assert "reload failed, keeping the running configuration" in caplog.text and "invalid YAML" in caplog.text
    counted = runtime.metrics.reloads
    assert counted.labels(ReloadResult.SUCCESS.value)._value.get() == 1
    assert counted.labels(ReloadResult.FAILURE.value)._value.get() == 1


def test_restart_only_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.yml"
    path.write_text("metrics: {listen: '127.0.0.1:1'}\n")
    old = load_config(path)
    path.write_text("metrics: {listen: '127.0.0.1:2'}\nmilter: {socket_mode: '0600', on_error: accept}\n")
    assert restart_only_changes(old, load_config(path)) == ["milter.socket_mode", "metrics"]
