"""A throwaway Dovecot that only authenticates, for Postfix's ``smtpd_sasl_type = dovecot``.

Debian's ``dovecot-core`` (in the Makefile's TEST_PACKAGES) provides ``/usr/sbin/dovecot``; the test runs
its own master in the foreground (``-F``) with its own config, ``base_dir``, ``state_dir`` and log under a
throwaway directory, a passwd-file of made-up users, no protocols (nothing listens on a TCP port), and
one unix socket for Postfix. No system service is used or touched. Installing the package runs Debian's
``invoke-rc.d dovecot start``: where a policy-rc.d forbids it (containers, this CI) nothing starts; on an
ordinary host a system Dovecot with /etc/dovecot starts, which with dovecot-core alone serves no protocol
and uses /run/dovecot, not our directory, so it neither disturbs nor is disturbed by this one. It is
stopped by the PID this module started (SIGTERM: the master stops its auth and log children).
"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

DOVECOT = "/usr/sbin/dovecot"


class DovecotSasl:
    """``users``: login -> password (made up). ``socket`` is what Postfix's ``smtpd_sasl_path`` names."""

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        self.dir = Path(workdir).absolute() / "dovecot"
        self.users = users
        self.socket = self.dir / "auth-client"
        self.log = self.dir / "dovecot.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        d = self.dir
        return f"""# amzguard e2e: authentication only (made-up users), nothing else
base_dir = {d}/run
state_dir = {d}/state
log_path = {self.log}
protocols = none
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
service auth {{
  unix_listener {self.socket} {{
    mode = 0666
  }}
}}
"""

    def start(self, timeout: float = 15.0) -> DovecotSasl:
        self.dir.mkdir(mode=0o755, parents=True)
        for user in self.users:
            if ":" in user or "\n" in user:
                raise ValueError(f"not a passwd-file user name: {user!r}")
        (self.dir / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.users.items()))
        # Dovecot's auth process runs as its internal user (dovecot), which must read the file.
        os.chown(self.dir / "passwd", 0, grp.getgrnam("dovecot").gr_gid)
        (self.dir / "passwd").chmod(0o640)
        (self.dir / "dovecot.conf").write_text(self._config())
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.socket.is_socket():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"dovecot did not come up: {err} {self.log_text()}")
            time.sleep(0.05)
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def postfix_settings(self) -> dict[str, str]:
        """main.cf settings for smtpd to authenticate against this Dovecot (plaintext AUTH: loopback only)."""
        return {
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": str(self.socket),
            "smtpd_tls_auth_only": "no",
            "smtpd_sasl_security_options": "noanonymous",
        }
