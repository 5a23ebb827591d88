"""The real milter process as a service: READY=1 to systemd, reload on SIGUSR1, drain on SIGTERM, metrics."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import pytest
import yaml
from miltertest import constants as c

from tests.support.fake_mta import BASE_HEADERS, FakeMta, connect_socket
from tests.support.milter_process import MilterProcess, write_config

BUYER = "<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"
OWNER = "<owner@shop.test>"


def start(tmp_path: Path, name: str, env: dict[str, str] | None = None, **sections: object) -> MilterProcess:
    socket_spec = f"unix:{tmp_path}/{name}.sock"
    config = write_config(tmp_path / f"{name}.yml", socket_spec, **sections)
    return MilterProcess(config, socket_spec, tmp_path / f"{name}.log", env=env).start()


def test_ready_is_sent_once_the_socket_accepts(tmp_path: Path) -> None:
    notify_path = tmp_path / "systemd-notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(notify_path))
        systemd.settimeout(20)
        proc = start(tmp_path, "notify", env={"NOTIFY_SOCKET": str(notify_path)})
        try:
            ready = systemd.recv(4096).decode()
            assert ready.startswith("READY=1\nSTATUS=listening on unix:")
            assert f"MAINPID={proc.pid}" in ready
            connect_socket(proc.socket, 5).close()  # ready means: connections are accepted
            proc.reload()
            assert systemd.recv(4096).decode().startswith("STATUS=reloaded; mode=enforce")
        finally:
            assert proc.stop() == 0
        assert systemd.recv(4096) == b"STOPPING=1"


def test_reload_applies_to_new_connections_only_and_survives_a_broken_file(tmp_path: Path) -> None:
    proc = start(tmp_path, "reload")
    try:
        with FakeMta(proc.socket) as before:
            before.connect()
            data = yaml.safe_load(proc.config.read_text())
            proc.config.write_text(yaml.safe_dump({**data, "mode": "monitor"}))
            proc.reload()
            proc.wait_log("configuration reloaded from")
            with FakeMta(proc.socket) as after:
                rcpts, eom = after.message("<shop@shop.test>", [BUYER], queue_id="4AFTERRELOAD")
            assert [r.command for r in eom] == [c.SMFIR_ACCEPT]  # monitor: nothing refused
            proc.wait_log("4AFTERRELOAD: from=<shop@shop.test> rcpt=<q7x2k9m4p1z8w3v5@marketplace.amazon.de> "
                          "path=smtp stage=eom channel=none decision=would-refuse reason=buyer-mail")  # fmt: skip
            # the connection opened before the reload still judges under the old (enforce) config
            before.mail("<shop@shop.test>")
            before.rcpt(BUYER)
            before.data()
            for name, value in BASE_HEADERS:
                before.header(name, value)
            before.eoh()
            eom = before.eom("4BEFORERELOAD")
            assert eom[0].command == c.SMFIR_REPLYCODE and eom[0].fields["smtpcode"] == "550"
        proc.config.write_text("mode: [broken\n")
        proc.reload()
        proc.wait_log("reload failed, keeping the running configuration")
        with FakeMta(proc.socket) as later:
            _, eom = later.message("<shop@shop.test>", [BUYER])
        assert [r.command for r in eom] == [c.SMFIR_ACCEPT]  # still monitor
        assert proc.metric("amzguard_config_reloads_total", result="success") == 1
        assert proc.metric("amzguard_config_reloads_total", result="failure") == 1
        assert proc.metric("amzguard_config_last_reload_successful") == 0
        assert proc.metric("amzguard_mode", mode="monitor") == 1
        # The file gone or unreadable while running (a directory in its place: unreadable even for root).
        proc.config.unlink()
        proc.config.mkdir()
        proc.reload()
        text = proc.wait_log("cannot read: Is a directory")
        assert text.count("reload failed, keeping the running configuration") == 2
        with FakeMta(proc.socket) as later:
            _, eom = later.message("<shop@shop.test>", [BUYER])
        assert [r.command for r in eom] == [c.SMFIR_ACCEPT]  # the running (monitor) config still serves
        assert proc.metric("amzguard_config_reloads_total", result="failure") == 2
    finally:
        assert proc.stop() == 0


def test_sigterm_lets_the_message_in_progress_finish(tmp_path: Path) -> None:
    proc = start(tmp_path, "drain")
    with FakeMta(proc.socket) as mta:
        mta.connect()
        mta.mail("<shop@shop.test>")
        assert mta.rcpt(OWNER).command == c.SMFIR_CONTINUE
        proc.proc.send_signal(signal.SIGTERM)
        proc.wait_log("stopping: waiting up to 25 s for 1 message(s) in progress")
        assert proc.alive()
        with FakeMta(proc.socket) as late:  # still served while draining; libmilter stops afterwards
            _, late_eom = late.message("<shop@shop.test>", [OWNER], queue_id="4LATE00001")
        assert [r.command for r in late_eom] == [c.SMFIR_ACCEPT]
        assert proc.alive()  # the first message is still in progress
        mta.data()
        for name, value in BASE_HEADERS:
            mta.header(name, value)
        mta.eoh()
        eom = mta.eom("4DRAINED01")
        assert [r.command for r in eom] == [c.SMFIR_ACCEPT]
    assert proc.proc.wait(20) == 0
    log = proc.log_text()
    assert "4DRAINED01: from=<shop@shop.test> rcpt=<owner@shop.test>" in log
    assert re.search(r"amzguard\[\d+\]: stopped$", log.rstrip())
    assert proc.stop() == 0
    with pytest.raises(OSError):
        connect_socket(proc.socket, 2).close()


def test_metrics_off(tmp_path: Path) -> None:
    proc = start(tmp_path, "nometrics", metrics={"enabled": False})
    try:
        proc.wait_log("metrics endpoint off (metrics.enabled: false)")
        assert "metrics on http://" not in proc.log_text()
    finally:
        assert proc.stop() == 0


def test_metrics_port_in_use_keeps_filtering_without_the_endpoint(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(tmp_path, "busy", metrics={"listen": f"127.0.0.1:{port}"})
        try:
            proc.wait_log(f"error: metrics endpoint off: cannot serve metrics on 127.0.0.1:{port}: Address already"
                          " in use; filtering mail without it")  # fmt: skip
            with FakeMta(proc.socket) as mta:
                _, eom = mta.message("<shop@shop.test>", ["<q7x2k9m4p1z8w3v5@marketplace.amazon.de>"])
            assert eom[-1].fields["smtpcode"] == "550"  # the milter still judges mail
        finally:
            assert proc.stop() == 0
