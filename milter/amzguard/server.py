"""Running the milter: socket, libmilter registration, main loop.

pymilter's ``runmilter`` opens the socket and enters the loop in one call; amzguard registers the callbacks
itself so it can set the socket's permissions and say "listening" (later: tell systemd it is ready) only
once the socket really accepts connections.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import stat
from collections.abc import Iterable
from pathlib import Path

import Milter
import milter as libmilter  # pymilter's C extension

from .adapter import MILTER_ACTIONS, AmzguardMilter, Runtime
from .config import Config

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


def serve(config: Config, socket_spec: str | None = None, name: str = "amzguard") -> None:
    """Run until libmilter is told to stop (SIGTERM, SIGINT or SIGHUP)."""
    spec = socket_spec or config.milter.socket
    runtime = Runtime(config, data_without_reply=unix_socket_path(spec) is not None)
    _prepare_socket_directory(spec)
    # pymilter creates each connection's object through this module attribute; the runtime travels
    # inside the factory, so amzguard itself keeps no global state.
    Milter.factory = functools.partial(AmzguardMilter, runtime)
    _register(name, spec, config.milter.timeout)
    previous_umask = os.umask(0o777 & ~config.milter.socket_mode)
    try:
        libmilter.opensocket(True)
    except libmilter.error as exc:
        raise ServeError(f"cannot listen on {spec}: {exc}") from None
    finally:
        os.umask(previous_umask)
    port = inet_port(spec)
    if port is not None and not disable_nagle(port):
        log.warning("could not set TCP_NODELAY on %s: messages amzguard changes may be delayed ~40 ms", spec)
    log.info(
        "listening on %s (mode=%s, review channel %s)",
        spec,
        config.policy.mode.value,
        "on" if config.policy.review.enabled else "off",
    )
    libmilter.main()
    log.info("stopped")
