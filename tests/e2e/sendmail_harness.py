"""A private, throwaway Sendmail (the real Debian binaries) for end-to-end tests beside Postfix.

Why this shape: Sendmail and Postfix cannot both be installed as packages (both provide mail-transport-
agent), so the test fetches the Sendmail packages with ``apt-get download`` into a cache directory and
unpacks them with ``dpkg -x`` into a private root; nothing is installed system-wide except ``m4`` and
``libwrap0`` (Makefile TEST_PACKAGES).

Sendmail assumes a real host: it wants a fully qualified host name (else it sleeps 60 s and asks DNS),
resolves names through the system resolver, and logs only to syslog. So the daemon runs in a private
mount and UTS namespace (``unshare``) in which the host name is ``mx.shop.test``, ``/etc/hosts`` knows it,
``/etc/resolv.conf`` points at 127.0.0.1 (no DNS query ever leaves the machine), and ``/dev/log`` is a
socket this harness reads: the test sees Sendmail's own log lines. Its work directory lives below /run,
because Sendmail refuses milter sockets and queues below world-writable directories such as /tmp.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import Sink, SinkMessage, SmtpResult, _is_listening, _nobody, _reply, free_port, unique_token
from tests.support.milter_process import MilterProcess

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "etc" / "sendmail" / "amzguard.mc"
SHIPPED_SOCKET = "S=unix:/run/amzguard/amzguard.sock"
PACKAGES = ("sendmail-bin", "sendmail-cf", "sendmail-base")
CACHE_ENV = "AMZGUARD_SENDMAIL_CACHE"
HOSTNAME = "mx.shop.test"


class SendmailUnavailable(RuntimeError):
    """Sendmail cannot be set up on this machine (the message says why); tests skip with it."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, REPO / "var" / "cache" / "sendmail"))


