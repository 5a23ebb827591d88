"""A throwaway PostgreSQL cluster for the tests: Debian's postgresql (15), started with initdb and pg_ctl as
an unprivileged user (``postgres`` when the tests run as root), on a private socket directory and a free
loopback port. Local (unix socket) connections are trusted; TCP needs the password of the ``amzguard``
role, so ``store.password_file`` and libpq's own password handling are exercised for real.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BIN = Path(os.environ.get("AMZGUARD_PG_BIN", "/usr/lib/postgresql/15/bin"))
ROLE = "amzguard"
PASSWORD = "made-up-test-password-4711"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="amzguard-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self._databases = 0

    def _as_user(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresCluster:
        self.root.chmod(0o755)  # the milters (root) and postgres both reach the socket directory
        self.sockets.mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            os.chown(self.sockets, entry.pw_uid, entry.pw_gid)
        self._as_user(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.sockets}'\nfsync = off\nsynchronous_commit = off\n"
                       "full_page_writes = off\nmax_connections = 60\nshared_buffers = 32MB\n")  # fmt: skip
        self.pg_ctl("start")
        self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        return self

    def pg_ctl(self, action: str, *extra: str) -> None:
        argv = [str(BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l", str(self.root / "log"), action]
        self._as_user(*argv, *([] if action == "stop" else []), *extra)

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode)

    def running(self) -> bool:
        return self._as_user(str(BIN / "pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        done = self._as_user(str(BIN.parent / "bin" / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                             "-h", str(self.sockets), "-p", str(self.port), "-U", "postgres", "-d", dbname,
                             "-c", sql)  # fmt: skip
        return done.stdout.strip()

    def new_database(self, prefix: str = "t") -> str:
        """A fresh empty database owned by the amzguard role; its name."""
        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def socket_url(self, dbname: str) -> str:
        """Over the unix socket (trusted): a libpq keyword string."""
        return f"host={self.sockets} port={self.port} dbname={dbname} user={ROLE}"

    def tcp_url(self, dbname: str, password: bool = False) -> str:
        """Over loopback TCP (password required); with the password in the URI if asked."""
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{ROLE}{secret}@127.0.0.1:{self.port}/{dbname}"

    def destroy(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def wait_until(condition: object, timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False
