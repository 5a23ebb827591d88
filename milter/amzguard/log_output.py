"""Where amzguard's log lines go (``logging.target``): standard error, syslog or the journal, one write each.

Lines read like Postfix's: ``amzguard[812]: 4XhK2m1bQz: from=<…> rcpt=<…> decision=refuse``, with
``warning:``, ``error:`` or ``fatal:`` before the text of those levels (and ``debug:`` for debug), so a
``grep warning:`` over mail.log finds amzguard's warnings beside Postfix's.

- ``stderr`` (default, ``make run``): one line per record on fd 2. When fd 2 is systemd-journald's stream
  (``$JOURNAL_STREAM`` names its device and inode), each line starts with its syslog priority (``<3>``,
  read by journald's default ``SyslogLevelPrefix=yes``) instead of the ``amzguard[PID]:`` tag, which
  journald adds itself: so errors have error priority in ``journalctl -p err`` and the tag is not doubled.
- ``syslog``: RFC 3164 datagrams to ``logging.syslog_socket`` (``/dev/log``) with facility mail and tag
  ``amzguard``, in the local form glibc's syslog(3) (and so Postfix) sends: ``<22>Dec  2 05:17:21
  amzguard[812]: text`` (no host name; the daemon adds it). rsyslog then files the lines in mail.log.
- ``journal``: systemd-journald's native protocol, one datagram of ``FIELD=value`` lines to
  ``logging.journal_socket`` with ``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER=amzguard``,
  ``SYSLOG_FACILITY=2`` (mail: journald forwards the line to syslog's mail.log too) and ``SYSLOG_PID``.
  The protocol is a few lines of code, so no dependency (python3-systemd) is needed.

If a socket cannot be reached (syslog restarted, no journald) or its queue is full (a daemon that stopped
reading), the line goes to standard error instead and the next record tries the socket again: a log outage
never stops or slows the mail.

Why not ``logging.StreamHandler`` or ``logging.handlers.SysLogHandler``: they take a lock per record and
pass it through layers of their own. amzguard writes one decision line per recipient from libmilter's
connection threads, which all compete for the GIL; measured with ``bench/`` (Postfix, 10 sessions),
StreamHandler cost about 0.06 ms of milter CPU per message, a tenth of all the milter's work. Here each
record is encoded once and written with a single ``os.write`` (or one ``send`` of a datagram, which the
kernel delivers whole). A write of up to ``PIPE_BUF`` bytes reaches a pipe, socket or ``O_APPEND`` file
whole, so such lines need no lock; longer records (tracebacks) take one so that they are not interleaved
with other threads' lines.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Mapping

TAG = "amzguard"
FACILITY_MAIL = 2
"""syslog facility ``mail`` (RFC 5424 numbering, as ``LOG_MAIL >> 3``)."""

# What a line of each level starts with (Postfix writes no word for info), and its syslog priority.
LEVEL_WORDS: dict[int, str] = {
    logging.DEBUG: "debug: ",
    logging.INFO: "",
    logging.WARNING: "warning: ",
    logging.ERROR: "error: ",
    logging.CRITICAL: "fatal: ",
}
PRIORITIES: dict[int, int] = {
    logging.DEBUG: 7,  # LOG_DEBUG
    logging.INFO: 6,  # LOG_INFO
    logging.WARNING: 4,  # LOG_WARNING
    logging.ERROR: 3,  # LOG_ERR
    logging.CRITICAL: 2,  # LOG_CRIT
}
JOURNAL_MESSAGE_LIMIT = 48 * 1024
"""A longer message is cut: a datagram over the socket's send buffer (~208 KiB) would fail as a whole."""


def _level(levelno: int) -> int:
    """The standard level at or below ``levelno`` (custom levels take the next lower one)."""
    return max((level for level in LEVEL_WORDS if level <= levelno), default=logging.DEBUG)


def priority(levelno: int) -> int:
    return PRIORITIES[_level(levelno)]


class LineFormatter(logging.Formatter):
    """``TAG[PID]: warning: text``; with ``priority_prefix`` ``<4>warning: text`` (journald's stream)."""

    def __init__(self, tag: str = TAG, pid: bool = True, priority_prefix: bool = False) -> None:
        super().__init__()
        self.tag = tag
        self.pid = pid
        self.priority_prefix = priority_prefix

    def text(self, record: logging.LogRecord) -> str:
        """The level word and the message (with a traceback, if any): what every target writes."""
        return LEVEL_WORDS[_level(record.levelno)] + super().format(record)

    def format(self, record: logging.LogRecord) -> str:
        if self.priority_prefix:
            return f"<{priority(record.levelno)}>{self.text(record)}"
        tag = f"{self.tag}[{record.process}]" if self.pid else self.tag
        return f"{tag}: {self.text(record)}"


class _WholeRecords(logging.Handler):
    """``handle`` without the handler lock: each record is written in one call (see the module docstring)."""

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        result = self.filter(record)
        if result:
            self.emit(result if isinstance(result, logging.LogRecord) else record)
        return bool(result)


