"""The oracle test on Sendmail: the real Sendmail decides where each spelling goes, amzguard must agree.

Two private Sendmails (tests/e2e/sendmail_harness.py, the shipped etc/sendmail/amzguard.mc): the oracle with
amzguard in monitor mode (it decides and logs but changes nothing), the subject with amzguard enforcing and
``refusal.mixed_recipients: reject`` as the snippet recommends. Every submission reaches Sendmail's milter
over SMTP, so the SMTP path is the only one. Its own hosts are ``mx.shop.test``, ``localhost`` and
``[127.0.0.1]``; ``shop.test`` is remote there. Rules and sizes as in test_oracle.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import REVIEW_SENDER_CHANNELS
from tests.e2e.oracle import (
    OPTED_OUT,
    POOL,
    assert_no_leak,
    fixed_plans,
    planned,
    register_opt_outs,
    SendmailTarget,
)
from tests.e2e.sendmail_harness import SendmailInstance, sendmail_stack
from tests.support.milter_process import MilterProcess, write_config
from tests.support.spellings import Context, Mailbox

CONTEXT = Context(local_hosts=("mx.shop.test", "localhost", "[127.0.0.1]"), remote_hosts=("shop.test", "relay.example"))

_X = Mailbox("x", "marketplace.amazon.de", buyer=True, marked=False)
_Q7X = Mailbox("q7x2k9m4p1z8w3v5", "marketplace.amazon.de", buyer=True, marked=False)
ISSUE_16 = fixed_plans([
    ('"q7x2k9m4p1z8w3v5@marketplace.amazon.de"', _Q7X, "shop", "issue16-quote-whole"),
    ("x%marketplace.amazon.de%[127.0.0.1]@[127.0.0.1]", _X, "untagged", "issue16-percent-twice"),
    ('"x@marketplace.amazon.de"@[127.0.0.1]', _X, "shop", "issue16-quoted-at"),
    ('"blacklisted-77001@amazon.de"', OPTED_OUT[1], "opted-out", "issue16-quoted-marked-opted-out"),
    # a granted request to a marked buyer whose local part is quoted: exactly one copy, unmarked (found by
    # the seeded long run: the marked copy survived the delete)
    ('"blacklisted-20"@amazon.fr', POOL[1], "review", "granted-quoted-marked"),
])


@dataclass
class Pair:
    oracle: SendmailTarget
    subject: SendmailTarget
    milters: tuple[MilterProcess, MilterProcess]


def amzguard(**sections: object) -> Callable[[SendmailInstance], MilterProcess]:
    """The milter for one Sendmail: its config and socket in that Sendmail's work directory."""

    def make(sendmail: SendmailInstance) -> MilterProcess:
        socket = f"unix:{sendmail.milter_socket}"
        config = write_config(sendmail.workdir / "amzguard.yml", socket, channels=REVIEW_SENDER_CHANNELS, **sections)
        return MilterProcess(config, socket, sendmail.workdir / "amzguard.log")

    return make


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with contextlib.ExitStack() as started:
        oracle = started.enter_context(sendmail_stack(amzguard(mode="monitor")))
        subject = started.enter_context(sendmail_stack(amzguard(refusal={"mixed_recipients": "reject"})))
        register_opt_outs(subject.sendmail.workdir / "amzguard.yml")
        yield Pair(SendmailTarget("sendmail+amzguard (monitor)", oracle.sendmail, oracle.sink),
                   SendmailTarget("sendmail+amzguard", subject.sendmail, subject.sink),
                   (oracle.milter, subject.milter))  # fmt: skip


def test_sendmail_routes_no_ungranted_mail_to_a_buyer(pair: Pair) -> None:
    assert_no_leak("sendmail smtp", pair.oracle, pair.subject, "smtp", planned(CONTEXT, ISSUE_16), pair.milters)
