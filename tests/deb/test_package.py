"""The Debian package, built by `make deb`, installed with `dpkg -i` on a booted copy of this machine and run by
a real systemd with the unit's real sandbox, filtering a real Postfix (on the host) through its socket.

What this proves that the other tests cannot: the package installs on Debian 12 with Debian's own
python3-milter, python3-yaml and python3-prometheus-client (no venv, no compiler); its maintainer scripts make
the user, the directories and the review secret and start the service; the unit as shipped (ProtectSystem=
strict, PrivateUsers, StateDirectory, ...) lets the milter create its socket and write its store; purge
removes what it made. All addresses are made up.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from amzguard import __version__
from amzguard.config import DEFAULT_REASON_TEXTS
from amzguard.policy import Reason
from tests.deb.booted import BootedCopy
from tests.e2e.conftest import REVIEW_SENDER, SHOP_SENDER
from tests.e2e.harness import PostfixInstance, _wait_until, make_message, make_workdir, unique_token

REPO = Path(__file__).resolve().parents[2]
DEB = REPO / "build" / f"amzguard_{__version__}_all.deb"
CONFIG = "/etc/amzguard/amzguard.yml"
SECRET = "/etc/amzguard/review-token"
RELAY_BUYER = "d4d4d4d4d4d4d4d4@marketplace.amazon.de"
MARKED_BUYER = "blacklisted-60606@amazon.fr"
OPTED_OUT = "e5e5e5e5e5e5e5e5@marketplace.amazon.co.uk"
OWNER = "owner@shop.test"
BUYER_TEXT = "Amazon forbids e-mail about orders or shipping to buyers"  # refusal.reply_text, as shipped
# The lintian tags that may remain, each explained in debian/ (see debian/rules and the overrides file).
EXPECTED_LINTIAN = {"no-manual-page"} if not (REPO / "man" / "amzguard.8").exists() else set()


@dataclass
class Installed:
    copy: BootedCopy
    postfix: PostfixInstance
    state: Path  # the host directory bound as /var/lib/amzguard
    secret: str  # the review secret postinst generated

    def sh(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.copy.run(["sh", "-c", command], check=check)

    def journal(self) -> str:
        return self.copy.run(["journalctl", "--unit=amzguard", "--output=cat", "--no-pager"]).stdout

    def wait_journal(self, needle: str, timeout: float = 20) -> None:
        if not _wait_until(lambda: needle in self.journal(), timeout):
            raise AssertionError(f"{needle!r} not in the journal of amzguard.service:\n{self.journal()}")

    def as_amzguard(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.copy.run(["runuser", "-u", "amzguard", "--", "/usr/bin/amzguard", *args], check=False)


def build_package() -> Path:
    done = subprocess.run(["make", "-C", str(REPO), "deb"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert DEB.exists(), done.stdout
    return DEB


@pytest.fixture(scope="module")
def deb() -> Path:
    return build_package()


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Installed]:
    workdir = make_workdir("amzguard-deb-")
    spool, state, debs = workdir / "spool", workdir / "state", workdir / "debs"
    for directory in (spool, state, debs):
        directory.mkdir()
    (debs / deb.name).write_bytes(deb.read_bytes())
    copy = BootedCopy(workdir, binds={"/var/spool/postfix/amzguard": spool, "/var/lib/amzguard": state},
                      ro_binds={"/mnt/debs": debs}).start()  # fmt: skip
    postfix: PostfixInstance | None = None
    try:
        # This machine's image forbids starting services from maintainer scripts (policy-rc.d exits 101, as
        # in container images); a Debian server has no such file, so the copy does not either.
        copy.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
        done = copy.run(["dpkg", "-i", f"/mnt/debs/{deb.name}"], check=False, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        secret = copy.path(SECRET).read_text().strip()
        # The installed config, adjusted for the test: the review channel on with the generated secret (its
        # shipped token_file), only the shop's review mailer may use a channel, full addresses in the log.
        # Socket and store stay as shipped: /var/spool/postfix/amzguard and /var/lib/amzguard are the host
        # directories bound above.
        config = yaml.safe_load(copy.path(CONFIG).read_text())
        only_review_sender = {"allowed_senders": [REVIEW_SENDER]}
        config["channels"]["review"].update(enabled=True, **only_review_sender)
        config["channels"]["reply"].update(only_review_sender)
        config["channels"]["critical"].update(only_review_sender)
        config["logging"]["log_addresses"] = "full"
        copy.run(["tee", CONFIG], input=yaml.safe_dump(config))
        # Through the unit's ExecReload (check-config as the service runs it, then SIGUSR1).
        copy.run(["systemctl", "reload", "amzguard"])
        transport_map = workdir / "amzguard-transport.regexp"
        transport_map.write_bytes(copy.path("/etc/postfix/amzguard-transport.regexp").read_bytes())
        (workdir / "postfix").mkdir(mode=0o755)
        postfix = PostfixInstance(workdir / "postfix", milter=f"unix:{spool}/amzguard.sock",
                                  transport_maps=f"regexp:{transport_map}").start()  # fmt: skip
        env = Installed(copy=copy, postfix=postfix, state=state, secret=secret)
        env.wait_journal("review channel on")
        yield env
    finally:
        try:
            if postfix is not None:
                postfix.stop()
        finally:
            copy.stop()
            subprocess.run(["rm", "-rf", str(workdir)], check=False)


def subject_of(message) -> str:
    return str(message.get("Subject", ""))


def review(to: str, subject: str, secret: str) -> bytes:
    return make_message(REVIEW_SENDER, to, subject, extra_headers=[("X-Amzguard-Channel", f"review {secret}")])


# -- the package itself ------------------------------------------------------------------------------


def test_lintian_reports_only_the_explained_tags(deb: Path) -> None:
    done = subprocess.run(["lintian", "--pedantic", "--info", str(deb)], capture_output=True, text=True, timeout=300)
    tags = {m.group(1) for m in re.finditer(r"^[EWIPX]: amzguard(?: source)?: (\S+)", done.stdout, re.M)}
    assert tags == EXPECTED_LINTIAN, done.stdout + done.stderr


def test_changelog_version_is_the_package_version() -> None:
    """make deb names the file after debian/changelog; this test finds it by amzguard.__version__."""
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"amzguard ({__version__}) "), first


def test_files_users_and_service_after_install(installed: Installed) -> None:
    copy = installed.copy
    assert copy.path("/lib/systemd/system/amzguard.service").read_text() == (REPO / "systemd" / "amzguard.service").read_text()
    assert copy.run(["stat", "-c", "%U:%G %a", "/etc/amzguard", CONFIG, SECRET]).stdout.split("\n")[:3] == [
        "root:amzguard 750", "root:amzguard 640", "root:amzguard 640"]  # fmt: skip
    assert re.fullmatch(r"[A-Za-z0-9+/=]{32}", installed.secret)
    assert copy.run(["stat", "-c", "%U:%G %a", "/var/lib/amzguard"]).stdout.strip() == "amzguard:amzguard 750"
    assert copy.run(["stat", "-c", "%U:%G %a", "/var/spool/postfix/amzguard"]).stdout.strip() == "amzguard:postfix 2750"
    assert copy.run(["id", "-nG", "amzguard"]).stdout.split() == ["amzguard"]  # a group of its own, no other
    conffiles = copy.run(["dpkg-query", "--showformat=${Conffiles}", "--show", "amzguard"]).stdout
    assert CONFIG in conffiles and "/etc/postfix/amzguard-transport.regexp" in conffiles
    examples = copy.run(["ls", "/usr/share/doc/amzguard/examples"]).stdout.split()
    assert {"amzguard-transport.regexp", "amzguard.mc", "amzguard-rules.yml", "amzguard-dashboard.json"} <= set(examples)
    # Started by postinst (enabled, as opendkim), as the unprivileged user, by Debian's Python.
    assert copy.run(["systemctl", "is-enabled", "amzguard"]).stdout.strip() == "enabled"
    assert copy.run(["systemctl", "is-active", "amzguard"]).stdout.strip() == "active"
    main_pid = copy.run(["systemctl", "show", "--property=MainPID", "--value", "amzguard"]).stdout.strip()
    assert copy.run(["ps", "-o", "user=,args=", "-p", main_pid]).stdout.split()[:3] == [
        "amzguard", "/usr/bin/python3", "/usr/bin/amzguard"]  # fmt: skip
    assert installed.as_amzguard("check-config", "-c", CONFIG).returncode == 0


def test_the_service_runs_in_the_units_sandbox(installed: Installed) -> None:
    """What the running process sees, read from its own mount table: / read-only, the store and socket
    directories writable, /tmp private, /home and /root hidden."""
    copy = installed.copy
    main_pid = copy.run(["systemctl", "show", "--property=MainPID", "--value", "amzguard"]).stdout.strip()
    mounts: dict[str, str] = {}
    for line in copy.run(["cat", f"/proc/{main_pid}/mountinfo"]).stdout.splitlines():
        fields = line.split()
        mounts[fields[4]] = fields[5]  # mount point -> per-mount options (last one wins, like the kernel)
    assert mounts["/"].startswith("ro"), mounts
    assert mounts["/var/lib/amzguard"].startswith("rw"), mounts
    assert mounts["/var/spool/postfix/amzguard"].startswith("rw"), mounts
    assert mounts["/run/amzguard"].startswith("rw"), mounts
    assert "/tmp" in mounts and "/home" in mounts and "/root" in mounts, mounts


# -- enforcement through the installed /usr/bin/amzguard ---------------------------------------------


def test_buyer_refused_on_smtp(installed: Installed) -> None:
    subject = unique_token("deb-smtp")
    result = installed.postfix.smtp(SHOP_SENDER, [RELAY_BUYER], make_message(SHOP_SENDER, RELAY_BUYER, subject))
    code, text = result.rcpt_replies[RELAY_BUYER]
    assert code == 550 and text.startswith(f"5.7.1 <{RELAY_BUYER}>: {BUYER_TEXT}")
    installed.wait_journal(f"rcpt=<{RELAY_BUYER}> path=smtp stage=rcpt channel=none decision=refuse reason=buyer-mail")


def test_buyer_refused_on_sendmail(installed: Installed) -> None:
    subject = unique_token("deb-local")
    offset = installed.postfix.log_offset()
    done = installed.postfix.sendmail(SHOP_SENDER, [MARKED_BUYER], make_message(SHOP_SENDER, MARKED_BUYER, subject))
    assert done.returncode == 0, done.stderr
    installed.postfix.wait_log(r"milter-reject: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: 5\.7\.1 "
                               r"<blacklisted-60606@amazon\.fr>", after=offset)  # fmt: skip
    installed.wait_journal(f"rcpt=<{MARKED_BUYER}> path=sendmail stage=eom channel=none decision=refuse")
    installed.postfix.wait_queue_empty(timeout=30)


def test_allowed_mail_delivered(installed: Installed) -> None:
    subject = unique_token("deb-allowed")
    assert installed.postfix.smtp(SHOP_SENDER, [OWNER], make_message(SHOP_SENDER, OWNER, subject)).queued
    installed.postfix.wait_mailbox("owner", predicate=lambda m: subject_of(m) == subject)


def test_tagged_review_request_delivered_and_recorded_in_the_store(installed: Installed) -> None:
    order = "302-6000001-7000001"
    subject = f"{unique_token('deb-review')} order {order}"
    result = installed.postfix.smtp(REVIEW_SENDER, [MARKED_BUYER], review(MARKED_BUYER, subject, installed.secret))
    assert result.queued, result
    [relayed] = installed.postfix.sink.wait_for(1, predicate=lambda m: subject_of(m.message) == subject)
    assert relayed.rcpts == ["60606@amazon.fr"]  # marker removed
    assert installed.secret.encode() not in relayed.data  # the tag deleted before the mail left
    installed.wait_journal(f"review request for order {order}")
    # Written by the service under ProtectSystem=strict (the bug this unit had: a read-only store).
    store = installed.state / "amzguard.sqlite"
    assert store.exists() and store.stat().st_size > 0
    assert "Read-only file system" not in installed.journal()
    # ... and read back: the same order again is refused as a duplicate.
    again = installed.postfix.smtp(REVIEW_SENDER, [MARKED_BUYER], review(MARKED_BUYER, f"again {order}", installed.secret))
    assert again.data_reply is not None and again.data_reply[0] == 550
    assert DEFAULT_REASON_TEXTS[Reason.DUPLICATE_REVIEW] in " ".join(again.data_reply[1].split())


def test_opted_out_buyer_refused_after_optout_add_as_the_service_user(installed: Installed) -> None:
    added = installed.as_amzguard("optout", "add", "-c", CONFIG, OPTED_OUT)
    assert added.returncode == 0 and added.stdout.startswith("added 1"), added.stdout + added.stderr
    subject = f"{unique_token('deb-optout')} order 302-6000002-7000002"
    result = installed.postfix.smtp(REVIEW_SENDER, [OPTED_OUT], review(OPTED_OUT, subject, installed.secret))
    assert result.data_reply is not None
    code, text = result.data_reply
    assert code == 550 and DEFAULT_REASON_TEXTS[Reason.OPTED_OUT] in " ".join(text.split())
    installed.wait_journal(f"rcpt=<{OPTED_OUT}> path=smtp stage=eom channel=review decision=refuse reason=opted-out")


# -- and away again ----------------------------------------------------------------------------------


def test_purge_removes_what_the_package_made(installed: Installed) -> None:
    """Last in this module (pytest keeps file order): the service goes, and with it config, secret and store."""
    done = installed.copy.run(["dpkg", "--purge", "amzguard"], check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed.copy.run(["systemctl", "is-active", "amzguard"], check=False).stdout.strip() == "inactive"
    for gone in ("/usr/bin/amzguard", "/etc/amzguard", "/lib/systemd/system/amzguard.service"):
        assert not installed.copy.path(gone).exists(), gone
    assert list(installed.state.iterdir()) == []  # the store, in the bound (so kept) directory, emptied
