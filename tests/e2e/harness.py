"""End-to-end test harness: a throwaway Postfix plus an SMTP sink, stdlib only.

Why this exists: the amzguard milter only shows its real behaviour when a real
MTA drives it. Postfix treats the two submission paths differently (SMTP goes
through ``smtpd_milters``, ``sendmail(1)`` goes through pickup/cleanup and
``non_smtpd_milters``), rejects and bounces in different places, and adds its
own DSN texts. Mocks cannot reproduce that, so every e2e test runs against a
private Postfix instance started from a temporary directory.

Layout of one instance (all below ``workdir``)::

    etc/main.cf, etc/master.cf   configuration (every service chroot=n)
    queue/                       queue_directory (tree created by the harness)
    data/                        data_directory (owned by postfix: master.lock)
    mail/<user>/{new,cur,tmp}    virtual maildirs for <user>@shop.test (uid nobody)
    sink/                        smtp-sink dump files (owned by nobody)
    maillog                      written by postlogd (no syslog on this machine)

Mail for ``shop@``, ``owner@`` and ``support@shop.test`` is delivered locally;
every other address is relayed to the :class:`Sink` via ``relayhost``.

Constraints this module respects (see /work/shared/postfix-facts.md):

* no systemd, no syslog, we run as root; ``-c``/``-C`` need absolute paths;
* processes are only stopped by PID (the sink) or ``postfix -c DIR stop``;
* waiting is done by polling with deadlines, never by fixed sleeps.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.utils
import grp
import json
import os
import pty
import pwd
import re
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

__all__ = [
    "DOMAIN",
    "LOCAL_USERS",
    "BounceReport",
    "PostfixInstance",
    "PostfixStartError",
    "Sink",
    "SinkMessage",
    "SmtpResult",
    "free_port",
    "make_message",
    "make_workdir",
    "parse_bounce",
    "running_postfix",
    "smtp_transaction",
    "unique_token",
]

#: Domain whose mailboxes the instance hosts itself.
DOMAIN = "shop.test"
#: Local parts with a maildir in :data:`DOMAIN`.
LOCAL_USERS: tuple[str, ...] = ("shop", "owner", "support")

SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
POSTSUPER = "/usr/sbin/postsuper"
POSTKICK = "/usr/sbin/postkick"
SENDMAIL = "/usr/sbin/sendmail"
SWAKS = "/usr/bin/swaks"

#: Environment variable: when set to "1", :func:`running_postfix` keeps the workdir.
KEEP_ENV = "AMZGUARD_E2E_KEEP"

_POLL = 0.05


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0). There is an unavoidable race between
    closing this socket and the real server binding it, so the starters below
    retry with a new port when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_token(prefix: str = "t") -> str:
    """Short unique string for subjects/Message-IDs, so tests sharing one
    Postfix instance can find *their* message among everybody else's."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_message(
    sender: str,
    to: str | Sequence[str],
    subject: str,
    body: str = "test body\n",
    extra_headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
) -> bytes:
    """Build a minimal RFC 5322 message (CRLF line ends) with Date and Message-ID.

    Headers are written verbatim (no encoding), so tests control exactly what
    the milter sees.
    """
    to_list = [to] if isinstance(to, str) else list(to)
    headers: list[tuple[str, str]] = [
        ("From", sender),
        ("To", ", ".join(to_list)),
        ("Subject", subject),
        ("Date", email.utils.formatdate(localtime=False)),
        ("Message-ID", f"<{uuid.uuid4().hex}@client.test>"),
    ]
    if extra_headers:
        items = extra_headers.items() if isinstance(extra_headers, Mapping) else extra_headers
        headers.extend(items)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (head + "\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n")).encode("utf-8")


def make_workdir(prefix: str = "amzguard-e2e-") -> Path:
    """Create a fresh directory under /tmp that Postfix can use as ``workdir``.

    Why not pytest's ``tmp_path``: it lives below /tmp/pytest-of-root (mode
    0700), which the ``postfix`` and ``nobody`` users cannot traverse, so the
    virtual(8) delivery agent and smtp-sink could not write there.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def _check_traversable(path: Path) -> None:
    """Raise if an unprivileged user cannot reach ``path`` (every ancestor needs o+x)."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise ValueError(
                f"{p} is not world-traversable (mode {oct(mode & 0o777)}); postfix/nobody "
                f"could not reach {path}. Use make_workdir() instead of pytest's tmp_path."
            )


