"""Running the milter: socket, libmilter registration, main loop.

pymilter's ``runmilter`` opens the socket and enters the loop in one call; amzguard registers the callbacks
itself so it can set the socket's permissions and say "listening" and tell systemd it is ready only
once the socket really accepts connections. Reload, drain and metrics live in service.py.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import Milter
import milter as libmilter  # pymilter's C extension

from .adapter import MILTER_ACTIONS, AmzguardMilter, Runtime
from .config import Config
from .metrics import Metrics
from .service import Purger, ServiceSignals, drain, notify, reload_config, start_metrics, summary
from .store import StoreError

log = logging.getLogger("amzguard")


class ServeError(Exception):
    """The milter could not start (socket path, permissions, address in use)."""


def unix_socket_path(spec: str) -> Path | None:
    for prefix in ("unix:", "local:"):
        if spec.startswith(prefix):
            return Path(spec[len(prefix) :])
    return None


def _prepare_socket_directory(spec: str) -> None:
    path = unix_socket_path(spec)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServeError(f"cannot create socket directory {path.parent}: {exc.strerror}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ServeError(f"socket directory {path.parent} is not writable for this user")


def inet_port(spec: str) -> int | None:
    """The port of an ``inet:PORT@HOST`` or ``inet6:PORT@HOST`` spec; None for other sockets."""
    for prefix in ("inet:", "inet6:"):
        if spec.startswith(prefix):
            port = spec[len(prefix) :].split("@", 1)[0]
            return int(port) if port.isdigit() else None
    return None


def _open_descriptors() -> Iterable[int]:
    try:
        return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    except OSError:
        return range(1024)


def disable_nagle(port: int) -> bool:
    """Set TCP_NODELAY on libmilter's listening socket; accepted connections inherit it.

    Why: at end of message libmilter writes each change (delete recipient, add recipient, change header)
    as a packet of its own and Postfix answers none of them, so with Nagle on, every packet after the
    first waits for Postfix's delayed ACK (~40 ms each). libmilter does not hand out its socket, so it is
    found among the process's descriptors: the listening TCP socket bound to our port.
    """
    for fd in _open_descriptors():
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            listener = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with listener:
            try:
                if (
                    listener.family in (socket.AF_INET, socket.AF_INET6)
                    and listener.type == socket.SOCK_STREAM
                    and listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and listener.getsockname()[1] == port
                ):
                    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return True
            except OSError:
                continue
    return False


def _register(name: str, spec: str, timeout: int) -> None:
    libmilter.set_flags(MILTER_ACTIONS)
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    libmilter.setconn(spec)
    libmilter.settimeout(timeout)
    libmilter.register(
        name,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


def serve(
    config: Config, socket_spec: str | None = None, name: str = "amzguard", config_path: Path | None = None
) -> None:
    """Run until SIGTERM, SIGINT or SIGHUP (finishing the messages in progress); SIGUSR1 reloads ``config_path``."""
    spec = socket_spec or config.milter.socket
    try:
        runtime = Runtime(config, Metrics(), data_without_reply=unix_socket_path(spec) is not None)
    except StoreError as exc:  # a schema newer than this amzguard knows; a store.url psycopg cannot use
        raise ServeError(f"refusing to start: {exc}") from None
    runtime.metrics.watch_register(lambda: runtime.snapshot.store if runtime.snapshot.uses_store() else None,
                                   lambda: runtime.snapshot.policy.settings.limits)
    _prepare_socket_directory(spec)
    signals = ServiceSignals()
    purger = Purger(runtime)
    purger.start()
    try:
        _serve(runtime, signals, spec, name, config_path)
    finally:
        purger.stop()
        signals.close()
        runtime.snapshot.store.shutdown()


def _serve(runtime: Runtime, signals: ServiceSignals, spec: str, name: str, config_path: Path | None) -> None:
    config = runtime.snapshot.config
    with signals.blocked():
        endpoint = start_metrics(runtime.metrics, config.metrics)  # None when off or its address is taken
    # pymilter creates each connection's object through this module attribute; the runtime travels
    # inside the factory, so amzguard itself keeps no global state.
    Milter.factory = functools.partial(AmzguardMilter, runtime)
    _register(name, spec, config.milter.timeout)
    previous_umask = os.umask(0o777 & ~config.milter.socket_mode)
    try:
        libmilter.opensocket(True)
    except libmilter.error as exc:
        if endpoint is not None:
            endpoint.close()
        raise ServeError(f"cannot listen on {spec}: {exc}") from None
    finally:
        os.umask(previous_umask)
    port = inet_port(spec)
    if port is not None and not disable_nagle(port):
        log.warning("could not set TCP_NODELAY on %s: messages amzguard changes may be delayed ~40 ms", spec)
    log.info("listening on %s (%s)", spec, summary(config))
    failure: list[BaseException] = []
    with signals.blocked():
        loop = threading.Thread(target=_main_loop, args=(failure,), name="libmilter", daemon=True)
        loop.start()
    notify(f"READY=1\nSTATUS=listening on {spec}; {summary(config)}\nMAINPID={os.getpid()}")
    while loop.is_alive():
        signum = signals.wait(timeout=1.0)
        if signum == signal.SIGUSR1:
            log.info("SIGUSR1: reloading the configuration")
            if config_path is not None:
                reload_config(runtime, config_path)
        elif signum in ServiceSignals.STOP:
            log.info("%s: stopping", signal.Signals(signum).name)
            notify("STOPPING=1")
            drain(runtime)
            _stop_libmilter(spec)
            break
    loop.join(STOP_JOIN_SECONDS)
    if endpoint is not None:
        endpoint.close()
    if failure:
        raise ServeError(f"libmilter main loop failed: {failure[0]}")
    log.info("stopped")


STOP_JOIN_SECONDS = 10.0
"""How long to wait for libmilter's main loop to return after the stop; the process exits anyway."""


def _stop_libmilter(spec: str) -> None:
    """smfi_stop(), without waiting out libmilter's 5 s listener poll.

    smfi_stop() needs the listener's lock, which the listener holds while it polls the socket. A
    connection to our own socket ends the poll; once the stop flag is set the listener leaves its loop.
    """
    stopper = threading.Thread(target=libmilter.stop, name="libmilter-stop", daemon=True)
    stopper.start()
    deadline = time.monotonic() + STOP_JOIN_SECONDS
    while stopper.is_alive() and time.monotonic() < deadline:
        _poke(spec)
        stopper.join(0.05)


def _poke(spec: str) -> None:
    path = unix_socket_path(spec)
    try:
        if path is not None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(path))
        else:
            port, _, host = spec.split(":", 1)[1].partition("@")
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=0.5).close()
    except (OSError, ValueError):
        pass  # the listener is gone already, or the spec has no connectable form: the stop goes on


def _main_loop(failure: list[BaseException]) -> None:
    """libmilter's main loop, on a thread of its own (see service.py for why not the main thread)."""
    try:
        libmilter.main()
    except libmilter.error as exc:
        failure.append(exc)
