"""The package on Debian's own Postfix, set up as docs/install.md and docs/operating.md tell a new admin, in a
booted copy of this machine: Debian's master.cf (smtpd and cleanup chrooted in /var/spool/postfix), the
documented main.cf lines, the shipped amzguard-master.cf, `systemctl restart postfix` by the container's real
systemd. Then mail through it: a buyer refused at RCPT, an allowed mail in a local mailbox, a tagged review
request from /usr/sbin/sendmail relayed unmarked and recorded, a made-up Amazon opt-out notice learned through
the pipe (the installed /usr/bin/amzguard as user amzguard), and a non-notice to the learn address accepted,
not bounced.

The docs' lines are parsed out of the documents (as test_hand_install.py does), so docs and test cannot drift.
Each step's wall time is measured and printed as a table (``pytest -s``), the numbers in docs/install.md.
The only lines that are the test's own, not the docs': ``relayhost`` to an smtp-sink in the container (the
internet of a private network) and a local user ``owner`` for the allowed mail. All addresses are made up.
"""

from __future__ import annotations

import re
import shlex
import shutil
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deb.booted import BootedCopy
from tests.deb.installed import CONFIG, SECRET
from tests.deb.test_package import DEB, build_package
from tests.e2e.harness import _wait_until, make_message, make_workdir, unique_token

pytestmark = pytest.mark.deb

REPO = Path(__file__).resolve().parents[2]
INSTALL_DOC = REPO / "docs" / "install.md"
OPERATING_DOC = REPO / "docs" / "operating.md"
MASTER_CF_EXAMPLE = "/usr/share/doc/amzguard/examples/amzguard-master.cf"
LEARN_ADDRESS = "optout@learn.shop.example"  # the docs' example address
NOTICE = REPO / "tests" / "fixtures" / "notices" / "en_order_only.eml"  # made up; names order 302-1000001-2000001
NOTICE_ORDER = "302-1000001-2000001"
BUYER = "e5e5e5e5e5e5e5e5@marketplace.amazon.co.uk"
REVIEW_SENDER = "support@shop.example"
SINK = "/var/tmp/sink"


def debconf_steps() -> str:
    marker = "<!-- tests/deb/test_system_postfix.py runs the next block"
    match = re.search(re.escape(marker) + r".*?-->\n```sh\n(.*?)```", INSTALL_DOC.read_text(), re.S)
    assert match, f"no shell block after {marker!r} in {INSTALL_DOC}"
    return match.group(1)


def postconf_steps() -> str:
    """Step 3 of "Configure and wire Postfix": the ```sh block with `postconf -e 'smtpd_milters = ...`."""
    blocks = re.findall(r"```sh\n(.*?)```", INSTALL_DOC.read_text(), re.S)
    found = [block for block in blocks if "postconf -e 'smtpd_milters" in block]
    assert len(found) == 1, found
    return "\n".join(line.strip() for line in found[0].splitlines())


