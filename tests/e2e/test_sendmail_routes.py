"""What a real Sendmail tells a milter about each recipient spelling, and which spelling its delete matches.

A recording milter (tests/support/probe_milter.py) stands where amzguard would, wired with the shipped
etc/sendmail/amzguard.mc. The expected values are tests/fixtures/sendmail_recipients.tsv (the table in
docs/sendmail.md); the unit tests read the same table, so amzguard's reading of Sendmail's macros is
checked against what this very Sendmail sends. All addresses are made up.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from amzguard.sendmail_route import Mta, sendmail_delete_argument, mta_of
from tests.e2e.harness import SinkMessage, SmtpResult, make_message, unique_token
from tests.e2e.sendmail_harness import SendmailInstance, SendmailStack, sendmail_stack, smtp_exact
from tests.support.milter_process import MilterProcess
from tests.unit.test_sendmail_route import ROWS, Row

SENDER = "shop@shop.test"
PARTNER = "partner@example.org"
ACCEPTED = [row for row in ROWS if row.kind != "sendmail"]
BUYERS = [row for row in ACCEPTED if row.kind in ("buyer", "unresolved")]


def envelope_rcpts(message: SinkMessage) -> list[str]:
    """The recipients the sink got, with quoted local parts that hold spaces intact."""
    found = []
    for args in message.rcpt_args:
        match = re.match(r"<(.*?)>(?=\s+[A-Za-z-]+=|\s*$)", args)
        found.append(match.group(1) if match else args.split()[0])
    return found


class ProbeProcess(MilterProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.support.probe_milter", self.socket, str(self.config)]


@dataclass
class ProbeStack:
    stack: SendmailStack

    @property
    def record(self) -> Path:
        return self.stack.milter.config

    def records(self, step: str) -> list[dict]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [entry for entry in map(json.loads, lines) if entry["step"] == step]

    def send(self, rcpts: list[str], deletes: list[str] = ()) -> tuple[str, SmtpResult]:
        subject = unique_token("probe")
        message = make_message(SENDER, [PARTNER], subject, extra_headers=[("X-Probe-Delete", d) for d in deletes])
        return subject, smtp_exact(self.stack.sendmail.port, SENDER, rcpts, message)

    def relayed(self, subject: str) -> list[str]:
        [message] = self.stack.wait_relayed(subject)
        return envelope_rcpts(message)


def probe_for(sendmail: SendmailInstance) -> ProbeProcess:
    """The recording milter; its record file stands where a milter's config would."""
    socket = f"unix:{sendmail.milter_socket}"
    return ProbeProcess(sendmail.workdir / "record.jsonl", socket, sendmail.workdir / "probe.log")


@pytest.fixture(scope="module")
def probe() -> Iterator[ProbeStack]:
    with sendmail_stack(probe_for) as stack:
        yield ProbeStack(stack)


def test_connect_macros_tell_sendmail(probe: ProbeStack) -> None:
    probe.send([f"<{PARTNER}>"])
    connect = probe.records("connect")[0]["macros"]
    # v only because the snippet asks for it; j and {daemon_name} are names an admin picks on either MTA
    assert mta_of(connect["v"]) is Mta.SENDMAIL and connect["v"].startswith("8.")
    assert connect["j"] == "mx.shop.test" and connect["{daemon_name}"] == "MTA"


def test_rcpt_macros_are_the_recorded_triple(probe: ProbeStack) -> None:
    """Every spelling of the table, alone with a partner: Sendmail's reply, the macros the milter got
    and the recipient the relay got are those recorded."""
    sent: list[tuple[Row, str, object]] = []
    for row in ROWS:
        subject, result = probe.send([f"<{row.rcpt}>", f"<{PARTNER}>"])
        sent.append((row, subject, result))
    seen = {entry["arg"]: entry["macros"] for entry in probe.records("rcpt")}
    for row, subject, result in sent:
        assert result.rcpt_replies[f"<{row.rcpt}>"][0] == row.reply, (row, result)
        assert result.queued, result
        if row.kind == "sendmail":
            assert f"<{row.rcpt}>" not in seen  # refused by Sendmail before the milter hears of it
            assert probe.relayed(subject) == [PARTNER]
            continue
        macros = seen[f"<{row.rcpt}>"]
        assert (macros["{rcpt_mailer}"], macros["{rcpt_host}"], macros["{rcpt_addr}"]) == (
            row.mailer, row.host, row.addr), row  # fmt: skip
        relayed = [rcpt for rcpt in probe.relayed(subject) if rcpt != PARTNER]
        assert relayed == ([row.relayed] if row.relayed else []), row


def test_delete_matches_the_envrcpt_text(probe: ProbeStack) -> None:
    """smfi_delrcpt with the envrcpt text removes the recipient, for every buyer spelling Sendmail accepts
    and for an RCPT written without angle brackets (the milter then gets it without them too)."""
    sent = []
    for row in BUYERS:
        subject, result = probe.send([f"<{row.rcpt}>", f"<{PARTNER}>"], deletes=[sendmail_delete_argument(f"<{row.rcpt}>")])
        sent.append((row.rcpt, subject, result))
    bare = "q7x2k9m4p1z8w3v5@marketplace.amazon.de"
    subject, result = probe.send([bare, f"<{PARTNER}>"], deletes=[sendmail_delete_argument(bare)])
    sent.append((bare, subject, result))
    for rcpt, subject, result in sent:
        assert result.queued, (rcpt, result)
        assert probe.relayed(subject) == [PARTNER], rcpt
    assert bare in {entry["arg"] for entry in probe.records("rcpt")}


def test_delete_naming_another_spelling_of_the_same_mailbox_matches_too(probe: ProbeStack) -> None:
    """Sendmail compares mailer, user and host after parsing the argument: any spelling that resolves to
    the same triple removes the recipient (so a delete cannot miss by spelling, only by resolving elsewhere)."""
    subject, result = probe.send(['<"q7x@marketplace.amazon.de">', f"<{PARTNER}>"],
                                 deletes=["<q7x%marketplace.amazon.de@mx.shop.test>"])  # fmt: skip
    assert result.queued
    assert probe.relayed(subject) == [PARTNER]
    # ... and a delete that resolves to another mailbox removes nothing
    subject, result = probe.send(["<Q7X@marketplace.amazon.de>", f"<{PARTNER}>"],
                                 deletes=["<q7x@marketplace.amazon.de>"])  # fmt: skip
    assert result.queued
    assert sorted(probe.relayed(subject)) == ["Q7X@marketplace.amazon.de", PARTNER]  # user compared case-sensitively