class LineHandler(_WholeRecords):
    """Writes each formatted record plus a newline to a file descriptor in one ``os.write``."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self.fd = fd
        self._long_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, text: str) -> None:
        data = (text + "\n").encode("utf-8", "backslashreplace")
        if len(data) <= select.PIPE_BUF:
            self._write_all(data)
        else:
            with self._long_records:
                self._write_all(data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]


class _DatagramHandler(_WholeRecords):
    """One datagram per record to a unix socket; standard error when the socket cannot be reached."""

    def __init__(self, path: str, fallback_fd: int = 2) -> None:
        super().__init__()
        self.path = path
        self.formatter = LineFormatter()
        self._fallback = LineHandler(fallback_fd)
        self._fallback.setFormatter(LineFormatter())
        self._sock: socket.socket | None = None
        self._connect_lock = threading.Lock()

    def payload(self, record: logging.LogRecord) -> bytes:
        raise NotImplementedError

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.payload(record)
        except Exception:
            self.handleError(record)
            return
        for _attempt in range(2):  # a socket of a restarted daemon: reconnect once
            sock = self._sock or self._connect()
            if sock is None:
                break
            try:
                sock.send(data)
                return
            except BlockingIOError:
                break  # the daemon's queue is full: this line goes to stderr rather than hold up mail
            except OSError:
                self._drop(sock)
        try:
            self._fallback.emit(record)
        except Exception:
            self.handleError(record)

    def _connect(self) -> socket.socket | None:
        with self._connect_lock:
            if self._sock is not None:
                return self._sock
            # Non-blocking: a daemon that stops reading (its queue holds net.unix.max_dgram_qlen, 512,
            # datagrams) must not stall libmilter's threads; glibc's syslog(3) would block there.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                return None
            self._sock = sock
            return sock

    def _drop(self, sock: socket.socket) -> None:
        with self._connect_lock:
            if self._sock is sock:
                self._sock = None
        sock.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        super().close()


class SyslogHandler(_DatagramHandler):
    """RFC 3164 lines with facility mail, as glibc's syslog(3) sends them to ``/dev/log``."""

    def payload(self, record: logging.LogRecord) -> bytes:
        assert isinstance(self.formatter, LineFormatter)
        pri = FACILITY_MAIL * 8 + priority(record.levelno)
        stamp = time.strftime("%b %e %H:%M:%S", time.localtime(record.created))
        return f"<{pri}>{stamp} {TAG}[{record.process}]: {self.formatter.text(record)}".encode(
            "utf-8", "backslashreplace"
        )


class JournalHandler(_DatagramHandler):
    """systemd-journald's native protocol (``systemd.journal-fields(7)``, "Native Journal Protocol")."""

    def payload(self, record: logging.LogRecord) -> bytes:
        assert isinstance(self.formatter, LineFormatter)
        message = self.formatter.text(record)
        if len(message) > JOURNAL_MESSAGE_LIMIT:
            message = message[:JOURNAL_MESSAGE_LIMIT] + " [cut]"
        fields = {
            "MESSAGE": message,
            "PRIORITY": str(priority(record.levelno)),
            "SYSLOG_IDENTIFIER": TAG,
            "SYSLOG_FACILITY": str(FACILITY_MAIL),
            "SYSLOG_PID": str(record.process),
            "CODE_FUNC": record.funcName or "",
            "LOGGER": record.name,
        }
        return b"".join(journal_field(name, value) for name, value in fields.items())


def journal_field(name: str, value: str) -> bytes:
    """``NAME=value\\n``; a value with a newline in the binary form: name, newline, 64-bit length, data."""
    data = value.encode("utf-8", "backslashreplace")
    if b"\n" not in data:
        return name.encode("ascii") + b"=" + data + b"\n"
    return name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


def on_journal_stream(fd: int = 2, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``fd`` is the stream systemd connected to journald (``$JOURNAL_STREAM`` = ``DEV:INODE``)."""
    stream = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        info = os.fstat(fd)
        return bool(inode) and (int(device), int(inode)) == (info.st_dev, info.st_ino)
    except (OSError, ValueError):
        return False


def make_handler(target: str = "stderr", *, fd: int = 2, syslog_socket: str = "/dev/log",
                 journal_socket: str = "/run/systemd/journal/socket", tag: str = TAG, pid: bool = True,
                 environ: Mapping[str, str] | None = None) -> logging.Handler:  # fmt: skip
    """The handler for ``logging.target``; ``pid=False`` for the short-lived commands (``amzguard: …``)."""
    if target == "syslog":
        return SyslogHandler(syslog_socket, fd)
    if target == "journal":
        return JournalHandler(journal_socket, fd)
    handler = LineHandler(fd)
    handler.setFormatter(LineFormatter(tag, pid, priority_prefix=on_journal_stream(fd, environ)))
    return handler


def configure_logging(level: str, fd: int = 2, *, replace: bool = False, **target: object) -> None:
    """Send log records at ``level`` or above to the target (standard error by default).

    Like ``logging.basicConfig``, it leaves a root logger that already has handlers alone (an embedding
    program or a test harness decided where logs go), except handlers amzguard set itself, which
    ``replace=True`` swaps (the command line logs to stderr until the config names the target).
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "amzguard", False)]
    if root.handlers and not (replace and ours and len(ours) == len(root.handlers)):
        return
    for old in ours:
        root.removeHandler(old)
        old.close()
    # No record reads its thread or multiprocessing name. Finding the thread name costs most on libmilter's
    # threads: a thread Python did not start gets a threading._DummyThread built at its first record
    # (~14 us), and libmilter starts one per MTA connection, so once per message in practice.
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = make_handler(fd=fd, **target)  # type: ignore[arg-type]
    handler.amzguard = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
