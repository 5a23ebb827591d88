"""The checks of an installed amzguard that the package test and the hand-install test share (each module
imports them, so they run against that module's ``installed`` fixture): the unit's sandbox as the running
service sees it, and the enforcement cases through a real Postfix. All addresses are made up."""

from __future__ import annotations

from amzguard.config import DEFAULT_REASON_TEXTS
from amzguard.policy import Reason
from tests.deb.installed import CONFIG, Installed
from tests.e2e.conftest import REVIEW_SENDER, SHOP_SENDER
from tests.e2e.harness import make_message, unique_token

RELAY_BUYER = "d4d4d4d4d4d4d4d4@marketplace.amazon.de"
MARKED_BUYER = "blacklisted-60606@amazon.fr"
OPTED_OUT = "e5e5e5e5e5e5e5e5@marketplace.amazon.co.uk"
OWNER = "owner@shop.test"
BUYER_TEXT = "Amazon forbids e-mail about orders or shipping to buyers"  # refusal.reply_text, as shipped

__all__ = [  # what `from tests.deb.cases import *` brings into a test module
    "test_the_service_runs_in_the_units_sandbox",
    "test_buyer_refused_on_smtp",
    "test_buyer_refused_on_sendmail",
    "test_allowed_mail_delivered",
    "test_tagged_review_request_delivered_and_recorded_in_the_store",
    "test_opted_out_buyer_refused_after_optout_add_as_the_service_user",
]


def subject_of(message) -> str:
    return str(message.get("Subject", ""))


def review(to: str, subject: str, secret: str) -> bytes:
    return make_message(REVIEW_SENDER, to, subject, extra_headers=[("X-Amzguard-Channel", f"review {secret}")])



def test_the_service_runs_in_the_units_sandbox(installed: Installed) -> None:
    """What the running process sees, read from its own mount table: / read-only, the store and socket
    directories writable, /tmp private, /home and /root hidden."""
    copy = installed.copy
    main_pid = installed.main_pid()
    mounts: dict[str, str] = {}  # mount point -> per-mount options (the last mount there wins, as for the kernel)
    sources: dict[str, str] = {}  # mount point -> the directory of its file system that is mounted there
    for line in copy.run(["cat", f"/proc/{main_pid}/mountinfo"]).stdout.splitlines():
        fields = line.split()
        sources[fields[4]], mounts[fields[4]] = fields[3], fields[5]
    assert mounts["/"].startswith("ro"), mounts  # ProtectSystem=strict
    assert mounts["/var/lib/amzguard"].startswith("rw"), mounts  # StateDirectory
    assert mounts["/var/spool/postfix/amzguard"].startswith("rw"), mounts  # ReadWritePaths
    assert mounts["/run/amzguard"].startswith("rw"), mounts  # RuntimeDirectory
    # PrivateTmp: systemd's per-service directory, not the container's /tmp.
    assert mounts["/tmp"].startswith("rw") and "-amzguard.service-" in sources["/tmp"], sources
    assert mounts["/home"].startswith("ro") and mounts["/root"].startswith("ro"), mounts  # ProtectHome


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