def _run(args: list[str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def sendmail_root() -> Path:
    """The unpacked Sendmail packages (downloaded once into the cache directory)."""
    cache = cache_dir()
    root = cache / "root"
    binary = root / "usr" / "libexec" / "sendmail" / "sendmail"
    if binary.is_file():
        return root
    if os.geteuid() != 0:
        raise SendmailUnavailable("fetching the Sendmail packages needs root (apt-get download, unshare)")
    for tool in ("apt-get", "dpkg", "m4", "unshare"):
        if shutil.which(tool) is None:
            raise SendmailUnavailable(f"{tool} is missing (make test installs m4 and libwrap0)")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    fetched = _run(["apt-get", "download", *PACKAGES], cwd=debs)
    if fetched.returncode != 0:  # a fresh machine may have no package lists yet
        _run(["apt-get", "update", "-qq"])
        fetched = _run(["apt-get", "download", *PACKAGES], cwd=debs)
    if fetched.returncode != 0:
        raise SendmailUnavailable(f"apt-get download {' '.join(PACKAGES)} failed: {fetched.stderr.strip()}")
    staging = cache / "root.partial"
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        unpacked = _run(["dpkg", "-x", str(deb), str(staging)])
        if unpacked.returncode != 0:
            raise SendmailUnavailable(f"dpkg -x {deb.name} failed: {unpacked.stderr.strip()}")
    staging.rename(root)
    return root


class SyslogReceiver:
    """A unix datagram socket standing in for /dev/log; keeps every line Sendmail logs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        os.chmod(path, 0o666)
        self._sock.settimeout(0.2)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="sendmail-syslog", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stopped.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            # "<22>Nov 22 22:54:35 sendmail[26179]: text" -> "sendmail[26179]: text"
            line = re.sub(r"^<\d+>\w{3} [ \d]\d \d\d:\d\d:\d\d ", "", data.decode("utf-8", "replace").rstrip("\n\0"))
            with self._lock:
                self.lines.append(line)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text())
            if match:
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(f"sendmail log: no match for {pattern!r} in {timeout}s:\n{self.text()[-5000:]}")
            time.sleep(0.05)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._sock.close()


class SendmailInstance:
    """``sendmail -bd`` on 127.0.0.1 with amzguard as input mail filter, relaying everything to a sink.

    The milter line is the shipped ``etc/sendmail/amzguard.mc`` with only its socket path replaced.
    """

    def __init__(self, sink_port: int, mc_before: tuple[str, ...] = (), mc_after: tuple[str, ...] = ()) -> None:
        self.root = sendmail_root()
        self.sink_port = sink_port
        self.mc_before = mc_before
        """.mc lines before the snippet's include (e.g. a site's own macro lists, which the snippet extends)."""
        self.mc_after = mc_after
        """.mc lines after it (e.g. a site that overrides what the snippet asked for)."""
        self.workdir = Path(tempfile.mkdtemp(prefix="amzguard-sendmail-", dir="/run"))
        self.workdir.chmod(0o755)
        self.milter_socket = self.workdir / "amzguard.sock"
        """Where the milter must listen: below /run, as Sendmail accepts no socket below /tmp."""
        self.port = 0
        self.syslog: SyslogReceiver | None = None
        self.pid: int | None = None

    def _write_config(self) -> Path:
        work = self.workdir
        (work / "queue").mkdir(mode=0o700, exist_ok=True)
        (work / "aliases").write_text("")
        (work / "service.switch").write_text("hosts files\naliases files\n")
        (work / "hosts").write_text(f"127.0.0.1 localhost {HOSTNAME}\n")
        (work / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        snippet = SNIPPET.read_text()
        if SHIPPED_SOCKET not in snippet:
            raise AssertionError(f"{SNIPPET} no longer names {SHIPPED_SOCKET}; update the test")
        (work / "amzguard.mc").write_text(snippet.replace(SHIPPED_SOCKET, f"S=unix:{self.milter_socket}"))
        mc = "\n".join(
            [
                "divert(0)dnl",
                "VERSIONID(`amzguard end-to-end test')dnl",
                "OSTYPE(`linux')dnl",
                f"define(`confDOMAIN_NAME', `{HOSTNAME}')dnl",
                f"define(`QUEUE_DIR', `{work}/queue')dnl",
                f"define(`confPID_FILE', `{work}/sendmail.pid')dnl",
                f"define(`STATUS_FILE', `{work}/statistics')dnl",
                f"define(`ALIAS_FILE', `{work}/aliases')dnl",
                f"define(`confSERVICE_SWITCH_FILE', `{work}/service.switch')dnl",
                "define(`confDONT_PROBE_INTERFACES', `True')dnl",
                "define(`confDEF_USER_ID', `nobody:nogroup')dnl",
                "define(`confTO_IDENT', `0s')dnl",
                "define(`confLOG_LEVEL', `14')dnl",
                "FEATURE(`no_default_msa')dnl",
                "FEATURE(`nocanonify')dnl",
                "FEATURE(`accept_unresolvable_domains')dnl",
                f"DAEMON_OPTIONS(`Port={self.port},Addr=127.0.0.1,Name=MTA')dnl",
                "define(`SMART_HOST', `relay:[127.0.0.1]')dnl",
                f"define(`RELAY_MAILER_ARGS', `TCP $h {self.sink_port}')dnl",
                *self.mc_before,
                f"include(`{work}/amzguard.mc')dnl",
                *self.mc_after,
                "MAILER(`smtp')dnl",
                "",
            ]
        )
        return self._build_cf(mc, "test")

    def _build_cf(self, mc: str, name: str) -> Path:
        """Write NAME.mc and build NAME.cf from it with the unpacked sendmail-cf."""
        (self.workdir / f"{name}.mc").write_text(mc)
        cf_dir = self.root / "usr" / "share" / "sendmail" / "cf"
        built = _run(["m4", f"-D_CF_DIR_={cf_dir}/", str(cf_dir / "m4" / "cf.m4"), str(self.workdir / f"{name}.mc")])
        if built.returncode != 0:
            raise RuntimeError(f"m4 failed: {built.stderr}")
        cf = self.workdir / f"{name}.cf"
        cf.write_text(built.stdout)
        return cf

    def _namespaced(self, *command: str) -> list[str]:
        """``command`` run in the private namespace (host name, /etc/hosts, resolv.conf, /dev/log of ours)."""
        script = (
            "set -e; for n in null zero random urandom; do mount --bind /dev/$n \"$1/dev/$n\"; done; "
            "mount --bind \"$1/dev\" /dev; mount --bind \"$1/hosts\" /etc/hosts; "
            "mount --bind \"$1/resolv.conf\" /etc/resolv.conf; hostname \"$2\"; shift 2; exec \"$@\""
        )
        return ["unshare", "--mount", "--uts", "sh", "-c", script, "sh", str(self.workdir), HOSTNAME, *command]

    def start(self, timeout: float = 20) -> SendmailInstance:
        self.port = free_port()
        cf = self._write_config()
        work = self.workdir
        dev = work / "dev"
        dev.mkdir(exist_ok=True)
        for name in ("null", "zero", "random", "urandom"):
            (dev / name).touch()
        self.syslog = SyslogReceiver(dev / "log")
        binary = self.root / "usr" / "libexec" / "sendmail" / "sendmail"
        started = _run(self._namespaced(str(binary), "-C", str(cf), "-bd", "-X", str(work / "traffic.log")),
                       timeout=timeout)  # fmt: skip
        if started.returncode != 0:
            self.stop()
            raise SendmailUnavailable(f"sendmail -bd in a private namespace failed: {started.stderr.strip()}")
        deadline = time.monotonic() + timeout
        while not _is_listening(self.port):
            if time.monotonic() > deadline:
                log = self.syslog.text()
                self.stop()
                raise RuntimeError(f"sendmail does not listen on 127.0.0.1:{self.port}:\n{log}")
            time.sleep(0.05)
        self.pid = int((work / "sendmail.pid").read_text().split()[0])
        return self

    def stop(self, timeout: float = 15) -> None:
        """Stop our daemon (by the PID it wrote), then the log receiver; delete the work directory."""
        pid, self.pid = self.pid, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.syslog is not None:
            self.syslog.close()
            self.syslog = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def queue(self) -> list[str]:
        return sorted(p.name for p in (self.workdir / "queue").glob("qf*"))

    def _submit_cf(self) -> Path:
        """A submit.cf like Debian's MSP: everything relayed to this instance (FEATURE(msp)), run as nobody."""
        work = self.workdir
        cf = work / "submit.cf"
        if cf.exists():
            return cf
        queue = work / "clientmqueue"
        queue.mkdir(mode=0o770, exist_ok=True)
        os.chown(queue, *_nobody())
        mc = "\n".join(
            [
                "divert(0)dnl",
                "VERSIONID(`amzguard end-to-end test MSP')dnl",
                "define(`confCF_VERSION', `Submit')dnl",
                "define(`__OSTYPE__',`')dnl",
                f"define(`confDOMAIN_NAME', `{HOSTNAME}')dnl",
                "define(`confTIME_ZONE', `USE_TZ')dnl",
                "define(`confDONT_INIT_GROUPS', `True')dnl",
                "define(`confRUN_AS_USER', `nobody:nogroup')dnl",
                f"define(`MSP_QUEUE_DIR', `{queue}')dnl",
                f"define(`confPID_FILE', `{work}/submit.pid')dnl",
                f"define(`confSERVICE_SWITCH_FILE', `{work}/service.switch')dnl",
                "define(`confTO_IDENT', `0s')dnl",
                "FEATURE(`nocanonify')dnl",
                "define(`SMART_HOST', `relay:[127.0.0.1]')dnl",
                f"define(`RELAY_MAILER_ARGS', `TCP $h {self.port}')dnl",
                "FEATURE(`msp', `[127.0.0.1]')dnl",
                "",
            ]
        )
        return self._build_cf(mc, "submit")

    def submit(self, message: bytes, sender: str, timeout: float = 60) -> int:
        """``sendmail -t`` as PHP's mail() runs it: Sendmail's MSP reads the recipients from the headers,
        queues the message and delivers it at once (-odi) over SMTP to this instance; returns its exit
        status (0 accepted; 69 EX_UNAVAILABLE when the MTA refused it). The MSP logs to this syslog too."""
        binary = self.root / "usr" / "libexec" / "sendmail" / "sendmail"
        args = self._namespaced(str(binary), "-C", str(self._submit_cf()), "-odi", "-f", sender, "-t")
        return subprocess.run(args, input=message, capture_output=True, timeout=timeout).returncode

    def client_queue(self) -> list[str]:
        """What the MSP still holds (messages it could not hand over nor bounce)."""
        return sorted(p.name for p in (self.workdir / "clientmqueue").glob("qf*"))

    def run_client_queue(self, timeout: float = 60) -> int:
        """One run of the MSP's queue (``sendmail -Ac -q``, as Debian's sendmail-msp cron job does): what
        the MTA tempfailed earlier is offered again; returns the exit status."""
        binary = self.root / "usr" / "libexec" / "sendmail" / "sendmail"
        args = self._namespaced(str(binary), "-C", str(self._submit_cf()), "-q")
        return subprocess.run(args, capture_output=True, timeout=timeout).returncode


def smtp_exact(port: int, sender: str, rcpts: list[str], message: bytes, timeout: float = 30) -> SmtpResult:
    """One SMTP transaction whose RCPT commands carry exactly the given text after ``RCPT TO:``.

    smtplib's ``rcpt()`` rewrites an address through ``email.utils.parseaddr`` (``<"q7x@x">`` would
    become ``<q7x@x>``), which would test another spelling than the one named; ``docmd`` sends it as is.
    ``rcpt_replies`` is keyed by that exact text.
    """
    result = SmtpResult()
    client = smtplib.SMTP(timeout=timeout)
    try:
        result.connect_reply = _reply(*client.connect("127.0.0.1", port))
        result.ehlo_reply = _reply(*client.ehlo("client.test"))
        result.mail_reply = _reply(*client.docmd(f"MAIL FROM:<{sender}>"))
        for rcpt in rcpts:
            result.rcpt_replies[rcpt] = _reply(*client.docmd(f"RCPT TO:{rcpt}"))
        if result.accepted:
            try:
                result.data_reply = _reply(*client.data(message))
            except smtplib.SMTPDataError as exc:
                result.data_reply = _reply(exc.smtp_code, exc.smtp_error)
    except (OSError, smtplib.SMTPException) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            client.quit()
        client.close()
    return result


@dataclass
class SendmailStack:
    """A private Sendmail, the milter it calls, and the sink it relays everything to."""

    sendmail: SendmailInstance
    milter: MilterProcess
    sink: Sink

    def relayed(self, subject: str) -> list[SinkMessage]:
        return [m for m in self.sink.messages() if str(m.message.get("Subject")) == subject]

    def wait_relayed(self, subject: str, count: int = 1) -> list[SinkMessage]:
        return self.sink.wait_for(count, predicate=lambda m: str(m.message.get("Subject")) == subject)


@contextlib.contextmanager
def sendmail_stack(
    make_milter: Callable[[SendmailInstance], MilterProcess],
    mc_before: tuple[str, ...] = (),
    mc_after: tuple[str, ...] = (),
) -> Iterator[SendmailStack]:
    """Start sink, milter (``make_milter`` gets the instance, to put its socket and files in its work
    directory) and Sendmail; stop all three. Skips the test where Sendmail cannot be had."""
    try:
        sendmail_root()
    except SendmailUnavailable as exc:
        pytest.skip(f"no private Sendmail on this machine: {exc}")
    sink = Sink(Path("/tmp") / unique_token("amzguard-sendmail-sink")).start()
    sendmail: SendmailInstance | None = None
    milter: MilterProcess | None = None
    try:
        sendmail = SendmailInstance(sink.port, mc_before=mc_before, mc_after=mc_after)
        milter = make_milter(sendmail).start()
        sendmail.start()
        yield SendmailStack(sendmail=sendmail, milter=milter, sink=sink)
    finally:
        if milter is not None:
            milter.stop()
        if sendmail is not None:
            if milter is not None and milter.log.exists():  # kept beside the sink's log for a failed run
                shutil.copy(milter.log, sink.directory.parent / f"{sink.directory.name}-milter.log")
            sendmail.stop()
        sink.stop()
        shutil.rmtree(sink.directory, ignore_errors=True)