def _normalize_crlf(data: bytes | str) -> bytes:
    """Encode as UTF-8 and make every line end CRLF (what SMTP DATA expects)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _to_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def _is_listening(port: int, host: str = "127.0.0.1") -> bool:
    """True when some socket LISTENs on host:port, read from /proc/net/tcp.

    Used instead of a probe connection: a probe would reach smtpd and, with a
    milter configured, the milter too (a spurious connect callback in tests).
    """
    a, b, c, d = (int(x) for x in host.split("."))
    want = f"{d:02X}{c:02X}{b:02X}{a:02X}:{port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as fh:
            next(fh)
            for line in fh:
                cols = line.split()
                if cols[1] == want and cols[3] == "0A":
                    return True
    except OSError:
        return False
    return False


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie.

    PID 1 on this machine does not reap orphans, so an exited Postfix child can
    stay a zombie forever; it counts as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            data = fh.read()
    except OSError:
        return False
    state = data.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (to wait for Postfix daemons after stop)."""
    result: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data.rsplit(")", 1)[1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            result.append(int(entry))
    return result


def _run_on_pty(args: Sequence[str], timeout: float = 30) -> tuple[int, str]:
    """Run a command with stdout/stderr on a pseudo-terminal; return (rc, output).

    Postfix commands send their ``fatal:`` messages to stderr only when it is
    a terminal; with ``maillog_file`` they would otherwise go to postlogd,
    which does not run when start-up failed.
    """
    master_fd, slave_fd = pty.openpty()
    try:
        proc = subprocess.run(list(args), stdin=subprocess.DEVNULL, stdout=slave_fd, stderr=slave_fd,
                              timeout=timeout, check=False)
    finally:
        os.close(slave_fd)
    chunks: list[bytes] = []
    try:
        while True:
            chunk = os.read(master_fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:  # EIO once the slave side is closed and drained
        pass
    finally:
        os.close(master_fd)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def _wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _nobody() -> tuple[int, int]:
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def _postfix_ids() -> tuple[int, int]:
    pw = pwd.getpwnam("postfix")
    return pw.pw_uid, pw.pw_gid


def _read_mail_file(path: Path) -> email.message.Message:
    with open(path, "rb") as fh:
        return email.message_from_binary_file(fh)


def _angle_addr(token: str) -> str:
    """``<a@b>`` -> ``a@b`` (the null sender ``<>`` becomes "")."""
    token = token.strip()
    if token.startswith("<") and token.endswith(">"):
        return token[1:-1]
    return token


# --------------------------------------------------------------------------- sink


@dataclass
class SinkMessage:
    """One transaction captured by smtp-sink.

    Attributes:
        path: the dump file.
        mail_from: envelope sender (from ``X-Mail-Args``; "" for the null sender).
        rcpts: envelope recipients in RCPT order (from the ``X-Rcpt-Args`` lines).
        mail_args: raw ``X-Mail-Args`` value, e.g. ``<a@b> SIZE=123 BODY=8BITMIME``.
        rcpt_args: raw ``X-Rcpt-Args`` values, e.g. ``<x@y> ORCPT=rfc822;x@y``.
        envelope: every smtp-sink ``X-*`` line, name -> values in order.
        raw: the dump file as written by smtp-sink (includes its lines).
        data: the message exactly as Postfix sent it (dot-unstuffed, LF line
            ends), without smtp-sink's X-* lines, its own Received header and the
            blank line it appends.
        message: ``data`` parsed with :func:`email.message_from_bytes`.
        headers: the message headers in order, as ``(name, value)`` pairs.
    """

    path: Path
    mail_from: str
    rcpts: list[str]
    mail_args: str
    rcpt_args: list[str]
    envelope: dict[str, list[str]]
    raw: bytes
    data: bytes
    message: email.message.Message
    headers: list[tuple[str, str]]

    def orcpt(self, rcpt: str) -> str | None:
        """The ORCPT parameter Postfix relayed for ``rcpt`` (e.g. ``rfc822;a@b``)."""
        for args in self.rcpt_args:
            parts = args.split()
            if parts and _angle_addr(parts[0]).lower() == rcpt.lower():
                for p in parts[1:]:
                    if p.upper().startswith("ORCPT="):
                        return p[6:]
        return None

    @classmethod
    def parse(cls, path: Path, raw: bytes) -> "SinkMessage":
        """Split a dump file into smtp-sink's envelope lines and the message.

        Dump format (smtp-sink(1)): ``X-Client-Addr``, ``X-Client-Proto``,
        ``X-Helo-Args``, ``X-Mail-Args``, one ``X-Rcpt-Args`` per RCPT, then a
        three-line ``Received: ... (smtp-sink) ...`` header, then the message,
        then one empty line.
        """
        lines = raw.split(b"\n")
        envelope: dict[str, list[str]] = {}
        i = 0
        env_re = re.compile(rb"^(X-Client-Addr|X-Client-Proto|X-Helo-Args|X-Mail-Args|X-Rcpt-Args):\s?(.*)$")
        while i < len(lines):
            m = env_re.match(lines[i])
            if not m:
                break
            envelope.setdefault(m.group(1).decode(), []).append(m.group(2).decode("utf-8", "replace"))
            i += 1
        # smtp-sink's own Received header (with continuation lines).
        if i < len(lines) and lines[i].startswith(b"Received:"):
            j = i + 1
            while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
                j += 1
            if b"(smtp-sink)" in b"\n".join(lines[i:j]):
                i = j
        data = b"\n".join(lines[i:])
        if data.endswith(b"\n"):
            data = data[:-1]  # the empty line smtp-sink appends
        mail_args = (envelope.get("X-Mail-Args") or [""])[0]
        rcpt_args = envelope.get("X-Rcpt-Args", [])
        mail_from = _angle_addr(mail_args.split()[0]) if mail_args.split() else ""
        rcpts = [_angle_addr(a.split()[0]) for a in rcpt_args if a.split()]
        message = email.message_from_bytes(data)
        return cls(
            path=path,
            mail_from=mail_from,
            rcpts=rcpts,
            mail_args=mail_args,
            rcpt_args=list(rcpt_args),
            envelope=envelope,
            raw=raw,
            data=data,
            message=message,
            headers=[(k, str(v)) for k, v in message.items()],
        )


class Sink:
    """``smtp-sink`` on 127.0.0.1 keeping every received message as a file.

    Why smtp-sink: it ships with Postfix, accepts everything (announces DSN, so
    Postfix relays ORCPT/NOTIFY) and records the envelope (``X-Rcpt-Args``),
    which is exactly what we need to see where Postfix sent a message.
    It runs as root only until it binds, then as ``nobody`` (``-u``), so the
    dump directory is owned by nobody.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory).absolute()
        self.port: int = port or 0
        self._fixed_port = port is not None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.directory.parent / f"{self.directory.name}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        """The smtp-sink command line (a subclass may record differently, e.g. bench/ only counts)."""
        return [SMTP_SINK, "-u", "nobody", "-d", f"{self.directory}/%H%M%S.", f"127.0.0.1:{self.port}", "1000"]

    def start(self, timeout: float = 10.0) -> "Sink":
        """Start smtp-sink and wait until it listens; retries on a port race."""
        if self.proc is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        uid, gid = _nobody()
        os.chown(self.directory, uid, gid)
        last_err = ""
        for _attempt in range(5):
            if not self._fixed_port:
                self.port = free_port()
            log = open(self._log_path, "ab")
            try:
                proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            finally:
                log.close()
            ok = _wait_until(lambda: _is_listening(self.port) or proc.poll() is not None, timeout)
            if ok and proc.poll() is None:
                self.proc = proc
                return self
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            last_err = self._log_path.read_text(errors="replace")
            if self._fixed_port:
                break
        raise RuntimeError(f"smtp-sink did not start on 127.0.0.1:{self.port}:\n{last_err}")

    def stop(self) -> None:
        """Terminate our smtp-sink (by its PID only). Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "Sink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_files(self) -> set[str]:
        """Dump files smtp-sink still holds open (transaction in progress).

        smtp-sink keeps a dump file open until the end of the transaction, so a
        file it still has open may be incomplete; we skip those.
        """
        if self.proc is None or self.proc.poll() is not None:
            return set()
        fd_dir = f"/proc/{self.proc.pid}/fd"
        result: set[str] = set()
        try:
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    result.add(os.readlink(f"{fd_dir}/{fd}"))
        except OSError:
            pass
        return result

    def messages(self) -> list[SinkMessage]:
        """All complete captured messages, oldest first."""
        if not self.directory.is_dir():
            return []
        busy = self._open_files()
        files = [p for p in self.directory.iterdir() if p.is_file() and str(p) not in busy]
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [SinkMessage.parse(p, p.read_bytes()) for p in files]

    def wait_for(
        self,
        count: int = 1,
        timeout: float = 20.0,
        predicate: Callable[[SinkMessage], bool] | None = None,
    ) -> list[SinkMessage]:
        """Poll until at least ``count`` (matching) messages exist; return them.

        Raises TimeoutError listing what *was* captured, to make failures readable.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages() if predicate is None or predicate(m)]
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                summary = "\n".join(
                    f"  {m.path.name}: from=<{m.mail_from}> rcpts={m.rcpts} subject={m.message['Subject']!r}"
                    for m in self.messages()
                )
                raise TimeoutError(
                    f"sink: wanted {count} matching message(s), have {len(found)} after {timeout}s; "
                    f"all captured:\n{summary or '  (none)'}"
                )
            time.sleep(_POLL)

    def clear(self) -> None:
        """Delete every complete dump file (lets a test start from zero)."""
        for m in self.messages():
            with contextlib.suppress(FileNotFoundError):
                m.path.unlink()


# --------------------------------------------------------------------------- SMTP result


@dataclass
class SmtpResult:
    """Every reply of one SMTP transaction, recorded instead of raised.

    ``data_reply`` is None when no recipient was accepted (DATA never sent) or
    the session broke off earlier; ``error`` then says why if it was not a reply.
    A 4xx/5xx to DATA itself (before the message) is recorded as ``data_reply``.
    """

    connect_reply: tuple[int, str] | None = None
    ehlo_reply: tuple[int, str] | None = None
    mail_reply: tuple[int, str] | None = None
    rcpt_replies: dict[str, tuple[int, str]] = field(default_factory=dict)
    data_reply: tuple[int, str] | None = None
    error: str | None = None

    @property
    def accepted(self) -> list[str]:
        """Recipients that got a 2xx reply."""
        return [r for r, (code, _t) in self.rcpt_replies.items() if 200 <= code < 300]

    @property
    def rejected(self) -> dict[str, tuple[int, str]]:
        """Recipients that did not get a 2xx reply."""
        return {r: v for r, v in self.rcpt_replies.items() if not 200 <= v[0] < 300}

    @property
    def queued(self) -> bool:
        return self.data_reply is not None and self.data_reply[0] == 250

    @property
    def queue_id(self) -> str | None:
        """Queue id from ``250 2.0.0 Ok: queued as XXXX``."""
        if self.data_reply is None:
            return None
        m = re.search(r"queued as ([0-9A-Za-z]+)", self.data_reply[1])
        return m.group(1) if m else None


def _reply(code: int, text: bytes | str) -> tuple[int, str]:
    return code, text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def smtp_transaction(
    port: int,
    sender: str,
    rcpts: Sequence[str],
    message: bytes | str,
    timeout: float = 30,
    *,
    mail_options: Sequence[str] = (),
    rcpt_options: Mapping[str, Sequence[str]] | None = None,
    helo: str = "client.test",
    verbatim: bool = False,
) -> SmtpResult:
    """One SMTP transaction with smtplib against 127.0.0.1:``port``, recording every reply.

    ``verbatim``: send each recipient exactly as given (``RCPT TO:`` + the text): smtplib's own
    quoting parses the address and drops a source route (``<@a:x@y>`` goes out as ``<x@y>``).

    ``rcpt_options`` maps a recipient to extra RCPT parameters, e.g.
    ``{"x@y": ["ORCPT=rfc822;a@b", "NOTIFY=FAILURE"]}``; ``mail_options``
    go on MAIL FROM (e.g. ``["SMTPUTF8"]``). Line ends are normalised to
    CRLF and smtplib does the dot-stuffing. Nothing is raised for 4xx/5xx.
    """
    res = SmtpResult()
    data = _normalize_crlf(message)
    client = smtplib.SMTP(timeout=timeout)
    try:
        try:
            res.connect_reply = _reply(*client.connect("127.0.0.1", port))
        except smtplib.SMTPConnectError as e:
            res.connect_reply = _reply(e.smtp_code, e.smtp_error)
            res.error = "connect refused by server"
            return res
        res.ehlo_reply = _reply(*client.ehlo(helo))
        if res.ehlo_reply[0] != 250:
            res.ehlo_reply = _reply(*client.helo(helo))
            if res.ehlo_reply[0] != 250:
                return res
        res.mail_reply = _reply(*client.mail(sender, list(mail_options)))
        if res.mail_reply[0] != 250:
            return res
        for r in rcpts:
            opts = list((rcpt_options or {}).get(r, ()))
            if verbatim:
                client.putcmd("rcpt", "TO:" + " ".join([r, *opts]))
                res.rcpt_replies[r] = _reply(*client.getreply())
            else:
                res.rcpt_replies[r] = _reply(*client.rcpt(r, opts))
        if not res.accepted:
            return res
        try:
            res.data_reply = _reply(*client.data(data))
        except smtplib.SMTPDataError as e:
            res.data_reply = _reply(e.smtp_code, e.smtp_error)
        return res
    except smtplib.SMTPServerDisconnected as e:
        res.error = f"server disconnected: {e}"
        return res
    except (OSError, smtplib.SMTPException) as e:
        res.error = f"{type(e).__name__}: {e}"
        return res
    finally:
        with contextlib.suppress(Exception):
            client.quit()
        with contextlib.suppress(Exception):
            client.close()


# --------------------------------------------------------------------------- bounces


@dataclass
class BounceReport:
    """The parts of a Postfix DSN ("Undelivered Mail Returned to Sender")."""

    subject: str
    notification: str  # text/plain human-readable part
    per_message: dict[str, str]  # first block of message/delivery-status
    recipients: list[dict[str, str]]  # one dict per recipient block
    returned: email.message.Message | None  # the attached original (message/rfc822 or text/rfc822-headers)


def parse_bounce(msg: email.message.Message) -> BounceReport:
    """Split a multipart/report DSN into its human and machine-readable parts.

    Raises ValueError when ``msg`` is not a delivery-status report.
    """
    if msg.get_content_type() != "multipart/report":
        raise ValueError(f"not a DSN: Content-Type {msg.get_content_type()}")
    notification = ""
    per_message: dict[str, str] = {}
    recipients: list[dict[str, str]] = []
    returned: email.message.Message | None = None
    for part in msg.get_payload():
        assert isinstance(part, email.message.Message)
        ctype = part.get_content_type()
        if ctype == "text/plain" and not notification:
            payload = part.get_payload(decode=True)
            notification = payload.decode(part.get_content_charset() or "utf-8", "replace") if payload else ""
        elif ctype == "message/delivery-status":
            blocks = part.get_payload()
            assert isinstance(blocks, list)
            dicts = [{k: str(v) for k, v in b.items()} for b in blocks]
            if dicts:
                per_message, recipients = dicts[0], dicts[1:]
        elif ctype == "message/rfc822":
            inner = part.get_payload()
            returned = inner[0] if isinstance(inner, list) and inner else None
        elif ctype == "text/rfc822-headers":
            payload = part.get_payload(decode=True) or b""
            returned = email.message_from_bytes(payload)
    return BounceReport(str(msg.get("Subject", "")), notification, per_message, recipients, returned)


# --------------------------------------------------------------------------- postfix


class PostfixStartError(RuntimeError):
    """Postfix did not come up; the message carries the maillog."""


_MASTER_CF_SERVICES = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _pf_escape(value: str) -> str:
    """main.cf expands ``$name``; a literal ``$`` must be written ``$$``."""
    return value.replace("$", "$$")


class PostfixInstance:
    """A private Postfix (config, queue, logs, mailboxes, sink) under ``workdir``.

    Args:
        workdir: empty, world-traversable directory (see :func:`make_workdir`).
        milter: Postfix milter spec (``unix:/abs/sock`` or ``inet:127.0.0.1:PORT``),
            used for both ``smtpd_milters`` (SMTP path) and ``non_smtpd_milters``
            (sendmail path). None: no milter.
        milter_default_action: what Postfix does when the milter is unreachable
            or misbehaves (``tempfail`` | ``accept`` | ``reject`` | ``quarantine``).
        transport_maps: e.g. ``regexp:/abs/path`` (file must exist before start;
            regexp tables are read at process start, so :meth:`reload` after edits).
        extra_master_cf: service lines appended to master.cf (e.g. a ``pipe`` transport).
        extra_main_cf: appended last, overriding the defaults. Values are written
            verbatim, so ``$`` keeps its main.cf meaning.
    """

    def __init__(
        self,
        workdir: Path,
        milter: str | None = None,
        milter_default_action: str = "tempfail",
        transport_maps: str | None = None,
        extra_main_cf: Mapping[str, str] | None = None,
        extra_master_cf: str = "",
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.milter = milter
        self.milter_default_action = milter_default_action
        self.transport_maps = transport_maps
        self.extra_main_cf: dict[str, str] = dict(extra_main_cf or {})
        self.extra_master_cf = extra_master_cf
        self.config_dir = self.workdir / "etc"
        self.queue_dir = self.workdir / "queue"
        self.data_dir = self.workdir / "data"
        self.mail_dir = self.workdir / "mail"
        self.maillog_path = self.workdir / "maillog"
        self.sink = Sink(self.workdir / "sink")
        self.smtp_port: int = 0
        self._started = False

    # ------------------------------------------------------------ configuration

    def main_cf(self) -> dict[str, str]:
        """The main.cf settings this instance writes (before extra_main_cf)."""
        users = ", ".join(f"{u}@{DOMAIN}={u}/" for u in LOCAL_USERS)
        w = _pf_escape(str(self.workdir))
        cf: dict[str, str] = {
            # 3.6 is what Debian's 3.7 package writes; no compatibility warnings.
            "compatibility_level": "3.6",
            "queue_directory": _pf_escape(str(self.queue_dir)),
            "data_directory": _pf_escape(str(self.data_dir)),
            "maillog_file": _pf_escape(str(self.maillog_path)),
            "maillog_file_prefixes": w,
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mx.shop.test",
            "mydomain": DOMAIN,
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            # The defaults point at /etc/aliases and NIS: errors/warnings in the log.
            "alias_maps": "",
            "alias_database": "",
            "relayhost": f"[127.0.0.1]:{self.sink.port}",
            "smtp_dns_support_level": "disabled",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_base": _pf_escape(str(self.mail_dir)),
            # inline: because regexp maps may not use substitution here.
            "virtual_mailbox_maps": f"inline:{{ {users} }}",
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
            # Speed: retry deferred mail quickly, never delay on errors or inflow.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "delay_warning_time": "0h",
            "in_flow_delay": "0s",
            "smtpd_error_sleep_time": "0s",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "200",
            "smtp_connect_timeout": "5s",
            "biff": "no",
            "append_dot_mydomain": "no",
            "milter_default_action": self.milter_default_action,
        }
        if self.milter:
            cf["smtpd_milters"] = self.milter
            cf["non_smtpd_milters"] = self.milter
        if self.transport_maps:
            cf["transport_maps"] = self.transport_maps
        return cf

    def _write_config(self) -> None:
        cf = self.main_cf()
        cf.update(self.extra_main_cf)
        for k, v in cf.items():
            if "\n" in k or "\n" in v:
                raise ValueError(f"newline in main.cf setting {k!r}")
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in cf.items()))
        smtpd = f"127.0.0.1:{self.smtp_port} inet  n       -       n       -       -       smtpd\n"
        (self.config_dir / "master.cf").write_text(smtpd + _MASTER_CF_SERVICES + self.extra_master_cf)
        self._backdate_config()

    def _backdate_config(self) -> None:
        """Set main.cf/master.cf mtime 10 s into the past.

        Postfix re-reads a "hot" main.cf (modified within the current second) in
        300 ms steps until it is old enough: every postfix/postqueue/sendmail
        command right after writing the file would stall ~2 s.
        """
        past = time.time() - 10
        for name in ("main.cf", "master.cf"):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.config_dir / name, (past, past))

    def _make_queue_dirs(self) -> None:
        """Create the queue tree with the owners/modes ``postfix check`` would use.

        Why by hand: on a fresh queue, ``postfix check`` (post-install
        create-missing) takes about 2 s; this takes milliseconds. With the
        ``quick-start`` marker, ``postfix start`` then skips its checks too.
        """
        pf_uid, _ = _postfix_ids()
        postdrop_gid = grp.getgrnam("postdrop").gr_gid
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.queue_dir, 0, 0)
        self.queue_dir.chmod(0o755)
        layout: list[tuple[str, int, int, int]] = [
            (name, pf_uid, 0, 0o700)
            for name in ("active", "bounce", "corrupt", "defer", "deferred", "flush",
                         "hold", "incoming", "private", "saved", "trace")
        ]
        layout += [("maildrop", pf_uid, postdrop_gid, 0o730), ("public", pf_uid, postdrop_gid, 0o710), ("pid", 0, 0, 0o755)]
        for name, uid, gid, mode in layout:
            d = self.queue_dir / name
            d.mkdir(exist_ok=True)
            os.chown(d, uid, gid)
            d.chmod(mode)

    def _prepare_dirs(self) -> None:
        _check_traversable(self.workdir)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self._make_queue_dirs()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.data_dir, *_postfix_ids())  # master.lock lives here
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.mail_dir, *_nobody())  # virtual(8) delivers as uid 65534
        self.maillog_path.touch()

    # ------------------------------------------------------------ commands

    def _cmd(self, args: Sequence[str], *, timeout: float = 60, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run a Postfix tool; outputs decoded as text; never raises on rc != 0."""
        p = subprocess.run(list(args), input=input, capture_output=True, timeout=timeout, check=False)
        return subprocess.CompletedProcess(
            p.args, p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
        )

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``postfix -c <config_dir> ARGS`` (its messages go to the maillog, not stdout)."""
        return self._cmd([POSTFIX, "-c", str(self.config_dir), *args])

    def postconf(self, settings: Mapping[str, str]) -> None:
        """Edit main.cf (``postconf -e``); call :meth:`reload` afterwards."""
        if not settings:
            return
        args = [f"{k} = {v}" for k, v in settings.items()]
        p = self._cmd([POSTCONF, "-c", str(self.config_dir), "-e", *args])
        if p.returncode != 0:
            raise RuntimeError(f"postconf failed: {p.stderr}")
        self._backdate_config()

    def reload(self, timeout: float = 10.0) -> None:
        """``postfix reload`` and wait for master to log it.

        Observed: an SMTP session opened right after this returns already sees
        the new settings (idle daemons of the old generation exit on reload).
        """
        off = self.log_offset()
        p = self.postfix("reload")
        if p.returncode != 0:
            raise RuntimeError(f"postfix reload failed (rc={p.returncode}):\n{self.maillog()[-4000:]}")
        self.wait_log(r"postfix/master\[\d+\]: reload ", timeout=timeout, after=off)

    # ------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._started

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self, timeout: float = 20.0) -> "PostfixInstance":
        """Write config, start the sink and Postfix, wait until smtpd listens.

        The queue tree is created by hand and a ``quick-start`` marker makes
        ``postfix start`` skip postfix-script's slow (~2 s) integrity checks
        (``postfix check`` is run only to diagnose a failed start). If the free
        port was taken in the meantime, retry with another one. Raises
        PostfixStartError with the maillog when Postfix does not come up.
        """
        if self._started:
            return self
        self._prepare_dirs()
        self.sink.start()
        try:
            st = subprocess.CompletedProcess[str]([], 0, "", "")
            for _attempt in range(4):
                self.smtp_port = free_port()
                self._write_config()
                off = self.log_offset()
                (self.queue_dir / "quick-start").touch()
                st = self.postfix("start")
                if st.returncode == 0 and _wait_until(
                    lambda: _is_listening(self.smtp_port) or not self._master_alive(), timeout
                ) and _is_listening(self.smtp_port):
                    self._started = True
                    return self
                last = self._read_log_from(off)
                self._stop_postfix()
                if "Address already in use" not in last:
                    break
            # Diagnose with the full integrity check that quick-start skipped.
            # Postfix commands print fatal errors only to a terminal (and to
            # postlogd, which is not running), so run the check on a pty.
            rc, out = _run_on_pty([POSTFIX, "-c", str(self.config_dir), "check"])
            raise PostfixStartError(
                f"Postfix did not start (smtpd 127.0.0.1:{self.smtp_port}, config {self.config_dir}); "
                f"postfix start rc={st.returncode}; postfix check rc={rc}: {out.strip()}\n"
                f"--- maillog ---\n{self._read_log_from(off)}"
            )
        except BaseException:
            self.sink.stop()
            raise

    def _master_alive(self) -> bool:
        pid = self.master_pid()
        return pid is not None and _pid_alive(pid)

    def _stop_postfix(self, timeout: float = 15.0) -> None:
        """``postfix stop``, then wait for master and its daemons to be gone."""
        pid = self.master_pid()
        if pid is None or not _pid_alive(pid):
            return
        children = _children_of(pid)
        self.postfix("stop")
        _wait_until(lambda: not any(_pid_alive(p) for p in [pid, *children]), timeout)

    def stop(self) -> None:
        """Stop Postfix (``postfix -c DIR stop``) and then the sink. Safe to call twice."""
        try:
            self._stop_postfix()
        finally:
            self._started = False
            self.sink.stop()

    def __enter__(self) -> "PostfixInstance":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ submission

    def smtp(
        self,
        sender: str,
        rcpts: Sequence[str],
        message: bytes | str,
        timeout: float = 30,
        *,
        mail_options: Sequence[str] = (),
        rcpt_options: Mapping[str, Sequence[str]] | None = None,
        helo: str = "client.test",
        verbatim: bool = False,
    ) -> SmtpResult:
        """One SMTP transaction with this instance's smtpd (see :func:`smtp_transaction`)."""
        return smtp_transaction(
            self.smtp_port, sender, rcpts, message, timeout,
            mail_options=mail_options, rcpt_options=rcpt_options, helo=helo, verbatim=verbatim,
        )  # fmt: skip

    def swaks(self, args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``swaks --server 127.0.0.1 --port <smtp_port> ARGS``; never raises on rc != 0.

        swaks exits 23/24/25... on 4xx/5xx replies; the transcript is in stdout.
        """
        return self._cmd([SWAKS, "--server", "127.0.0.1", "--port", str(self.smtp_port), *args], timeout=timeout)

    def sendmail(
        self,
        sender: str,
        rcpts: Sequence[str],
        message: bytes | str,
        *,
        extra_args: Sequence[str] = ("-i",),
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Submit through Postfix's ``sendmail -C <config_dir> -f sender -- rcpts``.

        This is the non-SMTP path (postdrop -> maildrop -> pickup -> cleanup,
        milters from ``non_smtpd_milters``) that PHP ``mail()`` uses. ``-i`` by
        default, as PHP passes it (a lone "." line does not end the message);
        pass ``extra_args=("-t", "-i")`` with ``rcpts=[]`` for header recipients.
        sendmail exits 0 once the message is in maildrop: milter verdicts show up
        only in the log/queue/bounces.
        """
        args = [SENDMAIL, "-C", str(self.config_dir), *extra_args, "-f", sender]
        if rcpts:
            args += ["--", *rcpts]
        return self._cmd(args, input=_to_bytes(message), timeout=timeout)

    # ------------------------------------------------------------ log

    def maillog(self) -> str:
        """The whole maillog."""
        return self._read_log_from(0)

    def log_offset(self) -> int:
        """Current maillog size in bytes: pass as ``after=`` to look only at newer lines."""
        try:
            return self.maillog_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _read_log_from(self, offset: int) -> str:
        try:
            with open(self.maillog_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_since(self, offset: int) -> str:
        """Maillog text written after byte ``offset``."""
        return self._read_log_from(offset)

    def wait_log(self, regex: str | re.Pattern[str], timeout: float = 20, after: int = 0) -> re.Match[str]:
        """Poll the maillog (from byte ``after``) until ``regex`` matches (MULTILINE).

        Postfix logs through postlogd asynchronously, so this is how a test
        learns that something happened. Raises TimeoutError with the new log.
        """
        pat = re.compile(regex, re.MULTILINE) if isinstance(regex, str) else regex
        deadline = time.monotonic() + timeout
        while True:
            text = self._read_log_from(after)
            m = pat.search(text)
            if m:
                return m
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"maillog: no match for {pat.pattern!r} within {timeout}s; log since offset {after}:\n{text[-6000:]}"
                )
            time.sleep(_POLL)

    def wait_status(
        self, rcpt: str, status: str = "sent", timeout: float = 20, after: int = 0
    ) -> re.Match[str]:
        """Wait for a delivery line ``QID: to=<rcpt>, ... status=STATUS``.

        ``status`` is a regex (``sent``, ``bounced``, ``deferred``, ``sent|bounced``).
        Groups: ``qid``, ``status``, ``detail`` (text in parentheses).
        """
        pat = (
            rf"(?P<qid>[0-9A-Za-z]+): to=<{re.escape(rcpt)}>,.*?"
            rf"status=(?P<status>{status}) \((?P<detail>.*)\)$"
        )
        return self.wait_log(pat, timeout=timeout, after=after)

    def wait_delivered(self, rcpt: str, timeout: float = 20, after: int = 0) -> re.Match[str]:
        """Wait for ``status=sent`` to ``rcpt`` (to the sink or a local mailbox)."""
        return self.wait_status(rcpt, "sent", timeout=timeout, after=after)

    def wait_removed(self, queue_id: str, timeout: float = 20, after: int = 0) -> re.Match[str]:
        """Wait until qmgr logs ``QID: removed`` (all recipients done, incl. bounces)."""
        return self.wait_log(rf"qmgr\[\d+\]: {re.escape(queue_id)}: removed$", timeout=timeout, after=after)

    # ------------------------------------------------------------ queue

    def queue_entries(self) -> list[dict[str, object]]:
        """``postqueue -j``: one dict per queued message (queue_name, queue_id,
        sender, recipients[{address, delay_reason?}], ...)."""
        p = self._cmd([POSTQUEUE, "-c", str(self.config_dir), "-j"])
        if p.returncode != 0:
            raise RuntimeError(f"postqueue -j failed: {p.stderr}")
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    def queue(self) -> list[str]:
        """Queue ids of every message in any queue (maildrop, incoming, active, deferred, hold)."""
        return [str(e["queue_id"]) for e in self.queue_entries()]

    def kick_pickup(self) -> None:
        """Make pickup rescan maildrop now (``postkick public pickup W``).

        A sendmail-path message that cleanup refused with a temporary error
        (e.g. milter down) stays in maildrop; pickup only retries it on its next
        wakeup (60 s) or when kicked.
        """
        self._cmd([POSTKICK, "-c", str(self.config_dir), "public", "pickup", "W"])

    def flush(self) -> None:
        """``postqueue -f`` (retry deferred mail) and kick pickup (retry maildrop)."""
        self._cmd([POSTQUEUE, "-c", str(self.config_dir), "-f"])
        self.kick_pickup()

    def clear_queue(self) -> None:
        """``postsuper -d ALL``: drop every queued message (leftovers of a test).

        Note: does not remove files in maildrop; those are deleted directly.
        """
        self._cmd([POSTSUPER, "-c", str(self.config_dir), "-d", "ALL"])
        maildrop = self.queue_dir / "maildrop"
        if maildrop.is_dir():
            for p in maildrop.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def wait_queue_empty(self, timeout: float = 20) -> None:
        """Poll until no message is queued; raises TimeoutError with the queue and log tail."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.queue_entries()
            if not entries:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"queue not empty after {timeout}s: {json.dumps(entries, indent=1)}\n"
                    f"--- maillog tail ---\n{self.maillog()[-4000:]}"
                )
            time.sleep(_POLL * 2)

    # ------------------------------------------------------------ mailboxes

    def mailbox_paths(self, user: str) -> list[Path]:
        """Maildir files of ``user`` (new/ and cur/), oldest first."""
        base = self.mail_dir / user
        files: list[Path] = []
        for sub in ("new", "cur"):
            d = base / sub
            if d.is_dir():
                files.extend(p for p in d.iterdir() if p.is_file())
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return files

    def mailbox(self, user: str) -> list[email.message.Message]:
        """Messages delivered to ``user@shop.test`` (maildir new/ and cur/), oldest first.

        virtual(8) writes into tmp/ and renames into new/, so files seen here are complete.
        """
        return [_read_mail_file(p) for p in self.mailbox_paths(user)]

    def wait_mailbox(
        self,
        user: str,
        count: int = 1,
        timeout: float = 20,
        predicate: Callable[[email.message.Message], bool] | None = None,
    ) -> list[email.message.Message]:
        """Poll until ``user`` has at least ``count`` (matching) messages; return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.mailbox(user) if predicate is None or predicate(m)]
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                subjects = [str(m.get("Subject")) for m in self.mailbox(user)]
                raise TimeoutError(
                    f"mailbox {user}: wanted {count} matching, have {len(found)} after {timeout}s; "
                    f"subjects present: {subjects}\n--- maillog tail ---\n{self.maillog()[-4000:]}"
                )
            time.sleep(_POLL)

    def clear_mailboxes(self) -> None:
        """Delete every delivered message of every local user."""
        for user in LOCAL_USERS:
            for p in self.mailbox_paths(user):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


@contextlib.contextmanager
def running_postfix(
    milter: str | None = None,
    milter_default_action: str = "tempfail",
    transport_maps: str | None = None,
    extra_main_cf: Mapping[str, str] | None = None,
    transport_regexp: str | None = None,
    workdir: Path | None = None,
) -> Iterator[PostfixInstance]:
    """Start a :class:`PostfixInstance` in a fresh workdir; stop and delete it after.

    ``transport_regexp``: contents of a regexp table written to
    ``workdir/transport.regexp`` and used as ``transport_maps`` (convenience
    for the ``error:`` transport, e.g. ``/@refused\\.test$/ error:5.7.1 no``).
    Set ``AMZGUARD_E2E_KEEP=1`` to keep the workdir for debugging.
    """
    wd = workdir or make_workdir()
    if transport_regexp is not None:
        table = wd / "transport.regexp"
        table.write_text(transport_regexp if transport_regexp.endswith("\n") else transport_regexp + "\n")
        transport_maps = f"regexp:{table}"
    pf = PostfixInstance(
        wd,
        milter=milter,
        milter_default_action=milter_default_action,
        transport_maps=transport_maps,
        extra_main_cf=extra_main_cf,
    )
    try:
        with pf:
            yield pf
    finally:
        if workdir is None and os.environ.get(KEEP_ENV) != "1":
            shutil.rmtree(wd, ignore_errors=True)
