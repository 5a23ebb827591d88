"""amzguard installed on a booted copy of this machine (tests/deb/booted.py), wired to a real Postfix on the
host: what the package test and the hand-install test share. ``install(copy)`` does the installing;
from there on both run the same checks against the command it installed."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.deb.booted import BootedCopy
from tests.e2e.conftest import REVIEW_SENDER
from tests.e2e.harness import PostfixInstance, _wait_until, make_workdir

CONFIG = "/etc/amzguard/amzguard.yml"
SECRET = "/etc/amzguard/review-token"
TRANSPORT_MAP = "/etc/postfix/amzguard-transport.regexp"


@dataclass
class Installed:
    copy: BootedCopy
    postfix: PostfixInstance
    command: str  # /usr/bin/amzguard (package) or /usr/local/bin/amzguard (venv)
    state: Path  # the host directory bound as /var/lib/amzguard
    secret: str  # the review secret the install made

    def journal(self) -> str:
        return self.copy.run(["journalctl", "--unit=amzguard", "--output=cat", "--no-pager"]).stdout

    def wait_journal(self, needle: str, timeout: float = 20) -> None:
        if not _wait_until(lambda: needle in self.journal(), timeout):
            raise AssertionError(f"{needle!r} not in the journal of amzguard.service:\n{self.journal()}")

    def as_amzguard(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The installed command as the service's user, as an admin runs `amzguard optout ...`."""
        return self.copy.run(["runuser", "-u", "amzguard", "--", self.command, *args], check=False)

    def main_pid(self) -> str:
        return self.copy.run(["systemctl", "show", "--property=MainPID", "--value", "amzguard"]).stdout.strip()


@contextlib.contextmanager
def installed_amzguard(name: str, command: str, install: Callable[[BootedCopy], None],
                       binds: dict[str, Path] | None = None, private_network: bool = True) -> Iterator[Installed]:  # fmt: skip
    """Boot a copy (``binds``, ``private_network``: see BootedCopy), ``install`` amzguard there (the service must end up started with the shipped config),
    adjust the installed config for the test, reload through the unit and start a Postfix on the host that
    uses the service's socket and the installed transport map."""
    workdir = make_workdir(f"amzguard-{name}-")
    spool, state = workdir / "spool", workdir / "state"
    spool.mkdir()
    state.mkdir()
    copy = BootedCopy(workdir, binds={"/var/spool/postfix/amzguard": spool, "/var/lib/amzguard": state, **(binds or {})},
                      private_network=private_network)  # fmt: skip
    postfix: PostfixInstance | None = None
    try:
        copy.start()
        # This machine's image forbids starting services from maintainer scripts (policy-rc.d exits 101, as
        # in container images); a Debian server has no such file, so the copy has none either.
        copy.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
        install(copy)
        if not _wait_until(lambda: copy.run(["systemctl", "is-active", "amzguard"], check=False).stdout.strip()
                           == "active", 60):  # fmt: skip
            raise AssertionError(copy.run(["systemctl", "status", "amzguard"], check=False).stdout)
        secret = copy.path(SECRET).read_text().strip()
        # The installed config, adjusted for the test: the review channel on with the install's secret (the
        # shipped token_file), only the shop's review mailer may use a channel, full addresses in the log.
        # Socket and store stay as shipped: /var/spool/postfix/amzguard and /var/lib/amzguard are the host
        # directories bound above.
        config = yaml.safe_load(copy.path(CONFIG).read_text())
        only_review_sender = {"allowed_senders": [REVIEW_SENDER]}
        config["channels"]["review"].update(enabled=True, **only_review_sender)
        config["channels"]["reply"].update(only_review_sender)
        config["channels"]["critical"].update(only_review_sender)
        config["logging"]["log_addresses"] = "full"
        copy.run(["tee", CONFIG], input=yaml.safe_dump(config))  # tee keeps the file's owner and mode
        # Through the unit's ExecReload (check-config as the service runs it, then SIGUSR1).
        copy.run(["systemctl", "reload", "amzguard"])
        transport_map = workdir / "amzguard-transport.regexp"
        transport_map.write_bytes(copy.path(TRANSPORT_MAP).read_bytes())
        (workdir / "postfix").mkdir(mode=0o755)
        postfix = PostfixInstance(workdir / "postfix", milter=f"unix:{spool}/amzguard.sock",
                                  transport_maps=f"regexp:{transport_map}").start()  # fmt: skip
        env = Installed(copy=copy, postfix=postfix, command=command, state=state, secret=secret)
        env.wait_journal("review channel on")
        yield env
    finally:
        try:
            if postfix is not None:
                postfix.stop()
        finally:
            copy.stop()
            shutil.rmtree(workdir, ignore_errors=True)
