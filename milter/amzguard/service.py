"""Running as a service: readiness for systemd, reload on SIGUSR1, draining on stop, the metrics endpoint.

libmilter owns SIGHUP, SIGTERM and SIGINT (each one stops it) and runs its own threads, while Python only
runs signal handlers on the main thread, which sits inside libmilter's C main loop. So the reload signal
is SIGUSR1, blocked in every thread before any thread exists, and taken by a watcher thread with
``sigwait``: it arrives whatever the main thread is doing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from .adapter import Runtime
from .config import Config, ConfigError, MetricsSettings, load_config
from .metrics import Metrics, MetricsEndpoint, ReloadResult

log = logging.getLogger("amzguard")

RELOAD_SIGNAL = signal.SIGUSR1
LIBMILTER_STOP_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
DRAIN_TIMEOUT = 25.0
"""Seconds a stop waits for messages in progress; the unit's TimeoutStopSec leaves room above it."""


class ServiceError(Exception):
    """A service facility (the metrics endpoint) could not start."""


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


class ReloadSignal:
    """SIGUSR1 -> ``on_reload`` on a watcher thread (see the module docstring for why not a handler)."""

    def __init__(self, on_reload: Callable[[], object]) -> None:
        self.on_reload = on_reload
        self.thread: threading.Thread | None = None

    def block(self) -> None:
        """Block SIGUSR1 and libmilter's stop signals in this thread and so in every thread created after;
        call before any exists.

        libmilter blocks its stop signals only when its main loop starts; a thread started earlier (the
        metrics endpoint) would otherwise receive SIGTERM and die of its default action, taking the
        process down without a drain. Blocked, they wait for libmilter's own ``sigwait``.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, {RELOAD_SIGNAL, *LIBMILTER_STOP_SIGNALS})

    def start(self) -> None:
        self.thread = threading.Thread(target=self._watch, name="amzguard-reload", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while True:
            signal.sigwait({RELOAD_SIGNAL})
            log.info("SIGUSR1: reloading the configuration")
            try:
                self.on_reload()
            except Exception:  # the watcher must survive whatever a reload does
                log.exception("reload failed")


def start_metrics(metrics: Metrics, settings: MetricsSettings) -> MetricsEndpoint | None:
    if not settings.enabled:
        log.info("metrics endpoint off (metrics.enabled: false)")
        return None
    try:
        endpoint = metrics.serve(settings.host, settings.port)
    except OSError as exc:
        raise ServiceError(f"cannot serve metrics on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
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
