"""Running as a service: readiness for systemd, reload on SIGUSR1, draining on stop, the metrics endpoint.

Signals, and why they are handled this way: libmilter blocks SIGHUP, SIGTERM and SIGINT in the thread
that calls its main loop and takes them with ``sigwait`` on a thread of its own; on any of them it stops
at once, and Debian's libmilter (built with a worker pool) then stops serving the connections still open,
so messages in progress would be cut off. So amzguard runs libmilter's main loop on a second thread and
keeps the process's main thread free: the kernel hands a process-directed signal to the main thread
first when it does not block it, so SIGTERM, SIGINT, SIGHUP and SIGUSR1 reach amzguard, not libmilter.
A handler only writes the signal number to a socket (``signal.set_wakeup_fd``), and the main thread's
loop acts on it: reload, or drain the messages in progress and then stop libmilter.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .adapter import Runtime
from .config import Config, ConfigError, MetricsSettings, load_config
from .metrics import Metrics, MetricsEndpoint, ReloadResult, StoreOperation
from .store import StoreError
from .store.base import PURGE_INTERVAL

log = logging.getLogger("amzguard")

RELOAD_SIGNAL = signal.SIGUSR1
DRAIN_TIMEOUT = 25.0
"""Seconds a stop waits for messages in progress; the unit's TimeoutStopSec leaves room above it."""


class Purger:
    """Forgets review requests and buyer messages past ``store.retention_days``: at start, then hourly, on a
    thread of its own, so no message ever waits for a purge (the PostgreSQL backend also takes an advisory
    lock, so of several hosts sharing a database one purges at a time). A failure is logged and counted
    (``amzguard_store_errors_total{operation="purge"}``) and changes nothing for any message; the next
    round tries again."""

    def __init__(self, runtime: Runtime, interval: float = PURGE_INTERVAL) -> None:
        self.runtime = runtime
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amzguard-purge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.purge_once()
            self._stop.wait(self.interval)

    def purge_once(self) -> int:
        snapshot = self.runtime.snapshot
        if not snapshot.uses_store():
            return 0
        store, metrics = snapshot.store, self.runtime.metrics
        try:
            with metrics.store_call(StoreOperation.PURGE, store.backend):
                forgotten = store.purge()
        except StoreError as exc:
            metrics.store_error(StoreOperation.PURGE, store.backend)
            log.error("store purge failed: %s; no message is affected (tried again in %d s)", exc, self.interval)
            return 0
        finally:
            store.close()  # this thread's SQLite connection; PostgreSQL's goes back to its pool anyway
        if forgotten:
            log.info("store purge: forgot %d records older than store.retention_days=%d", forgotten,
                     snapshot.config.store.retention_days)  # fmt: skip
        return forgotten


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send an sd_notify(3) message (``READY=1``, ``STATUS=...``) to systemd; False if not under systemd.

    The protocol is one datagram to the unix socket named in ``$NOTIFY_SOCKET`` (``@`` = abstract
    namespace); the stdlib does it, no dependency needed. Failing to notify is logged, never fatal.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying systemd", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("cannot notify systemd via %s: %s", address.replace("\0", "@"), exc.strerror or exc)
        return False
    return True


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Settings a reload cannot apply to the running process (the socket is open, the port bound)."""
    changed = []
    for key in ("socket", "socket_mode", "timeout"):
        if getattr(old.milter, key) != getattr(new.milter, key):
            changed.append(f"milter.{key}")
    if old.metrics != new.metrics:
        changed.append("metrics")
    if (old.logging.target, old.logging.syslog_socket, old.logging.journal_socket) != (
        new.logging.target, new.logging.syslog_socket, new.logging.journal_socket
    ):
        changed.append("logging.target")
    return changed


def reload_config(runtime: Runtime, path: Path) -> bool:
    """Load ``path`` and make it the configuration of new connections; a broken file changes nothing.

    Connections already open keep the snapshot they started with, so no message is judged half by the
    old and half by the new rules.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        log.error("reload failed, keeping the running configuration: %s", exc)
        runtime.metrics.reload(ReloadResult.FAILURE)
        return False
    except Exception:
        log.exception("reload failed, keeping the running configuration")
        runtime.metrics.reload(ReloadResult.FAILURE)
        return False
    for key in restart_only_changes(runtime.snapshot.config, config):
        log.warning("reload: %s changed; that takes effect only after a restart", key)
    runtime.swap(config)
    logging.getLogger().setLevel(config.log_level.upper())
    runtime.metrics.reload(ReloadResult.SUCCESS, config.policy.mode)
    log.info("configuration reloaded from %s (%s)", path, summary(config))
    notify(f"STATUS=reloaded; {summary(config)}")
    return True


def summary(config: Config) -> str:
    review = "on" if config.policy.review.enabled else "off"
    return f"mode={config.policy.mode.value}, review channel {review}, log_addresses={config.log_addresses.style.value}"


class ServiceSignals:
    """SIGTERM/SIGINT/SIGHUP (stop) and SIGUSR1 (reload), delivered to the main thread's loop."""

    HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, RELOAD_SIGNAL)
    STOP = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

    def __init__(self) -> None:
        """Install in the main thread, before any other thread exists."""
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous_wakeup = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in self.HANDLED:
            signal.signal(signum, _wake_only)

    @contextmanager
    def blocked(self) -> Iterator[None]:
        """Threads started in here inherit a mask without our signals, so only the main thread gets them."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, self.HANDLED)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def wait(self, timeout: float) -> int | None:
        """The next signal number, or None after ``timeout`` seconds without one."""
        ready, _, _ = select.select([self._reader], [], [], timeout)
        if not ready:
            return None
        data = self._reader.recv(1)
        return data[0] if data else None

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum in self.HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        self._reader.close()
        self._writer.close()


def _wake_only(signum: int, frame: object) -> None:
    """The C-level handler already wrote ``signum`` to the wakeup socket; the loop acts on it."""


def start_metrics(metrics: Metrics, settings: MetricsSettings) -> MetricsEndpoint | None:
    if not settings.enabled:
        log.info("metrics endpoint off (metrics.enabled: false)")
        return None
    try:
        endpoint = metrics.serve(settings.host, settings.port)
    except OSError as exc:
        # Mail flow matters more than its statistics: filter on without the endpoint. Prometheus sees the
        # target down (the AmzguardDown alert), and this line says why.
        log.error("metrics endpoint off: cannot serve metrics on %s:%d: %s; filtering mail without it",
                  settings.host, settings.port, exc.strerror or exc)  # fmt: skip
        return None
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    log.info("metrics on http://%s:%d/metrics", host, endpoint.port)
    return endpoint


def drain(runtime: Runtime, timeout: float = DRAIN_TIMEOUT) -> None:
    """After libmilter stopped accepting: let the messages in progress finish, at most ``timeout``."""
    waiting = runtime.messages_in_progress()
    if waiting:
        log.info("stopping: waiting up to %.0f s for %d message(s) in progress", timeout, waiting)
    left = runtime.wait_idle(timeout)
    if left:
        log.warning("stopping with %d message(s) unfinished; the MTA applies its milter_default_action", left)
