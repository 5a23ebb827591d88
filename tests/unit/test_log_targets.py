"""logging.target: syslog (RFC 3164, facility mail) and journal (native protocol) on sockets of the test's
own, stderr with priorities under journald, and the real ``amzguard run`` logging to them."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from amzguard.log_output import JournalHandler, LineHandler, SyslogHandler, configure_logging, make_handler

RFC3164 = re.compile(r"<(?P<pri>\d+)>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d amzguard\[(?P<pid>\d+)\]: (?P<text>.*)", re.S)
# (level, syslog priority, what the text starts with): mail.debug=23, mail.info=22, mail.warning=20, mail.err=19
LEVELS = [(logging.DEBUG, 7, "debug: "), (logging.INFO, 6, ""), (logging.WARNING, 4, "warning: "),
          (logging.ERROR, 3, "error: "), (logging.CRITICAL, 2, "fatal: ")]  # fmt: skip


@pytest.fixture
def dgram(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        yield sock, path
    finally:
        sock.close()


def logger_with(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"amzguard.test-targets-{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.handlers = [handler]
    return logger


def journal_fields(data: bytes) -> list[tuple[str, str]]:
    """Parse the native protocol, both the ``NAME=value`` and the binary (length-prefixed) form."""
    fields = []
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            data = rest
        else:
            name = line
            (size,) = struct.unpack("<Q", rest[:8])
            value, data = rest[8 : 8 + size], rest[8 + size + 1 :]
            assert rest[8 + size : 8 + size + 1] == b"\n"
        fields.append((name.decode(), value.decode()))
    return fields


@pytest.mark.parametrize(("level", "severity", "word"), LEVELS)
def test_syslog_lines_have_facility_mail_and_the_levels_severity(dgram, level: int, severity: int, word: str) -> None:
    sock, path = dgram
    logger_with(SyslogHandler(str(path))).log(level, "4XhK2m1bQz: rcpt=<%s> decision=refuse", "q***@amazon.fr")
    match = RFC3164.fullmatch(sock.recv(65536).decode())
    assert match is not None
    assert int(match["pri"]) == 2 * 8 + severity and int(match["pid"]) == os.getpid()
    assert match["text"] == f"{word}4XhK2m1bQz: rcpt=<q***@amazon.fr> decision=refuse"


@pytest.mark.parametrize(("level", "severity", "word"), LEVELS)
def test_journal_fields_priority_and_one_identifier(dgram, level: int, severity: int, word: str) -> None:
    sock, path = dgram
    logger_with(JournalHandler(str(path))).log(level, "reload: %s changed", "metrics")
    fields = journal_fields(sock.recv(65536))
    names = [name for name, _ in fields]
    assert len(names) == len(set(names))
    values = dict(fields)
    assert values["MESSAGE"] == f"{word}reload: metrics changed"  # no "amzguard[PID]:": journald adds it
    assert values["PRIORITY"] == str(severity)
    assert values["SYSLOG_IDENTIFIER"] == "amzguard" and values["SYSLOG_FACILITY"] == "2"
    assert values["SYSLOG_PID"] == str(os.getpid())


def test_journal_multi_line_message_uses_the_binary_form(dgram) -> None:
    sock, path = dgram
    logger = logger_with(JournalHandler(str(path)))
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("eom failed")
    data = sock.recv(65536)
    assert b"MESSAGE\n" in data
    message = dict(journal_fields(data))["MESSAGE"]
    assert message.startswith("error: eom failed\nTraceback") and message.endswith("ValueError: boom")


def test_a_missing_socket_falls_back_to_stderr_and_recovers(tmp_path: Path, dgram) -> None:
    read_fd, write_fd = os.pipe()
    sock, path = dgram
    try:
        handler = SyslogHandler(str(tmp_path / "no-such.sock"), fallback_fd=write_fd)
        logger = logger_with(handler)
        logger.warning("syslog is away")
        assert os.read(read_fd, 4096).decode() == f"amzguard[{os.getpid()}]: warning: syslog is away\n"
        handler.path = str(path)  # the daemon is back (same handler, next record)
        logger.info("and back")
        assert RFC3164.fullmatch(sock.recv(65536).decode())["text"] == "and back"  # type: ignore[index]
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_stderr_under_journald_gets_priority_prefixes_and_no_tag() -> None:
    read_fd, write_fd = os.pipe()
    try:
        info = os.fstat(write_fd)
        handler = make_handler("stderr", fd=write_fd, environ={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        logger = logger_with(handler)
        logger.info("listening on unix:/run/amzguard/amzguard.sock")
        logger.error("metrics endpoint off")
        assert os.read(read_fd, 4096).decode() == (
            "<6>listening on unix:/run/amzguard/amzguard.sock\n<3>error: metrics endpoint off\n"
        )
        # Another stream (a terminal, a file, a pipe journald did not open): the usual tagged lines.
        plain = make_handler("stderr", fd=write_fd, environ={"JOURNAL_STREAM": "1:2"})
        logger_with(plain).warning("x")
        assert os.read(read_fd, 4096).decode() == f"amzguard[{os.getpid()}]: warning: x\n"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_configure_replaces_only_its_own_handler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    configure_logging("warning", pid=False)
    [first] = root.handlers
    assert isinstance(first, LineHandler)
    configure_logging("info", replace=True, target="syslog", syslog_socket=str(tmp_path / "s"))
    assert [type(h) for h in root.handlers] == [SyslogHandler] and root.level == logging.INFO


def _wait_for(sock: socket.socket, wanted: str, timeout: float = 30.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    seen: list[bytes] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            seen.append(sock.recv(65536))
        except TimeoutError:
            break
        if wanted.encode() in seen[-1]:
            return seen
    raise AssertionError(f"no {wanted!r} in {seen}")


@pytest.mark.parametrize("target", ["syslog", "journal"])
def test_amzguard_run_logs_to_the_target(tmp_path: Path, dgram, target: str) -> None:
    sock, path = dgram
    config = tmp_path / "amzguard.yml"
    config.write_text(yaml.safe_dump({
        "milter": {"socket": f"unix:{tmp_path}/m.sock"}, "metrics": {"enabled": False},
        "store": {"path": str(tmp_path / "s.sqlite")},
        "logging": {"target": target, f"{target}_socket": str(path)},
    }))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "amzguard", "run", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        started = _wait_for(sock, "listening on unix:")
        # A reload with the socket changed logs a warning.
        config.write_text(config.read_text().replace("m.sock", "other.sock"))
        proc.send_signal(signal.SIGUSR1)
        warned = _wait_for(sock, "reload: milter.socket changed")
        proc.send_signal(signal.SIGTERM)
        stopped = _wait_for(sock, "stopped")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, stderr = proc.communicate()
    assert stderr == b""  # every line went to the socket
    if target == "syslog":
        assert RFC3164.fullmatch(started[-1].decode())["pri"] == "22"  # type: ignore[index]
        match = RFC3164.fullmatch(warned[-1].decode())
        assert match is not None and match["pri"] == "20"
        assert match["text"] == "warning: reload: milter.socket changed; that takes effect only after a restart"
        assert int(match["pid"]) == proc.pid
    else:
        values = dict(journal_fields(warned[-1]))
        assert values["PRIORITY"] == "4" and values["SYSLOG_IDENTIFIER"] == "amzguard"
        assert values["MESSAGE"].startswith("warning: reload: milter.socket changed")
        assert dict(journal_fields(stopped[-1]))["MESSAGE"] == "stopped"


def test_a_daemon_that_stops_reading_never_blocks_the_writer(dgram) -> None:
    # The receiver's queue fills (net.unix.max_dgram_qlen); then lines go to stderr instead of waiting.
    sock, path = dgram
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        logger = logger_with(SyslogHandler(str(path), fallback_fd=write_fd))
        fallback = b""
        for n in range(5000):
            logger.info("line %d %s", n, "x" * 200)
            try:
                fallback += os.read(read_fd, 65536)
            except BlockingIOError:
                pass
            if fallback:
                break
        assert fallback.startswith(f"amzguard[{os.getpid()}]: line ".encode())
        assert RFC3164.fullmatch(sock.recv(65536).decode())["text"].startswith("line 0 ")  # type: ignore[index]
    finally:
        os.close(read_fd)
        os.close(write_fd)