def learn_address_settings() -> list[str]:
    """The main.cf settings of docs/operating.md's "The learn address" section, as `name = value` strings
    (continuation lines joined, comments dropped), in the order given."""
    section = OPERATING_DOC.read_text().split("## The learn address", 1)[1].split("\n## ", 1)[0]
    settings: list[str] = []
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        first = next(line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#"))
        if not re.match(r"^[a-z_]+\s*=", first):
            continue  # the master.cf block: installed from the examples file
        for raw in textwrap.dedent(block).splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if raw[:1].isspace() and settings:
                settings[-1] += " " + line
            else:
                settings.append(line)
    assert [s.split("=")[0].strip() for s in settings] == ["relay_domains", "relay_recipient_maps", "transport_maps"]
    return [re.sub(r"\s*=\s*", "=", s, count=1) for s in settings]


@dataclass
class Timings:
    rows: list[tuple[str, float]] = field(default_factory=list)

    def step(self, name: str, action: Callable[[], object]) -> None:
        started = time.monotonic()
        action()
        self.rows.append((name, time.monotonic() - started))

    def table(self) -> str:
        lines = ["| step | wall time |", "|---|---|"]
        lines += [f"| {name} | {seconds:.1f} s |" for name, seconds in self.rows]
        return "\n".join(lines)


@dataclass
class SystemPostfix:
    copy: BootedCopy
    secret: str

    def journal(self, *args: str) -> str:
        return self.copy.run(["journalctl", "--no-pager", "--output=short", *args]).stdout

    def wait_journal(self, pattern: str, timeout: float = 30) -> None:
        if not _wait_until(lambda: re.search(pattern, self.journal()) is not None, timeout):
            raise AssertionError(f"{pattern!r} not in the container's journal:\n{self.journal()[-6000:]}")

    def swaks(self, sender: str, rcpt: str, data: bytes) -> str:
        done = self.copy.run(["swaks", "--server", "127.0.0.1", "--port", "25", "--from", sender, "--to", rcpt,
                              "--data", "-"], input=data.decode(), check=False)  # fmt: skip
        return done.stdout + done.stderr

    def sendmail(self, sender: str, rcpt: str, data: bytes) -> None:
        self.copy.run(["/usr/sbin/sendmail", "-f", sender, "--", rcpt], input=data.decode())

    def sink_files(self) -> list[str]:
        """What smtp-sink dumped (X-Mail-From/X-Rcpt-To lines, then the message), one string per mail."""
        names = self.copy.run(["find", SINK, "-type", "f"]).stdout.split()
        return [self.copy.path(name).read_text(errors="replace") for name in names]

    def wait_sink(self, needle: str, timeout: float = 30) -> str:
        if not _wait_until(lambda: any(needle in f for f in self.sink_files()), timeout):
            raise AssertionError(f"{needle!r} not in the sink:\n{self.sink_files()}\n{self.journal()[-4000:]}")
        return next(f for f in self.sink_files() if needle in f)

    def queue_empty(self) -> bool:
        return self.copy.run(["postqueue", "-p"]).stdout.strip() == "Mail queue is empty"

    def as_amzguard(self, *args: str) -> str:
        return self.copy.run(["runuser", "-u", "amzguard", "--", "/usr/bin/amzguard", *args]).stdout


def review(to: str, subject: str, secret: str) -> bytes:
    return make_message(REVIEW_SENDER, to, subject, extra_headers=[("X-Amzguard-Channel", f"review {secret}")])


def install_as_documented(copy: BootedCopy, deb: Path, timings: Timings) -> None:
    """On a started ``copy`` (``deb``'s directory bound as /mnt/debs): the package, then Postfix and amzguard
    as the docs say, each step timed; then the test's own lines (sink, local user) and the restarts."""
    sh = lambda script: copy.run(["sh", "-e", "-x", "-c", script], timeout=300)  # noqa: E731
    copy.run(["rm", "-f", "/usr/sbin/policy-rc.d"])  # the image's, not a server's (see installed.py)
    timings.step(f"dpkg -i {deb.name} (user, dirs, secret, service started)",
                 lambda: copy.run(["dpkg", "-i", f"/mnt/debs/{deb.name}"], timeout=120))  # fmt: skip
    assert not copy.path("/etc/postfix/main.cf").exists(), "the image's Postfix is configured: the docs' first step is not tested"
    timings.step("Postfix as Internet Site (debconf, dpkg-reconfigure, newaliases)", lambda: sh(debconf_steps()))
    assert copy.run(["postconf", "-h", "myorigin"]).stdout.strip() == "/etc/mailname"

    def edit_config() -> None:  # steps 1 and 2, and operating.md's "Log where you look"
        config = yaml.safe_load(copy.path(CONFIG).read_text())
        config["channels"]["review"]["enabled"] = True
        for channel in ("review", "reply", "critical"):
            config["channels"][channel]["allowed_senders"] = [REVIEW_SENDER]
        config["logging"]["target"] = "syslog"
        copy.run(["tee", CONFIG], input=yaml.safe_dump(config))  # tee keeps the file's owner and mode
        copy.run(["runuser", "-u", "amzguard", "--", "amzguard", "check-config", "-c", CONFIG])

    timings.step("edit amzguard.yml (review on, allowed_senders, syslog), check-config", edit_config)
    timings.step("postconf -e: the milter lines (install.md step 3)", lambda: sh(postconf_steps()))
    timings.step("learn address: main.cf lines, append amzguard-master.cf", lambda: sh(
        shlex.join(["postconf", "-e", *learn_address_settings()])
        + f" && cat {MASTER_CF_EXAMPLE} >> /etc/postfix/master.cf"))  # fmt: skip
    # The test's own: the internet is an smtp-sink here, and a local user gets the allowed mail.
    sh(f"postconf -e 'relayhost = [127.0.0.1]:2525' && useradd --create-home owner"
       f" && mkdir -m 0755 {SINK} && chown postfix {SINK}"
       f" && systemd-run --unit=test-sink /usr/sbin/smtp-sink -u postfix -d {SINK}/%M. 127.0.0.1:2525 10")  # fmt: skip
    timings.step("systemctl restart amzguard (logging.target changed); systemctl restart postfix",
                 lambda: sh("systemctl restart amzguard && systemctl restart postfix"))  # fmt: skip
    assert _wait_until(lambda: copy.run(["sh", "-c", "ss -Hltn 'sport = :25' | grep -q LISTEN"], check=False)
                       .returncode == 0, 30), copy.run(["systemctl", "status", "postfix@-"], check=False).stdout  # fmt: skip


@pytest.fixture(scope="module")
def system() -> Iterator[SystemPostfix]:
    deb = DEB if DEB.exists() else build_package()
    workdir = make_workdir("amzguard-system-")
    copy = BootedCopy(workdir, binds={"/mnt/debs": deb.parent})
    timings = Timings()
    try:
        timings.step("boot the container (not an admin step)", copy.start)
        install_as_documented(copy, deb, timings)
        print("\n" + timings.table())
        yield SystemPostfix(copy=copy, secret=copy.path(SECRET).read_text().strip())
    finally:
        copy.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_debians_master_cf_keeps_smtpd_chrooted(system: SystemPostfix) -> None:
    master = system.copy.run(["postconf", "-M", "smtp/inet", "cleanup/unix"]).stdout.split("\n")
    assert master[0].split()[4] == "y" and master[1].split()[4] == "y", master  # chroot column
    assert system.copy.run(["postconf", "-h", "smtpd_milters"]).stdout.strip() == "unix:amzguard/amzguard.sock"
    assert system.copy.run(["test", "-S", "/var/spool/postfix/amzguard/amzguard.sock"], check=False).returncode == 0


def test_buyer_refused_at_rcpt(system: SystemPostfix) -> None:
    rcpt = "d4d4d4d4d4d4d4d4@marketplace.amazon.de"
    out = system.swaks("shop@shop.example", rcpt, make_message("shop@shop.example", rcpt, unique_token("sys-buyer")))
    assert re.search(r"<\*\* 550 5\.7\.1 <" + re.escape(rcpt) + ">", out), out
    system.wait_journal(r"postfix/smtpd\[\d+\]: NOQUEUE: milter-reject: RCPT from localhost\[127\.0\.0\.1\]: 550 5\.7\.1")
    system.wait_journal(r"amzguard\[\d+\]: .*path=smtp stage=rcpt channel=none decision=refuse reason=buyer-mail")


def test_allowed_mail_in_the_local_mailbox(system: SystemPostfix) -> None:
    subject = unique_token("sys-allowed")
    out = system.swaks("shop@shop.example", "owner@shop.example", make_message("shop@shop.example", "owner@shop.example", subject))
    assert "<-  250 2.0.0 Ok: queued" in out, out
    assert _wait_until(lambda: subject in system.copy.run(["cat", "/var/mail/owner"], check=False).stdout, 30), (
        system.journal()[-4000:])
    system.wait_journal(r"postfix/local\[\d+\]: .*to=<owner@shop\.example>.*status=sent")


def test_review_by_sendmail_relayed_unmarked_then_learned_opt_out_refuses_the_next(system: SystemPostfix) -> None:
    subject = f"{unique_token('sys-review')} order {NOTICE_ORDER}"
    system.sendmail(REVIEW_SENDER, BUYER, review(BUYER, subject, system.secret))
    relayed = system.wait_sink(subject)
    assert f"X-Rcpt-To: {BUYER}" in relayed or BUYER in relayed, relayed
    assert system.secret not in relayed and "X-Amzguard-Channel" not in relayed  # the tag deleted before it left
    system.wait_journal(rf"amzguard\[\d+\]: .*review request for order {NOTICE_ORDER}")
    assert _wait_until(system.queue_empty, 30)
    # The notice, over SMTP from "Amazon", to the learn address: the pipe runs the installed command.
    notice = NOTICE.read_bytes().replace(b"To: reviews@shop.test", f"To: {LEARN_ADDRESS}".encode())
    out = system.swaks("seller-notification@amazon.example", LEARN_ADDRESS, notice)
    assert "<-  250 2.0.0 Ok: queued" in out, out
    system.wait_journal(r"postfix/pipe\[\d+\]: .*to=<optout@learn\.shop\.example>.*relay=amzguard-optout.*status=sent")
    system.wait_journal(rf"amzguard\[\d+\]: opt-out learned: \S+ \(order {NOTICE_ORDER}")
    assert BUYER in system.as_amzguard("optout", "list", "-c", CONFIG).split()
    # The next review request to that buyer, another order: refused at end of data.
    again = f"{unique_token('sys-again')} order 302-1000009-2000009"
    out = system.swaks(REVIEW_SENDER, BUYER, review(BUYER, again, system.secret))
    assert re.search(r"<\*\* 550 5\.7\.1 .*opted out", out, re.S), out
    system.wait_journal(rf"amzguard\[\d+\]: .*rcpt=<e\*\*\*@marketplace\.amazon\.co\.uk> path=smtp stage=eom channel=review decision=refuse reason=opted-out")
    assert _wait_until(system.queue_empty, 30)


def test_non_notice_to_the_learn_address_is_accepted_not_bounced(system: SystemPostfix) -> None:
    sender = "someone@amazon.example"
    subject = unique_token("sys-not-notice")
    out = system.swaks(sender, LEARN_ADDRESS, make_message(sender, LEARN_ADDRESS, subject))
    assert "<-  250 2.0.0 Ok: queued" in out, out
    system.wait_journal(r"amzguard\[\d+\]: warning: not an opt-out notice")
    system.wait_journal(r"postfix/pipe\[\d+\]: .*to=<optout@learn\.shop\.example>.*status=sent")
    assert _wait_until(system.queue_empty, 30), system.copy.run(["postqueue", "-p"]).stdout
    assert not re.search(r"status=bounced", system.journal()), system.journal()[-4000:]
    assert not [f for f in system.sink_files() if f"X-Rcpt-To: {sender}" in f or "Undelivered Mail" in f]
