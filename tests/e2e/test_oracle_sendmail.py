"""The oracle test on Sendmail: the real Sendmail decides where each spelling goes, amzguard must agree.

Two private Sendmails (tests/e2e/sendmail_harness.py, the shipped etc/sendmail/amzguard.mc): the oracle with
amzguard in monitor mode (it decides and logs but changes nothing), the subject with amzguard enforcing and
``refusal.mixed_recipients: reject`` as the snippet recommends. Every submission reaches Sendmail's milter
over SMTP, so the SMTP path is the only one. Its own hosts are ``mx.shop.test``, ``localhost`` and
``[127.0.0.1]``; ``shop.test`` is remote there. Rules and sizes as in test_oracle.py.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import REVIEW_SENDER_CHANNELS
from tests.e2e.harness import Sink, unique_token
from tests.e2e.oracle import (
    OPTED_OUT,
    POOL,
    Report,
    SendmailTarget,
    fixed_plans,
    opted_out_ids,
    planned,
    register_opt_outs,
    run_label,
    run_path,
)
from tests.e2e.sendmail_harness import SendmailInstance, sendmail_root
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


@contextlib.contextmanager
def sendmail_with_amzguard(name: str, **sections: object) -> Iterator[tuple[SendmailInstance, MilterProcess, Sink]]:
    sink = Sink(Path("/tmp") / unique_token(f"amzguard-{name}-sink")).start()
    sendmail: SendmailInstance | None = None
    milter: MilterProcess | None = None
    try:
        sendmail = SendmailInstance(sink.port)
        socket = f"unix:{sendmail.milter_socket}"
        config = write_config(sendmail.workdir / "amzguard.yml", socket, channels=REVIEW_SENDER_CHANNELS, **sections)
        milter = MilterProcess(config, socket, sendmail.workdir / "amzguard.log").start()
        sendmail.start()
        yield sendmail, milter, sink
    finally:
        if milter is not None:
            milter.stop()
        if sendmail is not None:
            sendmail.stop()
        sink.stop()
        shutil.rmtree(sink.directory, ignore_errors=True)
        Path(f"{sink.directory}.log").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    sendmail_root()  # unpacks the Sendmail packages once; raises (no skip) where that cannot be done
    with contextlib.ExitStack() as stack:
        o_sendmail, o_milter, o_sink = stack.enter_context(sendmail_with_amzguard("oracle-monitor", mode="monitor"))
        s_sendmail, s_milter, s_sink = stack.enter_context(
            sendmail_with_amzguard("oracle-enforce", refusal={"mixed_recipients": "reject"}))
        register_opt_outs(s_sendmail.workdir / "amzguard.yml")
        yield Pair(SendmailTarget("sendmail+amzguard (monitor)", o_sendmail, o_sink),
                   SendmailTarget("sendmail+amzguard", s_sendmail, s_sink), (o_milter, s_milter))  # fmt: skip


def test_sendmail_routes_no_ungranted_mail_to_a_buyer(pair: Pair) -> None:
    report = Report(run_label("sendmail smtp"))
    run_path(pair.oracle, pair.subject, "smtp", planned(CONTEXT, ISSUE_16), report, opted_out_ids())
    report.publish()
    for milter in pair.milters:
        assert milter.alive(), milter.log_text()[-3000:]
    assert not report.failed, report.details()
